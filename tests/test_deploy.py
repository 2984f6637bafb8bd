"""Export to TF Serving, LiteRT and ONNX, each run in its own runtime and checked for parity."""

import errno
import json
import os
import sys

import numpy as np
import pytest
from conftest import fail_writes, write_folder
from conftest import main_cli as cli

import keras_ft
from keras_ft import deploy
from keras_ft.errors import KerasFTError

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
    # The file runs on its own: a red test image comes out as probabilities over 3 classes.
    from keras_ft.data import read_images

    pixels = read_images([str(sorted((test / "red").iterdir())[0])], (32, 32))
    interpreter = Interpreter(model_path=str(result.path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert output.dtype == np.uint8 and output.shape == (1, 3)


def test_split_head_computes_the_same_probabilities(run):
    """The quantization-friendly head is the same function, with the large rows apart."""
    model = keras_ft.load(run[0]).model
    variance = model.get_layer("feature_norm").moving_variance
    variance.assign(np.concatenate([np.zeros(5), np.ones(507)]).astype(np.float32))
    split, description = deploy.split_head(model)
    large = split.get_layer("large").kernel.shape[0]
    assert large == 5 and "5 of 512 rows" in description
    pixels = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        split.predict_on_batch(pixels), model.predict_on_batch(pixels), atol=1e-5
    )


def test_onnx_export_runs_in_onnxruntime(run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    run_dir, _ = run
    code, out, _ = cli(capsys, "export", run_dir, tmp_path / "out", "--format", "onnx")
    assert code == 0, out
    assert "top-1 agreement 100.00%" in out
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["opset"] == deploy.ONNX_OPSET and record["targets_met"]
    assert record["input"]["shape"] == [None, 32, 32, 3]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    probabilities = session.run(None, {"images": np.full((2, 32, 32, 3), 200, np.float32)})[0]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_missed_target_exits_1_and_keeps_the_files(run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    monkeypatch.setattr(deploy, "MIN_AGREEMENT", 1.01)  # a target no export can meet
    run_dir, _ = run
    code, out, _ = cli(capsys, "export", run_dir, tmp_path / "out", "--format", "litert")
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
    code, _, err = cli(capsys, "export", run[0], tmp_path / "out", "--format", extra)
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
    exit_code, out, err = cli(capsys, "export", run[0], tmp_path / "out", "--format", format)
    assert exit_code == 2 and "Traceback" not in err and out == ""
    assert f"Cannot write OUTPUT '{tmp_path / 'out'}': {os.strerror(code)}." in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() or "partial" in p.name]


def test_saved_model_stays_the_default(run, tmp_path, capsys):
    code, out, _ = cli(capsys, "export", run[0], tmp_path / "serving")
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
