"""Grad-CAM: the feature map it uses, where its heat goes, the PNGs `keras-ft explain` writes."""

import keras
import numpy as np
import pytest
from conftest import tiny_backbone, write_folder
from PIL import Image

import keras_ft
from keras_ft.errors import KerasFTError
from keras_ft.explain import GradCAM, feature_layer


def test_feature_layer_is_the_last_map_before_pooling():
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert feature_layer(vgg).name == "block5_conv3"  # block5_pool only coarsens it
    assert feature_layer(tiny_backbone()).name == "relu_b"
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    ends_in_a_vector = keras.Model(inputs, keras.layers.Dense(8, name="dense")(pooled))
    assert feature_layer(ends_in_a_vector).name == "conv"


def test_a_backbone_without_a_feature_map_is_refused():
    inputs = keras.Input((32, 32, 3))
    flat = keras.Model(
        inputs, keras.layers.Dense(8)(keras.layers.Flatten()(inputs)), name="flat_mlp"
    )
    with pytest.raises(KerasFTError, match="backbone 'flat_mlp' has no layer with a 4-D"):
        feature_layer(flat)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    train = write_folder(tmp / "train", ("red", "green", "blue"), per_class=6, size=32)
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.0, seed=0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0)
    tuner.save(tmp / "run")
    return tmp / "run", train


def cli(capsys, *args):
    from keras_ft.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_explain_writes_one_png_per_image(tiny_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run_dir, train = tiny_run
    images = [train / "red" / "000.png", train / "blue" / "000.png", train / "green" / "001.png"]
    code, out, _ = cli(capsys, "explain", run_dir, *images, "--output", tmp_path / "cams")
    assert code == 0
    written = [tmp_path / "cams" / name for name in ("000.png", "000-2.png", "001.png")]
    assert out.split() == [part for path in written for part in ("wrote", str(path))]
    for path in written:
        with Image.open(path) as figure:
            assert figure.format == "PNG" and figure.width > 200
    # a second run would overwrite: refused, the figures kept
    before = written[0].read_bytes()
    code, _, err = cli(capsys, "explain", run_dir, images[0], "--output", tmp_path / "cams")
    assert code == 2 and "already exists" in err and written[0].read_bytes() == before


def test_explain_names_an_unreadable_image(tiny_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    code, _, err = cli(capsys, "explain", tiny_run[0], broken, "--output", tmp_path / "cams")
    assert code == 2 and f"Cannot read image '{broken}'" in err
    assert not (tmp_path / "cams").exists()


def test_heatmaps_are_normalised_and_at_image_size(tiny_run):
    model = keras_ft.load(tiny_run[0]).model
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    heatmaps, probabilities = GradCAM(model)(pixels)
    assert heatmaps.shape == (4, 32, 32) and probabilities.shape == (4, 3)
    assert heatmaps.min() >= 0.0 and np.allclose(heatmaps.max(axis=(1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, model.predict_on_batch(pixels), atol=1e-6)
