import json
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import copy_run, reseal, tiny_backbone
from PIL import Image

import keras_ft
from keras_ft.runs.loading import FORMAT_VERSION
from keras_ft.runs.reproducibility import weights_sha256
from keras_ft.utils.errors import KerasFTError


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
    # What the backbone started from: the same seeded backbone, built afresh, hashes the same.
    assert record["backbone_weights_sha256"] == weights_sha256(tiny_backbone())
    assert record["backbone_weights_sha256"] != record["weights_sha256"]
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
    # overwrite=True replaces only a folder keras_ft wrote, never a user's files.
    with pytest.raises(KerasFTError, match="a folder keras_ft did not write.*notes.txt"):
        tuner.save(target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    (target / "notes.txt").unlink()
    target.rmdir()
    tuner.save(target)
    tuner.save(target, overwrite=True)  # a run keras_ft wrote is replaced
    assert (target / "model.keras").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary left behind


def test_changed_weights_are_refused(trained, tmp_path):
    copy = copy_run(trained[1], tmp_path / "run")
    model = keras.saving.load_model(copy / "model.keras")
    model.get_layer("predictions").kernel.assign(model.get_layer("predictions").kernel * 2)
    model.save(copy / "model.keras")
    with pytest.raises(KerasFTError, match="changed: model.keras"):
        keras_ft.load(copy)
    reseal(copy)  # the manifest rewritten too: the weights' own SHA-256 still differs
    with pytest.raises(KerasFTError, match="model.keras' do not match 'weights_sha256'"):
        keras_ft.load(copy)


def test_truncated_model_file_is_refused(trained, tmp_path):
    copy = copy_run(trained[1], tmp_path / "run")
    data = (copy / "model.keras").read_bytes()
    (copy / "model.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(KerasFTError, match="changed: model.keras"):
        keras_ft.load(copy)
    reseal(copy)
    with pytest.raises(KerasFTError, match="Cannot load '.*model.keras'.*damaged"):
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
    from keras_ft.runs.artifacts import export_for_serving

    first = export_for_serving(run_dir, tmp_path / "serving")
    second = export_for_serving(run_dir, tmp_path / "serving")
    assert (first.name, second.name) == ("1", "2")
    assert (second / "saved_model.pb").is_file()
    assert "serving_bytes" in tf.saved_model.load(str(second)).signatures
    with pytest.raises(KerasFTError, match="already exists"):
        export_for_serving(run_dir, tmp_path / "serving", version=1)


def test_export_versions_are_ascii_numbers_only(trained, tmp_path, capsys):
    """'²' and '٣' are digits to str.isdigit, not TF Serving versions: they are left alone."""
    _, run_dir, _ = trained
    for name in ("²", "٣", "7b"):
        (tmp_path / "serving" / name).mkdir(parents=True)
    code, out, err = cli(capsys, "export", run_dir, "--output", tmp_path / "serving")
    assert code == 0, err
    assert out.strip() == f"exported: {tmp_path / 'serving' / '1'}"


KILLED_SAVE = """
import sys, time
import keras_ft, keras_ft.runs.artifacts as artifacts
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from conftest import tiny_backbone
data = keras_ft.ImageFolder(sys.argv[1], image_size=32, batch_size=8, validation_split=0.0)
tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
# Killed below: no temporary TensorBoard folder for it to leave behind.
tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0, tensorboard_dir=None)
real_export = artifacts.export_saved_model
def slow_export(model, path):
    real_export(model, path)
    print("EXPORTED", flush=True)
    time.sleep(120)
artifacts.export_saved_model = slow_export
tuner.save(sys.argv[2], overwrite=True)
"""


@pytest.mark.parametrize("previous", [False, True])
def test_kill_during_save_leaves_previous_state_or_nothing(previous, trained, tmp_path):
    from conftest import ROOT, write_folder

    data = write_folder(tmp_path / "data", ("a", "b"), per_class=8)
    target = tmp_path / "run"
    if previous:
        trained[0].save(target)
        before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
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
        assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
        keras_ft.load(target)  # still the whole previous run
    else:
        assert not target.exists()


KILLED_REPLACE = """
import os, sys
import keras_ft, keras_ft.runs.artifacts as artifacts
sys.path.insert(0, sys.argv[3])
from conftest import tiny_backbone
data = keras_ft.ImageFolder(sys.argv[1], image_size=32, batch_size=8, validation_split=0.0)
tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
# Killed below: no temporary TensorBoard folder for it to leave behind.
tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0, tensorboard_dir=None)
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
    trained[0].save(target)
    recorded = (target / "run.json").read_bytes()
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
    assert (previous / "run.json").read_bytes() == recorded
    trained[0].save(target, overwrite=True)  # the next save clears what the killed one left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    assert keras_ft.load(target).class_names == trained[0].class_names


# --- Trust: the manifest, the signature, the records' schema (one shared trained run) ---


def cli(capsys, *args):
    """Run `keras-ft ARGS` in this process; return (exit code, stdout, stderr)."""
    from keras_ft.cli.main import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(root) -> dict:
    """Every path under `root`: a symlink's target, a file's SHA-256, or None for a folder."""
    import hashlib
    import os

    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                entries[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    entries[path] = hashlib.sha256(handle.read()).hexdigest()
            else:
                entries[path] = None
    return entries


def assert_refused(result, *fragments):
    """Exit 2, one line on stderr naming each fragment, no traceback, nothing on stdout."""
    code, out, err = result
    assert code == 2, out + err
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err


def edit_model_config(model_file, old, new):
    """Replace `old` by `new` in the config.json inside a .keras zip archive."""
    import zipfile

    with zipfile.ZipFile(model_file) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    config = members["config.json"].decode()
    assert old in config
    members["config.json"] = config.replace(old, new).encode()
    with zipfile.ZipFile(model_file, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


@pytest.fixture
def run_copy(trained, tmp_path):
    """A fresh copy of the shared run, an image to predict and an empty export base."""
    _, run_dir, test = trained
    return copy_run(run_dir, tmp_path / "run"), sorted((test / "red").iterdir())[0], test


def test_run_json_holds_a_manifest_of_every_other_file(trained):
    import hashlib

    _, run_dir, _ = trained
    record = json.loads((run_dir / "run.json").read_text())
    files = sorted(
        p.relative_to(run_dir).as_posix()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name != "run.json"
    )
    assert list(record["manifest"]) == files
    assert {"model.keras", "class_names.json", "saved_model/saved_model.pb"} <= set(files)
    assert any(f.startswith("report/") for f in files)
    for relpath, digest in record["manifest"].items():
        assert hashlib.sha256((run_dir / relpath).read_bytes()).hexdigest() == digest
    assert "signature" not in record


def _swap_labels(run_dir):
    names = json.loads((run_dir / "class_names.json").read_text())
    (run_dir / "class_names.json").write_text(json.dumps(names[::-1]))


def _preprocessing_edited(run_dir):
    edit_model_config(run_dir / "model.keras", '"offset": -1.0', '"offset": 0.0')


def _file_added(run_dir):
    (run_dir / "saved_model" / "assets").mkdir(exist_ok=True)
    (run_dir / "saved_model" / "assets" / "extra.txt").write_text("new")


def _file_removed(run_dir):
    (run_dir / "metrics.json").unlink()


def _saved_model_replaced(run_dir):
    pb = run_dir / "saved_model" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes() + b"\0")


DAMAGE = {
    "labels swapped": (_swap_labels, "changed: class_names.json"),
    "preprocessing edited": (_preprocessing_edited, "changed: model.keras"),
    "file added": (_file_added, "added: saved_model/assets/extra.txt"),
    "file removed": (_file_removed, "removed: metrics.json"),
    "saved_model changed": (_saved_model_replaced, "changed: saved_model/saved_model.pb"),
}


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "reproduce"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_changed_run_directory_is_refused_by_every_command(damage, command, run_copy, capsys):
    run_dir, image, test = run_copy
    change, named = DAMAGE[damage]
    change(run_dir)
    args = {
        "predict": ("predict", run_dir, image),
        "evaluate": ("evaluate", run_dir, test),
        "export": ("export", run_dir, "--output", run_dir.parent / "serving"),
        "reproduce": ("reproduce", run_dir, "--data", test),
    }[command]
    before = listing(run_dir.parent)
    assert_refused(cli(capsys, *args), named, "Restore the run directory")
    assert listing(run_dir.parent) == before


def test_changed_run_directory_is_refused_by_load(run_copy):
    run_dir, _, _ = run_copy
    _preprocessing_edited(run_dir)
    with pytest.raises(KerasFTError, match="changed: model.keras"):
        keras_ft.load(run_dir)


def test_load_uses_the_model_file_it_verified(run_copy, monkeypatch):
    """model.keras replaced right after verification hashed it, by one with the same weights
    and another preprocessing (so 'weights_sha256' still matches): it is never loaded."""
    import shutil

    from keras_ft.runs import manifest

    run_dir, _, _ = run_copy
    swapped = run_dir.parent / "swapped.keras"
    shutil.copy(run_dir / "model.keras", swapped)
    edit_model_config(swapped, '"offset": -1.0', '"offset": 0.0')
    real_hashing = manifest._copy_hashing

    def hash_then_swap(source, destination):
        digest = real_hashing(source, destination)
        if source.name == "model.keras" and destination is None:  # verify_run's hash
            shutil.copy(swapped, source)
        return digest

    monkeypatch.setattr(manifest, "_copy_hashing", hash_then_swap)
    with pytest.raises(KerasFTError, match="model.keras' changed while it was read"):
        keras_ft.load(run_dir)


@pytest.mark.parametrize("where", ["saved_model/variables/outside", "report/link", "logs"])
def test_symlink_in_a_run_directory_is_refused_and_never_followed(where, run_copy, capsys):
    run_dir, image, _ = run_copy
    secret = run_dir.parent / "secret.txt"
    secret.write_text("not for export")
    link = run_dir / where
    if link.exists():
        import shutil

        shutil.rmtree(link)
    link.symlink_to(secret)
    before = listing(run_dir.parent)
    serving = run_dir.parent / "serving"
    assert_refused(cli(capsys, "export", run_dir, "--output", serving), where, "symbolic link")
    assert_refused(cli(capsys, "predict", run_dir, image), where, "symbolic link")
    assert listing(run_dir.parent) == before and not serving.exists()


def test_export_refuses_a_symlink_even_when_the_manifest_was_rewritten(run_copy, capsys):
    run_dir, _, _ = run_copy
    secret = run_dir.parent / "secret.txt"
    secret.write_text("not for export")
    (run_dir / "saved_model" / "assets").mkdir(exist_ok=True)
    (run_dir / "saved_model" / "assets" / "vocab.txt").symlink_to(secret)
    with pytest.raises(KerasFTError, match="symbolic link"):
        reseal(run_dir)  # not even the manifest of a directory with a link is written


def test_export_copies_verified_files_only(trained, tmp_path):
    """The copy is hashed again against the manifest: what was served is what was saved."""
    from keras_ft.runs.artifacts import export_for_serving

    _, run_dir, _ = trained
    target = export_for_serving(run_dir, tmp_path / "serving")
    record = json.loads((run_dir / "run.json").read_text())
    copied = {
        f"saved_model/{p.relative_to(target).as_posix()}" for p in target.rglob("*") if p.is_file()
    }
    assert copied == {k for k in record["manifest"] if k.startswith("saved_model/")}


def _other_variables(trained, run_dir, layout):
    """A SavedModel of other weights: the trained model's own layout (its predictions kernel
    tripled), or a reloaded model's, whose variables are saved in another order."""
    from keras_ft.runs.serving import export_saved_model

    model = trained[0].model if layout == "same" else keras_ft.load(run_dir).model
    kernel = model.get_layer("predictions").kernel
    original = kernel.numpy()
    kernel.assign(original * 3)
    try:
        export_saved_model(model, run_dir.parent / "other")
    finally:
        kernel.assign(original)  # the shared trained model stays as it was
    return run_dir.parent / "other" / "variables"


@pytest.mark.parametrize("format", ["saved_model", "litert"])
@pytest.mark.parametrize("layout", ["same", "other"])
def test_export_refuses_a_saved_model_that_is_not_model_keras(
    layout, format, trained, run_copy, capsys
):
    """Another model's variables in saved_model/, the manifest rewritten to agree (no signing
    key needed): the files verify, model.keras is untouched, the SavedModel is not it."""
    import shutil

    if format == "litert":
        pytest.importorskip("ai_edge_litert")
    run_dir, _, test = run_copy
    variables = _other_variables(trained, run_dir, layout)
    shutil.rmtree(run_dir / "saved_model" / "variables")
    shutil.copytree(variables, run_dir / "saved_model" / "variables")
    reseal(run_dir)
    keras_ft.load(run_dir)  # the run verifies
    output = run_dir.parent / "exported"
    args = ("export", run_dir, "--output", output, "--format", format, "--test-dir", test)
    assert_refused(cli(capsys, *args), "saved_model' does not match", "model.keras'")
    assert not output.exists() or not any(output.iterdir())  # TF Serving's base, empty


@pytest.mark.parametrize(
    "names, message",
    [
        (["a", "b", "c", "d"], "4 class names for a model with 3 outputs"),
        (["a"], "1 class names for a model with 3 outputs"),
        ({"blue": 0, "green": 1, "red": 2}, "a JSON list of distinct class-name strings"),
        (["blue", "blue", "red"], "a JSON list of distinct class-name strings"),
    ],
)
def test_class_list_must_match_the_model(names, message, run_copy, capsys):
    """Even with run.json rewritten to agree (possible without a signing key)."""
    run_dir, image, _ = run_copy
    (run_dir / "class_names.json").write_text(json.dumps(names))
    valid = isinstance(names, list) and len(set(names)) == len(names)
    reseal(run_dir, lambda record: record.update(class_names=names) if valid else None)
    before = listing(run_dir.parent)
    assert_refused(cli(capsys, "predict", run_dir, image), "class_names.json", message)
    assert listing(run_dir.parent) == before


def test_class_names_json_must_match_run_json(run_copy, capsys):
    run_dir, image, _ = run_copy
    _swap_labels(run_dir)
    reseal(run_dir)
    assert_refused(
        cli(capsys, "predict", run_dir, image), "class_names.json", "run.json", "class_names"
    )


def test_model_with_code_is_refused_as_code_not_as_damage(run_copy, capsys):
    run_dir, image, _ = run_copy
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    keras.Model(inputs, outputs).save(run_dir / "model.keras")
    reseal(run_dir)
    code, out, err = cli(capsys, "predict", run_dir, image)
    assert_refused((code, out, err), "model.keras", "code that keras_ft will not run")
    assert "damaged" not in err


def test_old_runs_without_a_manifest_get_a_clear_message(run_copy, capsys):
    run_dir, image, _ = run_copy
    record = json.loads((run_dir / "run.json").read_text())
    record["format_version"] = 1
    del record["manifest"]
    (run_dir / "run.json").write_text(json.dumps(record))
    assert_refused(cli(capsys, "predict", run_dir, image), "format 1", "no file manifest")


# --- Signing ---


@pytest.fixture(scope="module")
def signed(trained, tmp_path_factory):
    tuner, _, test = trained
    tmp = tmp_path_factory.mktemp("signed")
    run_dir = Path(tuner.save(tmp / "run", signing_key=b"right key"))
    (tmp / "right.key").write_text("right key\n")
    (tmp / "wrong.key").write_text("wrong key\n")
    return run_dir, tmp, sorted((test / "red").iterdir())[0]


def test_signed_run_carries_an_hmac_over_the_record(signed):
    import hashlib
    import hmac

    run_dir, _, _ = signed
    record = json.loads((run_dir / "run.json").read_text())
    body = {k: v for k, v in record.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    expected = hmac.new(b"right key", canonical.encode(), hashlib.sha256).hexdigest()
    assert record["signature"] == expected


def test_signed_run_loads_with_its_key_from_the_flag_or_the_environment(
    signed, capsys, monkeypatch
):
    run_dir, tmp, image = signed
    code, out, err = cli(capsys, "predict", run_dir, image, "--signing-key-file", tmp / "right.key")
    assert code == 0 and json.loads(out)["label"] in ("blue", "green", "red"), err
    monkeypatch.setenv("KERAS_FT_SIGNING_KEY", "right key")
    assert cli(capsys, "predict", run_dir, image)[0] == 0
    assert keras_ft.load(run_dir).class_names == ("blue", "green", "red")


def test_signed_run_without_a_key_still_checks_the_hashes(signed, tmp_path, capsys):
    run_dir, _, image = signed
    assert cli(capsys, "predict", run_dir, image)[0] == 0
    copy = copy_run(run_dir, tmp_path / "run")
    _swap_labels(copy)
    assert_refused(cli(capsys, "predict", copy, image), "changed: class_names.json")


def test_wrong_key_is_refused(signed, capsys, monkeypatch):
    run_dir, tmp, image = signed
    before = listing(tmp)
    assert_refused(
        cli(capsys, "predict", run_dir, image, "--signing-key-file", tmp / "wrong.key"),
        "signature",
        "run.json",
    )
    monkeypatch.setenv("KERAS_FT_SIGNING_KEY", "wrong key")
    serving = tmp / "serving"
    assert_refused(cli(capsys, "export", run_dir, "--output", serving), "signature")
    assert listing(tmp) == before and not serving.exists()


def test_resealed_signed_run_is_refused_with_the_key(signed, tmp_path, capsys, monkeypatch):
    """Without the key, an attacker can rewrite the manifest but not the signature."""
    run_dir, _, image = signed
    copy = copy_run(run_dir, tmp_path / "run")
    _swap_labels(copy)
    reseal(copy, lambda record: record.update(class_names=record["class_names"][::-1]))
    monkeypatch.setenv("KERAS_FT_SIGNING_KEY", "right key")
    assert_refused(cli(capsys, "predict", copy, image), "signature", "run.json")
    with pytest.raises(KerasFTError, match="signature"):
        keras_ft.load(copy)


def test_unsigned_run_is_refused_when_a_key_is_given(run_copy, signed, capsys):
    run_dir, image, _ = run_copy
    _, tmp, _ = signed
    assert_refused(
        cli(capsys, "predict", run_dir, image, "--signing-key-file", tmp / "right.key"),
        "not signed",
    )


def test_missing_or_empty_key_file_is_refused(run_copy, tmp_path, capsys):
    run_dir, image, _ = run_copy
    assert_refused(
        cli(capsys, "predict", run_dir, image, "--signing-key-file", tmp_path / "nope.key"),
        "--signing-key-file",
        "nope.key",
    )
    (tmp_path / "empty.key").write_text("")
    assert_refused(
        cli(capsys, "predict", run_dir, image, "--signing-key-file", tmp_path / "empty.key"),
        "empty",
    )


# --- Damaged records ---


DAMAGED_RECORDS = {
    "random bytes": (b"\x8f\x00\xffrun\x9c", "run.json"),
    "not an object": (b"[1, 2]", "run.json"),
    "class_names a number": ({"class_names": 5}, "'class_names'"),
    "weights_sha256 a number": ({"weights_sha256": 5}, "'weights_sha256'"),
    "environment a list": ({"environment": []}, "'environment'"),
    "manifest missing": ({"manifest": None}, "'manifest'"),
    "format_version missing": ({"format_version": None}, "'format_version'"),
    "data a string": ({"data": "x"}, "'data'"),
    "training missing": ({"training": None}, "'training'"),
    "data_files a list": ({"data_files": []}, "'data_files'"),
    "seed a string": ({"seed": "42"}, "'seed'"),
}


def _damage_record(run_dir, damage):
    if isinstance(damage, bytes):
        (run_dir / "run.json").write_bytes(damage)
        return
    record = json.loads((run_dir / "run.json").read_text())
    for key, value in damage.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    (run_dir / "run.json").write_text(json.dumps(record))


@pytest.mark.parametrize("command", ["predict", "evaluate", "reproduce"])
@pytest.mark.parametrize("case", list(DAMAGED_RECORDS))
def test_damaged_run_json_gets_one_message(case, command, run_copy, capsys):
    run_dir, image, test = run_copy
    damage, named = DAMAGED_RECORDS[case]
    _damage_record(run_dir, damage)
    args = {
        "predict": ("predict", run_dir, image),
        "evaluate": ("evaluate", run_dir, test),
        "reproduce": ("reproduce", run_dir, "--data", test),
    }[command]
    before = listing(run_dir.parent)
    assert_refused(cli(capsys, *args), "run.json", named)
    assert listing(run_dir.parent) == before


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("decision", ["yes", None, ["quarter_turns"]])
def test_a_damaged_decision_is_refused_before_test_time_augmentation(
    decision, command, run_copy, capsys
):
    """--tta reads the record's decisions: a string there was an AttributeError traceback."""
    run_dir, image, test = run_copy
    _damage_record(run_dir, {"decisions": {"quarter_turns": decision}})
    args = (run_dir, image) if command == "predict" else (run_dir, test)
    assert_refused(cli(capsys, command, *args, "--tta"), "run.json", "'decisions'")


@pytest.mark.parametrize("content", [b"[bad", b"5", b"\xff\xfe", b'{"a": 1}', b"[1, 2, 3]"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "reproduce"])
def test_damaged_class_names_json_gets_one_message(content, command, run_copy, capsys):
    run_dir, image, test = run_copy
    (run_dir / "class_names.json").write_bytes(content)
    reseal(run_dir)  # past the manifest: the file's own check must hold too
    args = {
        "predict": ("predict", run_dir, image),
        "evaluate": ("evaluate", run_dir, test),
        "reproduce": ("reproduce", run_dir, "--data", test),
    }[command]
    before = listing(run_dir.parent)
    assert_refused(cli(capsys, *args), "class_names.json")
    assert listing(run_dir.parent) == before


def _paths(value, prefix=()):
    """Every (key or index) path into a JSON value, the value itself first."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value)
    if isinstance(value, (dict, list)):
        for key, item in items:
            yield from _paths(item, (*prefix, key))


def _mutate(text: str, rng) -> bytes:
    """One random damage to a JSON file: a type swap, a deletion, a truncation or random bytes."""
    raw = text.encode()
    kind = rng.choice(["swap", "delete", "truncate", "bytes", "flip"])
    if kind == "truncate":
        return raw[: rng.integers(0, len(raw))]
    if kind == "bytes":
        return rng.bytes(int(rng.integers(1, 64)))
    if kind == "flip":
        data = bytearray(raw)
        for i in rng.integers(0, len(data), int(rng.integers(1, 4))):
            data[i] = int(rng.integers(0, 256))
        return bytes(data)
    value = json.loads(text)
    # A top-level key, then deeper with probability 1/2 per level: every part gets hit.
    path = ()
    node = value
    while isinstance(node, (dict, list)) and len(node) and (not path or rng.random() < 0.5):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = keys[int(rng.integers(len(keys)))]
        path, node = (*path, key), node[key]
    if not path:
        value = [5, "x", None, {}, 1.5][int(rng.integers(5))]
    else:
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if kind == "delete":
            del parent[path[-1]]
        else:
            choices = [5, -1, 2.5, "x", "", None, True, [], {}, ["a"], {"a": 1}]
            parent[path[-1]] = choices[int(rng.integers(len(choices)))]
    return json.dumps(value).encode()


def test_fuzzed_records_give_exit_0_or_2_and_never_a_traceback(run_copy, capsys):
    """300 seeded mutations of run.json and class_names.json through predict and reproduce."""
    run_dir, image, test = run_copy
    originals = {name: (run_dir / name).read_text() for name in ("run.json", "class_names.json")}
    rng = np.random.default_rng(13)
    codes = {0: 0, 2: 0}
    for trial in range(300):
        name = "run.json" if trial % 3 else "class_names.json"
        (run_dir / name).write_bytes(_mutate(originals[name], rng))
        if name == "class_names.json" and trial % 2:
            reseal(run_dir)  # past the manifest, so class_names.json's own check is reached
        for args in (("predict", run_dir, image), ("reproduce", run_dir, "--data", test)):
            code, out, err = cli(capsys, *args)
            assert code in (0, 2), (trial, args[0], err)
            assert "Traceback" not in err, (trial, args[0], err)
            if code == 2:
                assert len(err.strip().splitlines()) == 1, (trial, args[0], err)
            codes[code] = codes.get(code, 0) + 1
        for original, text in originals.items():
            (run_dir / original).write_text(text)
    assert codes[2] > 300  # the mutations do get refused, not silently used


def test_train_signs_with_the_key_file_and_refuses_a_bad_one_before_training(tmp_path, capsys):
    from conftest import TINY_TRAIN, write_folder

    from keras_ft.runs.manifest import signature

    data = write_folder(tmp_path / "data", ("a", "b"), per_class=6, size=32)
    (tmp_path / "train.key").write_text("team key\n")
    epochs = "--head-epochs 1 --finetune-epochs 0 --batch-size 8 --no-tensorboard".split()
    missing = ("--signing-key-file", tmp_path / "nope.key", "--output", tmp_path / "bad")
    before = listing(tmp_path)
    assert_refused(cli(capsys, "train", data, *TINY_TRAIN, *epochs, *missing), "nope.key")
    assert listing(tmp_path) == before
    output = tmp_path / "run"
    keyed = ("--signing-key-file", tmp_path / "train.key", "--output", output)
    code, out, err = cli(capsys, "train", data, *TINY_TRAIN, *epochs, *keyed)
    assert code == 0, err
    record = json.loads((output / "run.json").read_text())
    assert record["signature"] == signature(record, b"team key")
    image = sorted((data / "a").iterdir())[0]
    code, out, err = cli(
        capsys, "predict", output, image, "--signing-key-file", tmp_path / "train.key"
    )
    assert code == 0 and json.loads(out)["label"] in ("a", "b"), err


# --- model.keras in plain Keras, and runs recorded with the `Preprocess` layer ---

# Loads each model.keras with Keras alone and saves its probabilities, in a Python where
# keras_ft (and, with -I, the tests' plugins on PYTHONPATH) cannot be imported.
PLAIN_KERAS = """
import sys
sys.modules["keras_ft"] = None  # as if keras_ft were not installed
try:
    import keras_ft
except ImportError:
    pass
else:
    sys.exit("keras_ft was importable")
import keras
import numpy as np
for model_path, images, out in zip(*[iter(sys.argv[1:])] * 3):
    model = keras.saving.load_model(model_path)  # safe_mode=True, compile=True: the defaults
    np.save(out, model.predict_on_batch(np.load(images)))
"""


def _train_run(data, output, backbone, **options):
    """A run of `backbone` (random weights) trained 1 + 1 epochs on `data`, saved to `output`."""
    tuner = keras_ft.FineTuner(backbone, weights=None, seed=0, **options)
    epochs = {"head_epochs": 1, "finetune_epochs": 1}
    tuner.fit(data, recipe=None, evaluate=False, verbose=0, tensorboard_dir=None, **epochs)
    return Path(tuner.save(output))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from conftest import write_folder

    train = write_folder(tmp_path_factory.mktemp("small") / "train", per_class=8, size=32)
    return keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.25, seed=0)


@pytest.mark.filterwarnings("ignore:Fine-tuning reached")  # untrained, 1 + 1 epochs
def test_model_keras_loads_and_predicts_the_same_in_plain_keras(small_data, tmp_path):
    """VGG16 (caffe: RGB->BGR, minus the mean) and testnet (tf: to [-1, 1]) runs."""
    files = sorted(Path(small_data.config.directory).rglob("*.png"))[::4]
    images = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    np.save(tmp_path / "images.npy", images)
    args, expected = [], {}
    for backbone in ("vgg16", "testnet"):
        run_dir = _train_run(small_data, tmp_path / backbone, backbone)
        with zipfile.ZipFile(run_dir / "model.keras") as archive:
            assert b"keras_ft" not in archive.read("config.json")  # no class of ours
        expected[backbone] = keras_ft.load(run_dir).predict_proba(images)
        args += [run_dir / "model.keras", tmp_path / "images.npy", tmp_path / f"{backbone}.npy"]
    result = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_KERAS, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for backbone, probabilities in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{backbone}.npy"), probabilities)


@pytest.fixture
def caffe_testnet():
    """testnet registered with caffe preprocessing, whose layer then has weights of its own."""
    from testnet_pkg import testnet

    from keras_ft.models.backbones import _REGISTRY, BackboneSpec, register_backbone

    spec = register_backbone(BackboneSpec("testcaffe", testnet, "caffe", default_size=32))
    yield spec.name
    del _REGISTRY[spec.name]


@pytest.mark.filterwarnings("ignore:Fine-tuning reached")  # untrained, 1 + 1 epochs
@pytest.mark.parametrize("recorded", ["before preprocessing_layers", "keras"])
def test_runs_with_either_preprocessing_layer_reproduce(
    recorded, caffe_testnet, small_data, tmp_path
):
    """A run recorded before `preprocessing_layers` existed rebuilds the `Preprocess` layer it
    trained with (with caffe's standard layer, weights of its own would change the hash)."""
    from keras_ft.models.classifier import Preprocess

    if recorded == "keras":
        run_dir = _train_run(small_data, tmp_path / "run", caffe_testnet)
        layer = keras.layers.Conv2D
    else:  # what the code before the option trained, and a record without the option
        trained = _train_run(
            small_data, tmp_path / "trained", caffe_testnet, preprocessing_layers="keras_ft"
        )
        run_dir = copy_run(
            trained, tmp_path / "run", lambda record: record["model"].pop("preprocessing_layers")
        )
        layer = Preprocess
    assert isinstance(keras_ft.load(run_dir).model.get_layer("preprocess"), layer)
    result = keras_ft.reproduce_run(run_dir, verbose=0)
    assert result["match"], result


def test_the_python_api_writes_neither_into_the_data_nor_into_a_run(trained):
    """`FineTuner.save` and `export_for_serving` go through the output guard the commands use."""
    tuner, run_dir, _ = trained
    inside = Path(tuner.data_config.directory) / "run"
    with pytest.raises(KerasFTError, match="lies inside the data folder"):
        tuner.save(inside)
    assert not inside.exists()
    with pytest.raises(KerasFTError, match="lies inside the run directory"):
        keras_ft.export_for_serving(run_dir, run_dir / "serving")
    assert not (run_dir / "serving").exists()
    keras_ft.load(run_dir)  # still verifies
