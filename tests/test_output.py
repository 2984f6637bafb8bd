"""`--output` of train and tune: never a user's files, one run at a time, nothing left behind."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error

import numpy as np
import pytest
from conftest import TINY_TRAIN, write_folder
from test_cli import assert_clean_failure, run_here

from keras_ft.runs.output import OutputLock

FAST = [*TINY_TRAIN, "--batch-size", "4", "--head-epochs", "1", "--finetune-epochs", "1"]


def snapshot(root):
    """Every path under `root` with its kind, size and modification time."""
    listing = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            listing[os.path.relpath(path, root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return listing


@pytest.fixture
def data(tmp_path):
    """tmp/data/train and tmp/data/test, two classes."""
    write_folder(tmp_path / "data" / "train", ("a", "b"), per_class=6)
    write_folder(tmp_path / "data" / "test", ("a", "b"), per_class=2)
    return tmp_path / "data"


@pytest.mark.parametrize("where", ["train", "train/run", "data", "test"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_output_overlapping_the_data_is_refused(where, overwrite, data, tmp_path, capsys):
    before = snapshot(tmp_path)
    output = tmp_path / "data" / where if where != "data" else data
    flags = ["--overwrite"] if overwrite else []
    result = run_here(
        capsys, "train", data / "train", "--test-dir", data / "test", *FAST,
        "--output", output, *flags,
    )  # fmt: skip
    assert_clean_failure(result, "the data folder", "Choose an --output outside the data")
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_overlap_is_judged_on_resolved_paths(data, tmp_path, capsys):
    (tmp_path / "alias").symlink_to(data / "train")
    before = snapshot(tmp_path)
    result = run_here(
        capsys, "train", data / "train", *FAST, "--output", tmp_path / "alias", "--overwrite"
    )
    assert_clean_failure(result, "the data folder")
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_folder_keras_ft_did_not_write(data, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    result = run_here(
        capsys, "train", data / "train", *FAST, "--output", tmp_path / "mine", "--overwrite"
    )
    assert_clean_failure(result, "a folder keras_ft did not write", "thesis.tex")
    assert snapshot(tmp_path) == before


def test_tune_overwrite_refuses_a_folder_keras_ft_did_not_write(data, tmp_path, capsys):
    pytest.importorskip("keras_tuner")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    result = run_here(
        capsys, "tune", data / "train", *FAST, "--trials", "1",
        "--output", tmp_path / "mine", "--overwrite",
    )  # fmt: skip
    assert_clean_failure(result, "a folder keras_ft did not write", "notes.txt")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: tmp / "file.txt", "is an existing file"),
        (lambda tmp: tmp / "file.txt" / "run", "is a file, not a folder"),
        (lambda tmp: "/proc/keras_ft_run", "Choose an --output on a writable filesystem"),
    ],
)
def test_unwritable_output_is_refused_before_the_scan(make, fragment, data, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    before = snapshot(tmp_path)
    result = run_here(capsys, "train", data / "train", *FAST, "--output", make(tmp_path))
    assert_clean_failure(result, fragment)
    assert "classes (" not in result.stdout  # refused before the data was read
    assert snapshot(tmp_path) == before


def test_unknown_unfreeze_layer_is_refused_before_the_data_is_read(
    data, tmp_path, capsys, monkeypatch
):
    def no_scan(*args, **kwargs):
        raise AssertionError("the data was read before the options were checked")

    monkeypatch.setattr("keras_ft.data.folder.scan_folder", no_scan)
    before = snapshot(tmp_path)
    result = run_here(
        capsys, "train", data / "train", *FAST, "--unfreeze", "nosuchlayer",
        "--output", tmp_path / "run",
    )  # fmt: skip
    assert_clean_failure(result, "no layer named 'nosuchlayer'", "conv_b")
    assert snapshot(tmp_path) == before


def test_imagenet_weights_without_network_say_what_to_do(data, tmp_path, capsys, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    result = run_here(
        capsys, "train", data / "train", "--backbone", "mobilenetv3small", "--image-size", "32",
        "--output", tmp_path / "run",
    )  # fmt: skip
    assert_clean_failure(
        result,
        "Cannot download the ImageNet weights of backbone 'mobilenetv3small'",
        "Temporary failure in name resolution",
        str(tmp_path / "keras_home" / "models"),
        "--weights PATH",
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_locked_output_is_refused_at_once(data, tmp_path, capsys):
    before = snapshot(tmp_path)
    with OutputLock(tmp_path / "run"):
        result = run_here(capsys, "train", data / "train", *FAST, "--output", tmp_path / "run")
    assert_clean_failure(result, "is in use by another keras-ft run", f"process {os.getpid()}")
    assert snapshot(tmp_path) == before  # the lock file went with the lock


def test_two_real_runs_into_one_output(data, tmp_path, capsys):
    output = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "keras_ft.cli.main", "train", str(data / "train"), *FAST]
        + ["--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = tmp_path / ".run.lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_here(capsys, "train", data / "train", *FAST, "--output", output)
    assert_clean_failure(second, f"process {first.pid}")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert (output / "run.json").is_file() and (output / "logs").is_dir()
    assert not lock.exists()


def test_a_killed_lock_holder_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom keras_ft.runs.output import OutputLock\n"
         "OutputLock(sys.argv[1]).acquire(); print('LOCKED', flush=True); time.sleep(120)",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert (tmp_path / ".run.lock").read_text().strip() == str(holder.pid)  # left behind
    with OutputLock(tmp_path / "run"):  # but not holding anything
        assert (tmp_path / ".run.lock").read_text().strip() == str(os.getpid())


def test_overwrite_through_a_symlink_replaces_the_target_and_keeps_the_link(data, tmp_path, capsys):
    real = tmp_path / "store" / "run"
    real.mkdir(parents=True)
    link = tmp_path / "run"
    link.symlink_to(real)
    for flags in ([], ["--overwrite"]):
        result = run_here(capsys, "train", data / "train", *FAST, "--output", link, *flags)
        assert result.returncode == 0, result.stderr
        assert f"run directory: {link} (a link to {real})" in result.stdout
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "run.json").is_file() and not (real / "checkpoints").exists()
    leftovers = [p.name for p in (tmp_path, tmp_path / "store") for p in p.iterdir()]
    assert sorted(leftovers) == ["data", "run", "run", "store"]  # no .old-, .partial-, .lock


def test_full_disk_mid_training_is_exit_2_and_resumable(data, tmp_path, capsys, monkeypatch):
    from keras_ft.training.checkpoint import Checkpoint

    monkeypatch.setattr(Checkpoint, "interval", 0.0)  # a checkpoint after every epoch
    real_savez, calls = np.savez, []

    def savez_until_full(handle, **arrays):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"partial bytes")
            raise OSError(28, "No space left on device")
        real_savez(handle, **arrays)

    monkeypatch.setattr(np, "savez", savez_until_full)
    output = tmp_path / "run"
    args = ["train", data / "train", *FAST, "--output", output]
    result = run_here(capsys, *args)
    assert_clean_failure(result, "No space left on device", str(output / "checkpoints"), "--resume")
    checkpoints = output / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if "partial" in p.name]
    assert json.loads((checkpoints / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(np, "savez", real_savez)
    # The data spelled another way (relative, through a link) is still the same data.
    (tmp_path / "same").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    resumed = run_here(capsys, "train", "same/train", *FAST, "--output", output, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (output / "run.json").is_file()


def test_full_disk_while_saving_is_exit_2_and_resume_saves_the_run(
    data, tmp_path, capsys, monkeypatch
):
    from keras_ft.runs import artifacts
    from keras_ft.runs.reproducibility import weights_sha256

    trained = []

    def full_disk(tuner, folder):
        trained.append(weights_sha256(tuner.model))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "write_report", full_disk)
    output = tmp_path / "run"
    result = run_here(capsys, "train", data / "train", *FAST, "--output", output)
    assert_clean_failure(result, f"Cannot write the run directory '{output}'", "No space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # no staging left
    assert not (output / "run.json").exists()
    monkeypatch.undo()
    resumed = run_here(capsys, "train", data / "train", *FAST, "--output", output, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((output / "run.json").read_text())["weights_sha256"] == trained[0]


# ---------------------------------------------------------------- what keras_ft may replace


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny finished run (and its data), copied by the tests that change it."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("finished")
    write_folder(root / "data" / "train", ("a", "b"), per_class=6)
    result = run_cli("train", root / "data" / "train", *FAST, "--output", root / "run")
    assert result.returncode == 0, result.stderr
    return root


def _copy(finished_run, tmp_path):
    import shutil

    shutil.copytree(finished_run / "data", tmp_path / "data")
    shutil.copytree(finished_run / "run", tmp_path / "run")
    return tmp_path / "data" / "train", tmp_path / "run"


@pytest.mark.parametrize("record", ["trials.json", "run.json", "search.json"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_a_record_by_name_alone_does_not_make_a_folder_keras_fts(
    record, overwrite, data, tmp_path, capsys
):
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / record).write_text('{"experiment": "sacred", "format_version": 1}')
    (project / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    flags = ["--overwrite"] if overwrite else []
    result = run_here(capsys, "train", data / "train", *FAST, "--output", project, *flags)
    assert_clean_failure(result, "a folder keras_ft did not write", "thesis.tex", "src/")
    assert "--resume" not in result.stderr
    assert snapshot(tmp_path) == before


def test_a_checkpoint_state_by_name_alone_suggests_no_resume(data, tmp_path, capsys):
    (tmp_path / "proj" / "checkpoints").mkdir(parents=True)
    (tmp_path / "proj" / "checkpoints" / "state.json").write_text("[1, 2]")
    before = snapshot(tmp_path)
    result = run_here(capsys, "train", data / "train", *FAST, "--output", tmp_path / "proj")
    assert_clean_failure(result, "a folder keras_ft did not write")
    assert "--resume" not in result.stderr
    resumed = run_here(
        capsys, "train", data / "train", *FAST, "--output", tmp_path / "proj", "--resume"
    )
    assert_clean_failure(resumed, "a folder keras_ft did not write")
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_run_whose_listed_file_was_replaced(finished_run, tmp_path, capsys):
    """A file the manifest lists but whose content changed is no longer keras_ft's to delete."""
    train, run = _copy(finished_run, tmp_path)
    (run / "history.csv").write_text("my own table, saved over keras_ft's\n")
    before = snapshot(tmp_path)
    result = run_here(capsys, "train", train, *FAST, "--output", run, "--overwrite")
    assert_clean_failure(result, "files keras_ft did not write", "history.csv")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("extra", ["thesis.tex", "report/notes.txt", "saved_model/mine/"])
def test_overwrite_refuses_a_run_holding_files_it_does_not_list(
    extra, finished_run, tmp_path, capsys
):
    train, run = _copy(finished_run, tmp_path)
    target = run / extra
    if extra.endswith("/"):
        target.mkdir()
    else:
        target.write_text("mine")
    before = snapshot(tmp_path)
    result = run_here(capsys, "train", train, *FAST, "--output", run, "--overwrite")
    assert_clean_failure(result, "files keras_ft did not write", extra)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_finished_run(finished_run, tmp_path, capsys):
    train, run = _copy(finished_run, tmp_path)
    result = run_here(capsys, "train", train, *FAST, "--output", run, "--overwrite")
    assert result.returncode == 0, result.stderr
    from keras_ft import load

    assert list(load(run).class_names) == ["a", "b"]


def test_a_linked_checkpoints_folder_is_refused_and_its_target_kept(finished_run, tmp_path, capsys):
    from keras_ft import KerasFTError, load

    train, run = _copy(finished_run, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "state.json").write_text('{"phase": "x", "epoch": 1, "file": "f", "signature": 1}')
    (elsewhere / "epoch-0001.npz").write_text("a user's file")
    (run / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(KerasFTError, match="checkpoints' is a symbolic link"):
        load(run)
    before = snapshot(tmp_path)
    result = run_here(capsys, "train", train, *FAST, "--output", run, "--overwrite")
    assert_clean_failure(result, "checkpoints (a symbolic link)")
    assert snapshot(tmp_path) == before


def test_the_lock_never_writes_through_a_link(tmp_path):
    from keras_ft import KerasFTError

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (tmp_path / ".run.lock").symlink_to(precious)
    with pytest.raises(KerasFTError, match="is a symbolic link"):
        OutputLock(tmp_path / "run").acquire()
    assert precious.read_text() == "keep me"


def test_a_mount_point_output_is_refused_before_training(data, tmp_path, capsys, monkeypatch):
    output = tmp_path / "volume"
    output.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(output) or real(p))
    for flags in ([], ["--overwrite"], ["--resume"]):
        result = run_here(capsys, "train", data / "train", *FAST, "--output", output, *flags)
        assert_clean_failure(result, "is a mount point", f"--output '{output / 'run'}'")
        assert "classes (" not in result.stdout
    assert not any(output.iterdir())


def test_only_siblings_keras_ft_wrote_are_cleaned_up(finished_run, tmp_path, capsys):
    train, run = _copy(finished_run, tmp_path)
    kept = [tmp_path / ".run.old-backup", tmp_path / ".run.partial-2024-01-01"]
    stale = tmp_path / ".run.partial-4194305-0123abcd"  # above any pid: a dead process
    for folder in (*kept, stale):
        folder.mkdir()
        (folder / "file").write_text("x")
    result = run_here(capsys, "train", train, *FAST, "--output", run, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert all((folder / "file").is_file() for folder in kept)
    assert not stale.exists()


# ---------------------------------------------------------------- every command that writes


def test_lr_find_never_writes_onto_the_data(data, tmp_path, capsys):
    image = data / "train" / "a" / "000.png"
    before = snapshot(tmp_path)
    for output, flags, fragment in (
        (image, ["--overwrite"], "the data folder"),
        (data / "train" / "a" / "new.png", [], "the data folder"),
        (tmp_path, [], "is a folder"),
        (tmp_path / "plot.txt", [], "ending in .png"),
    ):
        result = run_here(
            capsys, "lr-find", data / "train", *FAST, "--steps", "10", "--output", output, *flags
        )
        assert_clean_failure(result, fragment)
    assert snapshot(tmp_path) == before


def test_lr_find_makes_a_missing_parent_folder(data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    output = tmp_path / "plots" / "new" / "lr.png"
    result = run_here(capsys, "lr-find", data / "train", *FAST, "--steps", "10", "--output", output)
    assert result.returncode == 0, result.stderr
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "command",
    [
        ["export", "{run}", "--output", "{run}/serving"],
        ["explain", "{run}", "{image}", "--output", "{run}"],
        ["explain", "{run}", "{image}", "--output", "{run}/report/cams"],
        ["rank", "{train}", "--backbones", "testnet", "--weights", "none", "--output", "{run}"],
    ],
)
def test_no_command_writes_into_a_run_directory(command, finished_run, tmp_path, capsys):
    from keras_ft import load

    train, run = _copy(finished_run, tmp_path)
    image = train / "a" / "000.png"
    args = [a.format(run=run, image=image, train=train) for a in command]
    before = snapshot(tmp_path)
    result = run_here(capsys, *args)
    assert_clean_failure(result, "the run directory", "fail its own verification")
    assert snapshot(tmp_path) == before
    load(run)  # still verifies
