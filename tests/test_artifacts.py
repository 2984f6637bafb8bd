import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import copy_run, tiny_backbone
from PIL import Image

import keras_ft
from keras_ft.artifacts import FORMAT_VERSION
from keras_ft.errors import KerasFTError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import write_folder

    tmp = tmp_path_factory.mktemp("artifacts")
    classes = ("red", "green", "blue")
    train = write_folder(tmp / "train", classes, per_class=16, seed=1)
    test = write_folder(tmp / "test", classes, per_class=4, seed=2)
    data = keras_ft.ImageFolder(
        train, test_dir=test, image_size=32, batch_size=8, validation_split=0.25, seed=0
    )
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=2, finetune_epochs=1, verbose=0)
    run_dir = tmp / "run"
    tuner.save(run_dir)
    return tuner, run_dir, test


def test_run_directory_contents(trained):
    tuner, run_dir, _ = trained
    for name in (
        "model.keras",
        "class_names.json",
        "history.csv",
        "metrics.json",
        "run.json",
        "saved_model/saved_model.pb",
    ):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "class_names.json").read_text()) == ["blue", "green", "red"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["format_version"] == FORMAT_VERSION
    assert record["seed"] == 0 and record["class_names"] == ["blue", "green", "red"]
    assert record["training"]["head_epochs"] == 2 and record["model"]["backbone"] == "tiny"
    assert len(record["weights_sha256"]) == 64
    assert len(record["data_fingerprint"]["train"]) == 64
    assert record["environment"]["tensorflow"] == tf.__version__
    assert "single device" in record["reproducibility"]
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,phase,") and len(history) == 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(tuner.metrics["accuracy"])


def test_in_memory_keras_and_savedmodel_agree(trained):
    tuner, run_dir, test = trained
    images = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((32, 32)), np.float32)
            for p in sorted((test / "red").iterdir())
        ]
    )
    in_memory = np.asarray(tuner.model.predict_on_batch(images))  # as evaluation and load do
    reloaded = keras_ft.load(run_dir).predict_proba(images)
    served = tf.saved_model.load(str(run_dir / "saved_model"))
    serving = served.signatures["serving_default"](images=tf.constant(images))["probabilities"]
    from_uint8 = served.signatures["serving_uint8"](images=tf.constant(images.astype(np.uint8)))
    np.testing.assert_array_equal(in_memory, reloaded)
    np.testing.assert_allclose(in_memory, serving.numpy(), atol=1e-6)
    np.testing.assert_allclose(in_memory, from_uint8["probabilities"].numpy(), atol=1e-6)


def test_bytes_signature_decodes_inside_the_graph(trained):
    _, run_dir, test = trained
    paths = sorted((test / "green").iterdir())[:2]
    served = tf.saved_model.load(str(run_dir / "saved_model"))
    encoded = tf.constant([p.read_bytes() for p in paths])
    from_bytes = served.signatures["serving_bytes"](images=encoded)["probabilities"].numpy()
    from_files = keras_ft.load(run_dir).predict_proba([str(p) for p in paths])
    np.testing.assert_allclose(from_bytes, from_files, atol=1e-6)


def test_fresh_process_predicts_the_same(trained):
    tuner, run_dir, test = trained
    path = sorted((test / "blue").iterdir())[0]
    script = (
        "import json, sys, keras_ft; p = keras_ft.load(sys.argv[1]); "
        "print(json.dumps(p.predict_proba([sys.argv[2]]).tolist()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(run_dir), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    here = keras_ft.load(run_dir).predict_proba([str(path)])
    np.testing.assert_array_equal(np.array(json.loads(result.stdout.splitlines()[-1])), here)


def test_predict_gives_labels_and_top_k(trained):
    _, run_dir, test = trained
    predictor = keras_ft.load(run_dir)
    image = Image.open(sorted((test / "red").iterdir())[0])
    results = predictor.predict([image, np.asarray(image.convert("RGB"))], top_k=2)
    assert len(results) == 2 and results[0] == results[1]
    assert results[0]["label"] in predictor.class_names
    assert [t["label"] for t in results[0]["top_k"]][0] == results[0]["label"]
    assert results[0]["top_k"][0]["probability"] >= results[0]["top_k"][1]["probability"]


def test_wrong_shaped_array_is_refused(trained):
    _, run_dir, _ = trained
    with pytest.raises(
        KerasFTError, match=r"shape \(height, width, 3\), received shape \(32, 32\)"
    ):
        keras_ft.load(run_dir).predict(np.zeros((32, 32)))


def test_existing_run_directory_is_not_overwritten(trained, tmp_path):
    tuner, _, _ = trained
    target = tmp_path / "run"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(KerasFTError, match="already exists.*--overwrite"):
        tuner.save(target)
    assert (target / "notes.txt").read_text() == "mine"
    tuner.save(target, overwrite=True)
    assert (target / "model.keras").is_file() and not (target / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary left behind


def test_changed_weights_are_refused(trained, tmp_path):
    copy = copy_run(trained[1], tmp_path / "run")
    model = keras.saving.load_model(copy / "model.keras")
    model.get_layer("predictions").kernel.assign(model.get_layer("predictions").kernel * 2)
    model.save(copy / "model.keras")
    with pytest.raises(KerasFTError, match="model.keras' do not match the SHA-256"):
        keras_ft.load(copy)


def test_truncated_model_file_is_refused(trained, tmp_path):
    copy = copy_run(trained[1], tmp_path / "run")
    data = (copy / "model.keras").read_bytes()
    (copy / "model.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(KerasFTError, match="Cannot load '.*model.keras'"):
        keras_ft.load(copy)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(KerasFTError, match="is not a keras_ft run directory.*model.keras"):
        keras_ft.load(tmp_path)


def test_newer_format_version_is_refused(trained, tmp_path):
    copy = copy_run(
        trained[1],
        tmp_path / "run",
        lambda record: record.update(format_version=FORMAT_VERSION + 1),
    )
    with pytest.raises(KerasFTError, match="Upgrade keras-ft"):
        keras_ft.load(copy)


def test_other_library_version_warns_but_loads(trained, tmp_path):
    copy = copy_run(
        trained[1],
        tmp_path / "run",
        lambda record: record["environment"].update(tensorflow="2.0.0"),
    )
    with pytest.warns(UserWarning, match="written with tensorflow 2.0.0"):
        keras_ft.load(copy)


def test_export_writes_numbered_tf_serving_versions(trained, tmp_path):
    _, run_dir, _ = trained
    from keras_ft.artifacts import export_for_serving

    first = export_for_serving(run_dir, tmp_path / "serving")
    second = export_for_serving(run_dir, tmp_path / "serving")
    assert (first.name, second.name) == ("1", "2")
    assert (second / "saved_model.pb").is_file()
    assert "serving_bytes" in tf.saved_model.load(str(second)).signatures
    with pytest.raises(KerasFTError, match="already exists"):
        export_for_serving(run_dir, tmp_path / "serving", version=1)


KILLED_SAVE = """
import sys, time
import keras_ft, keras_ft.artifacts as artifacts
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from conftest import tiny_backbone
data = keras_ft.ImageFolder(sys.argv[1], image_size=32, batch_size=8, validation_split=0.0)
tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0)
real_export = artifacts.export_saved_model
def slow_export(model, path):
    real_export(model, path)
    print("EXPORTED", flush=True)
    time.sleep(120)
artifacts.export_saved_model = slow_export
tuner.save(sys.argv[2], overwrite=True)
"""


@pytest.mark.parametrize("previous", [False, True])
def test_kill_during_save_leaves_previous_state_or_nothing(previous, tmp_path):
    from conftest import ROOT, write_folder

    data = write_folder(tmp_path / "data", ("a", "b"), per_class=8)
    target = tmp_path / "run"
    if previous:
        target.mkdir()
        (target / "run.json").write_text('{"previous": true}')
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(data), str(target), str(ROOT / "tests")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "EXPORTED"  # mid-save: model written
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".run.partial-")]
        assert staging and (staging[0] / "model.keras").is_file()
    finally:
        process.kill()  # SIGKILL: no cleanup code runs
        process.wait(timeout=60)
    if previous:
        assert json.loads((target / "run.json").read_text()) == {"previous": True}
        assert sorted(p.name for p in target.iterdir()) == ["run.json"]
    else:
        assert not target.exists()


KILLED_REPLACE = """
import os, sys
import keras_ft, keras_ft.artifacts as artifacts
sys.path.insert(0, sys.argv[3])
from conftest import tiny_backbone
data = keras_ft.ImageFolder(sys.argv[1], image_size=32, batch_size=8, validation_split=0.0)
tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0)
replace, rename = artifacts._replace, os.replace
def killed(staging, target):  # SIGKILL at the worst moment: no cleanup runs
    if sys.argv[4] == "two-renames":  # a system without an atomic swap
        artifacts._exchange = lambda first, second: False
        calls = []
        def second_kills(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                os._exit(9)
            rename(src, dst)
        artifacts.os.replace = second_kills
    else:  # swapped, before the previous run is deleted
        artifacts.shutil.rmtree = lambda *args, **kwargs: os._exit(9)
    replace(staging, target)
artifacts._replace = killed
tuner.save(sys.argv[2], overwrite=True)
"""


@pytest.mark.parametrize("window", ["swap", "two-renames"])
def test_kill_while_replacing_a_run_then_save_again(window, trained, tmp_path):
    from conftest import ROOT, write_folder

    data = write_folder(tmp_path / "data", ("a", "b"), per_class=8)
    target = tmp_path / "run"
    target.mkdir()
    (target / "run.json").write_text('{"previous": true}')
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_REPLACE, str(data), str(target), str(ROOT / "tests"), window],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed.stderr.read()
    killed.wait(timeout=300)
    assert killed.returncode == 9
    left = {p.name.split("-")[0]: p for p in tmp_path.iterdir() if p.name.startswith(".run.")}
    if window == "swap":  # the new run is whole, the previous one waits to be deleted
        assert sorted(left) == [".run.partial"] and (target / "model.keras").is_file()
        previous = left[".run.partial"]
    else:  # the previous run was moved aside; loading says where it is
        assert sorted(left) == [".run.old", ".run.partial"] and not target.exists()
        previous = left[".run.old"]
        with pytest.raises(KerasFTError, match=rf"to '{previous}'. Rename that folder to 'run'"):
            keras_ft.load(target)
    assert previous.name.split("-")[1] == str(killed.pid)
    assert json.loads((previous / "run.json").read_text()) == {"previous": True}
    trained[0].save(target, overwrite=True)  # the next save clears what the killed one left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    assert keras_ft.load(target).class_names == trained[0].class_names
