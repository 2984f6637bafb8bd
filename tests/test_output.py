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

from keras_ft.output import OutputLock

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

    monkeypatch.setattr("keras_ft.data.scan_folder", no_scan)
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
        [sys.executable, "-m", "keras_ft.cli", "train", str(data / "train"), *FAST]
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
        [sys.executable, "-c", "import sys, time\nfrom keras_ft.output import OutputLock\n"
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
    from keras_ft import artifacts
    from keras_ft.reproducibility import weights_sha256

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
