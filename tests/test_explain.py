"""Grad-CAM: the feature map it uses, where its heat goes, the PNGs `keras-ft explain` writes."""

import keras
import numpy as np
import pytest
from conftest import tiny_backbone, write_folder
from PIL import Image

import keras_ft
from keras_ft.config import ModelConfig
from keras_ft.errors import KerasFTError
from keras_ft.explain import GradCAM, feature_layer
from keras_ft.model import build_classifier


def test_feature_layer_is_the_last_map_before_pooling():
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert feature_layer(vgg).name == "block5_conv3"  # block5_pool only coarsens it
    assert feature_layer(tiny_backbone()).name == "relu_b"
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    ends_in_a_vector = keras.Model(inputs, keras.layers.Dense(8, name="dense")(pooled))
    assert feature_layer(ends_in_a_vector).name == "conv"


def square_image(left: bool, size: int = 32) -> np.ndarray:
    """A dark noisy image with a bright 8x8 square in its left or right half."""
    pixels = np.random.default_rng(int(left)).uniform(20, 40, (size, size, 3))
    x = 4 if left else size - 12
    pixels[10:18, x : x + 8] = 240.0
    return pixels.astype(np.float32)


def detector_classifier() -> keras.Model:
    """A classifier whose answer is known: class 0 counts bright pixels, class 1 dark ones.

    Its custom backbone is one 1x1 convolution with two ReLU channels, a
    brightness detector (mean - 150) and a darkness detector (100 - mean);
    the head scores class 0 by bright minus dark features, class 1 the other
    way round. So class 0's evidence is exactly the square, class 1's the background.
    """
    inputs = keras.Input((32, 32, 3))
    detect = keras.layers.Conv2D(2, 1, activation="relu", name="detect")
    backbone = keras.Model(inputs, detect(inputs), name="detector")
    detect.set_weights([np.array([[[[1, -1]] * 3]], np.float32) / 3, np.array([-150.0, 100.0])])
    config = ModelConfig(
        num_classes=2, backbone="detector", weights=None, image_size=(32, 32), dropout=0.0,
        normalize_features=False,
    )  # fmt: skip
    model = build_classifier(backbone, config, "none")
    model.get_layer("predictions").set_weights(
        [np.array([[1, -1], [-1, 1]], np.float32), np.zeros(2, np.float32)]
    )
    return model


@pytest.mark.parametrize("left", [True, False])
def test_grad_cam_heat_is_where_the_evidence_is(left):
    """Bright square, explained as 'bright': all the heat on the square; as 'dark': none."""
    explainer = GradCAM(detector_classifier())
    assert explainer.layer == "detect"
    image = square_image(left)[None]
    heatmaps, probabilities = explainer(image)
    assert probabilities.argmax() == 1  # more dark pixels than bright ones
    bright, _ = explainer(image, class_index=0)
    square = np.zeros((32, 32), bool)
    square[10:18, 4:12] = True
    square = square if left else square[:, ::-1]
    half = np.zeros((32, 32), bool)
    half[:, :16] = True
    half = half if left else half[:, ::-1]
    assert bright[0][square].min() > 0.99 and bright[0][~square].max() == 0.0
    assert bright[0][half].sum() / bright[0].sum() == 1.0
    # explained as its top-1 class (dark), the heat is on the background, never the square
    assert heatmaps[0][square].max() == 0.0 and heatmaps[0][~square].min() > 0.5


@pytest.mark.parametrize("name", ["vgg16", "mobilenetv3small"])
def test_grad_cam_on_registered_backbones(name):
    from keras_ft.backbones import get_backbone

    spec = get_backbone(name)
    backbone = spec.build((64, 64), None)
    config = ModelConfig(num_classes=2, backbone=name, weights=None, image_size=(64, 64))
    explainer = GradCAM(build_classifier(backbone, config, spec.preprocessing))
    assert explainer.layer == feature_layer(backbone).name
    heatmaps, probabilities = explainer(np.stack([square_image(True, 64), square_image(False, 64)]))
    assert heatmaps.shape == (2, 64, 64) and probabilities.shape == (2, 2)
    assert np.all((heatmaps >= 0) & (heatmaps <= 1))


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
