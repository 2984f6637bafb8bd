"""Proof that a run directory is the one that was saved.

`run.json` holds a manifest, the SHA-256 of every other file of the run
directory (`saved_model/`, `report/` and `logs/` included), by relative POSIX
path, sorted. With a signing key (`KERAS_FT_SIGNING_KEY`, or
`--signing-key-file`), it also holds `signature`, an HMAC-SHA256 of the record
itself, so that whoever lacks the key cannot rewrite the manifest unnoticed.

Also here: the schema of `run.json`, checked before anything in the run
directory is used, so a damaged record gives one message, not a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from pathlib import Path

from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.files import TRAINING_STATE

SIGNING_KEY_ENV = "KERAS_FT_SIGNING_KEY"
_RESTORE = "Restore the run directory from a copy, or re-create the run with `keras-ft train`."
_CHUNK = 1 << 20


def _is_sha256(value) -> bool:
    return isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value) is not None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_class_list(value) -> bool:
    """A list of at least one distinct, non-empty string."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(name, str) and name for name in value)
        and len(set(value)) == len(value)
    )


def is_hashes(value) -> bool:
    return isinstance(value, dict) and all(_is_sha256(v) for v in value.values())


def _is_data_files(value) -> bool:
    return (
        isinstance(value, dict)
        and is_hashes(value.get("train"))
        and (value.get("test") is None or is_hashes(value["test"]))
    )


def _is_decisions(value) -> bool:
    """`fit`'s decisions: `{"flip": {"flip": true, "reason": ...}, ...}`, each one an object."""
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


def _optional(check):
    return lambda value: value is None or check(value)


def _instance(kind):
    return lambda value: isinstance(value, kind)


# Every key keras_ft writes into run.json: (check, what is expected, required).
# Keys written later than format 2 are not listed, and are ignored when read.
RECORD_SCHEMA = {
    "format_version": (_is_int, "an int", True),
    "keras_ft_version": (_instance(str), "a string", True),
    "seed": (_is_int, "an int", True),
    "deterministic": (_instance(bool), "true or false", True),
    "class_names": (is_class_list, "a list of distinct class-name strings", True),
    "data": (_optional(_instance(dict)), "an object or null", True),
    "model": (_instance(dict), "an object", True),
    "preprocessing": (_instance(str), "a string", True),
    "backbone": (_optional(_instance(dict)), "an object or null", False),
    "training": (_optional(_instance(dict)), "an object or null", True),
    "started": (_instance(str), "a string", False),
    "finished": (_instance(str), "a string", False),
    "train_seconds": (_is_number, "a number", False),
    "command": (_instance(list), "a list", False),
    "environment": (_instance(dict), "an object", True),
    "reproducibility": (_instance(str), "a string", True),
    "weights_sha256": (_is_sha256, "a SHA-256 (64 lowercase hex digits)", True),
    "backbone_weights_sha256": (_optional(_is_sha256), "a SHA-256 or null", False),
    "distribution": (_instance(dict), "an object", False),
    "data_fingerprint": (_instance(dict), "an object", False),
    "data_files": (_is_data_files, "an object of SHA-256s by path, per split", False),
    "skipped_files": (_instance(list), "a list", False),
    "image_counts": (_instance(dict), "an object", False),
    "test_accuracy": (_is_number, "a number", False),
    "advice": (_instance(list), "a list", False),
    "decisions": (_is_decisions, "an object of objects, one per decision", False),
    "recipe": (_optional(_instance(dict)), "an object or null", False),
    "manifest": (is_hashes, "an object of SHA-256s by relative path", True),
    "signature": (_is_sha256, "an HMAC-SHA256 (64 lowercase hex digits)", False),
}


def short_json(value, limit: int = 40) -> str:
    """`value` as one line of JSON, cut to `limit` characters, for a message."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_record(record, path) -> None:
    """Check a parsed `run.json` against `RECORD_SCHEMA`.

    Args:
        record: the parsed JSON.
        path: the `run.json` path, for the message.

    Raises:
        KerasFTError: naming the first key that is missing or of the wrong type.
    """
    if not isinstance(record, dict):
        raise KerasFTError(
            f"'{path}' is damaged: expected a JSON object, received {type(record).__name__}. "
            + _RESTORE
        )
    for key, (check, expected, required) in RECORD_SCHEMA.items():
        if key not in record:
            if required:
                raise KerasFTError(f"'{path}' is damaged: '{key}' is missing. " + _RESTORE)
        elif not check(record[key]):
            raise KerasFTError(
                f"'{path}' is damaged: '{key}' should be {expected}, received "
                f"{short_json(record[key])}. " + _RESTORE
            )


def _open_file(path: Path) -> int:
    """Open a regular file for reading, refusing (never following) a symbolic link."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise KerasFTError(
            f"Cannot read '{path}': {error.strerror}. It is a symbolic link, or unreadable. "
            + _RESTORE
        ) from None


def _copy_hashing(source: Path, destination: Path | None) -> str:
    """SHA-256 of `source`'s content, also written to `destination` if given."""
    digest = hashlib.sha256()
    with os.fdopen(_open_file(source), "rb") as reader:
        writer = destination.open("xb") if destination is not None else None
        try:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                if writer is not None:
                    writer.write(chunk)
        finally:
            if writer is not None:
                writer.close()
    return digest.hexdigest()


# A run trained with --overwrite into a finished run's folder keeps its checkpoints
# there until its own save replaces the folder: training state, not part of the run,
# and never read by load, predict, evaluate, export or reproduce.


def checkpoint_dir(run_dir) -> Path:
    """Where a run trained into `run_dir` keeps its checkpoints until its save replaces them."""
    return Path(run_dir) / TRAINING_STATE


def file_manifest(run_dir) -> dict[str, str]:
    """SHA-256 of every file of `run_dir` but its top-level `run.json` and `checkpoints/`.

    Args:
        run_dir: a run directory (or its staging folder, while it is saved).

    Returns:
        `{relative POSIX path: SHA-256}`, sorted by path.

    Raises:
        KerasFTError: for a symbolic link anywhere in `run_dir` (links are
            refused, never followed) or anything that is not a file or folder.
    """
    root = Path(run_dir)
    hashes = {}
    for folder, dirs, files in os.walk(root):  # does not descend into linked folders
        if (
            Path(folder) == root
            and TRAINING_STATE in dirs
            and not os.path.islink(root / TRAINING_STATE)
        ):
            dirs.remove(TRAINING_STATE)  # a new run's checkpoints, while it trains here
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise KerasFTError(
                    f"'{path}' is a symbolic link. keras_ft refuses links in a run directory "
                    "(it would read whatever they point to). " + _RESTORE
                )
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise KerasFTError(f"'{path}' is not a regular file. " + _RESTORE)
            relpath = path.relative_to(root).as_posix()
            if relpath != "run.json":
                hashes[relpath] = _copy_hashing(path, None)
    return dict(sorted(hashes.items()))


def check_manifest(run_dir, manifest: dict[str, str]) -> None:
    """Refuse `run_dir` if any file was added, removed or changed since `manifest`.

    Raises:
        KerasFTError: one line naming the files (the first five of each kind).
    """
    from keras_ft.runs.reproducibility import compare_files  # imports TensorFlow: only here

    changes = compare_files(manifest, file_manifest(run_dir))
    if any(changes.values()):
        parts = []
        for kind in ("changed", "added", "removed"):
            paths = changes[kind]
            more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
            if paths:
                parts.append(f"{kind}: {', '.join(paths[:5])}{more}")
        raise KerasFTError(
            f"'{run_dir}' is not the run directory that was saved ({'; '.join(parts)}; "
            "compared with the manifest in run.json). " + _RESTORE
        )


def copy_verified(run_dir, folder: str, destination, manifest: dict[str, str]) -> None:
    """Copy the manifest's files under `run_dir/folder/` into `destination`, checking each.

    Only files the manifest lists are copied, symbolic links are refused
    (never followed), and each file's SHA-256 is checked on the bytes copied,
    so the copy is what was saved even if the source changed after it was
    verified.

    Raises:
        KerasFTError: for a link or a file whose content differs from the manifest.
    """
    prefix = folder.rstrip("/") + "/"
    destination = Path(destination)
    destination.mkdir()
    for relpath in manifest:
        if relpath.startswith(prefix):
            target = destination / relpath[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_verified_file(run_dir, relpath, target, manifest)


def copy_verified_file(run_dir, relpath: str, destination, manifest: dict[str, str]) -> None:
    """Copy `run_dir/relpath` to a new file `destination`, checking the bytes copied.

    What is then read from `destination` is what the manifest lists, even if
    the run directory's file changes after it was verified.

    Raises:
        KerasFTError: for a link, or a content whose SHA-256 differs from the manifest.
    """
    source = Path(run_dir) / relpath
    if _copy_hashing(source, Path(destination)) != manifest[relpath]:
        raise KerasFTError(
            f"'{source}' changed while it was read: its SHA-256 differs from the manifest "
            "in run.json. " + _RESTORE
        )


def signing_key(key: bytes | str | None = None, key_file=None) -> bytes | None:
    """The HMAC key: `key`, else `key_file`'s contents, else `$KERAS_FT_SIGNING_KEY`, else None.

    A key file's trailing newline is not part of the key (`echo secret > key`
    works); an unset or empty `KERAS_FT_SIGNING_KEY` means no key.

    Raises:
        KerasFTError: for an unreadable or empty key file.
    """
    if key is not None:
        key = key.encode() if isinstance(key, str) else bytes(key)
        if not key:
            raise KerasFTError("Invalid `signing_key`: expected a non-empty key, received ''.")
        return key
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().rstrip(b"\r\n")
        except OSError as error:
            raise KerasFTError(
                f"Cannot read --signing-key-file '{key_file}': {error.strerror}. Pass the "
                "path of a file that holds the key."
            ) from None
        if not key:
            raise KerasFTError(
                f"--signing-key-file '{key_file}' is empty. Write the key into it, or leave "
                "the flag out."
            )
        return key
    return os.environ.get(SIGNING_KEY_ENV, "").encode() or None


def signature(record: dict, key: bytes) -> str:
    """HMAC-SHA256 of `record`, `run.json` without its `signature` key, in canonical form.

    The canonical form is `json.dumps(record, sort_keys=True,
    separators=(",", ":"), ensure_ascii=True)`, UTF-8 encoded: independent of
    the indentation and key order of the file, so anyone can recompute it.
    """
    body = {k: v for k, v in record.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def seal(record: dict, run_dir, key: bytes | None) -> dict:
    """`record` as `run.json` will hold it: with `run_dir`'s manifest, signed if `key`."""
    record = json.loads(json.dumps(record))  # the values a reader will parse back
    record["manifest"] = file_manifest(run_dir)
    if key is not None:
        record["signature"] = signature(record, key)
    return record


def check_signature(record: dict, path, key: bytes | None) -> None:
    """With a `key`, refuse an unsigned or wrongly signed record; without one, check nothing.

    Args:
        record: the parsed `run.json`, schema-checked.
        path: the `run.json` path, for the message.
        key: the signing key, or None.
    """
    if key is None:
        return
    if "signature" not in record:
        raise KerasFTError(
            f"'{path}' is not signed, but a signing key was given ({SIGNING_KEY_ENV} or "
            "--signing-key-file), so the run cannot be authenticated. Use a run saved with "
            "the key, or give no key to check the file hashes only."
        )
    if not hmac.compare_digest(record["signature"], signature(record, key)):
        raise KerasFTError(
            f"The signature in '{path}' does not match: run.json was changed after the run "
            "was saved, or it was signed with another key. Restore the run directory from "
            "a copy, or check the key."
        )
