"""The manifest, the signature and the record schema, on small folders (no model)."""

import hashlib
import json
import os

import pytest

from keras_ft.runs.manifest import (
    check_manifest,
    check_record,
    file_manifest,
    seal,
    signature,
    signing_key,
)
from keras_ft.utils.errors import KerasFTError


@pytest.fixture
def run_dir(tmp_path):
    root = tmp_path / "run"
    (root / "saved_model" / "variables").mkdir(parents=True)
    (root / "model.keras").write_bytes(b"model")
    (root / "saved_model" / "variables" / "v.data").write_bytes(b"\0" * 10)
    (root / "run.json").write_text("{}")
    return root


def test_manifest_lists_every_file_but_run_json_by_sorted_posix_path(run_dir):
    manifest = file_manifest(run_dir)
    assert list(manifest) == ["model.keras", "saved_model/variables/v.data"]
    assert manifest["model.keras"] == hashlib.sha256(b"model").hexdigest()


def test_checkpoints_of_a_run_training_into_the_folder_are_not_part_of_the_run(run_dir):
    manifest = file_manifest(run_dir)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "state.json").write_text("{}")  # an --overwrite run, halfway
    check_manifest(run_dir, manifest)  # the finished run still loads
    (run_dir / "saved_model" / "checkpoints").mkdir()
    (run_dir / "saved_model" / "checkpoints" / "x").write_text("x")  # not at the top: counted
    with pytest.raises(KerasFTError, match="saved_model/checkpoints/x"):
        check_manifest(run_dir, manifest)


def test_manifest_names_added_changed_and_removed_files(run_dir):
    manifest = file_manifest(run_dir)
    (run_dir / "model.keras").write_bytes(b"other")
    (run_dir / "saved_model" / "variables" / "v.data").unlink()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(KerasFTError) as error:
        check_manifest(run_dir, manifest)
    message = str(error.value)
    assert "changed: model.keras; added: notes.txt; removed: saved_model/variables/v.data" in (
        message
    )
    assert "\n" not in message


def test_links_and_special_files_are_refused(run_dir, tmp_path):
    (tmp_path / "outside").write_text("secret")
    os.symlink(tmp_path, run_dir / "saved_model" / "assets")  # a linked folder
    with pytest.raises(KerasFTError, match="assets' is a symbolic link"):
        file_manifest(run_dir)
    os.unlink(run_dir / "saved_model" / "assets")
    os.mkfifo(run_dir / "report")
    with pytest.raises(KerasFTError, match="report' is not a regular file"):
        file_manifest(run_dir)


def test_signature_ignores_layout_and_covers_every_value(run_dir):
    record = seal({"seed": 1, "class_names": ["a", "b"], "ratio": 0.1}, run_dir, b"k")
    reread = json.loads(json.dumps(record, indent=4))
    reordered = dict(reversed(list(reread.items())))
    assert signature(reordered, b"k") == record["signature"]
    assert signature({**record, "seed": 2}, b"k") != record["signature"]
    assert signature(record, b"other") != record["signature"]


def test_signing_key_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_FT_SIGNING_KEY", raising=False)
    assert signing_key() is None
    monkeypatch.setenv("KERAS_FT_SIGNING_KEY", "from env")
    assert signing_key() == b"from env"
    (tmp_path / "key").write_bytes(b"from file\r\n")
    assert signing_key(key_file=tmp_path / "key") == b"from file"
    assert signing_key("given") == b"given"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(KerasFTError, match="--signing-key-file '.*empty' is empty"):
        signing_key(key_file=tmp_path / "empty")


@pytest.mark.parametrize(
    "record, message",
    [
        ([], "expected a JSON object, received list"),
        ({"format_version": 2}, "'keras_ft_version' is missing"),
    ],
)
def test_record_schema_names_the_first_problem(record, message):
    with pytest.raises(KerasFTError, match=message):
        check_record(record, "run/run.json")
