"""The run directory: written atomically, and its SavedModel copied out for TF Serving.

`save_run` writes a fitted `FineTuner`'s run directory into a hidden sibling
and swaps it into place; `export_for_serving` copies a verified run's
SavedModel into a TF Serving layout. Reading a run is `keras_ft.runs.loading`.

A run directory holds:

    model.keras         full model (trainable, for resuming and further training)
    saved_model/        TF SavedModel for serving, preprocessing inside, no augmentation
    class_names.json    the class order
    history.csv         per-epoch metrics of both phases
    metrics.json        held-out test metrics (when a test set was given)
    run.json            configuration, seed, versions, data fingerprints, weights SHA-256,
                        the SHA-256 of every other file (the manifest), optionally signed
    report/             curves, confusion matrix, per-class table, mistakes, correct, report.html
    logs/               TensorBoard logs of both phases (when the fit wrote them)
"""

from __future__ import annotations

import csv
import ctypes
import errno
import glob
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

from keras_ft.data.folder import DATASET
from keras_ft.runs import manifest
from keras_ft.runs.loading import FORMAT_VERSION, load
from keras_ft.runs.manifest import copy_verified, seal
from keras_ft.runs.output import check_destination, check_output, write_failed
from keras_ft.runs.report import write_report
from keras_ft.runs.reproducibility import environment, fingerprint, guarantee, weights_sha256
from keras_ft.runs.serving import check_saved_model, export_saved_model
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.version import __version__

# A TF Serving version folder: ASCII digits (str.isdigit() also takes '²', which int() refuses).
_VERSION = re.compile("[0-9]+")


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")


def _write_history(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(key for row in rows for key in row)) or ["epoch", "phase"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def save_run(tuner, path, overwrite: bool = False, signing_key=None) -> str:
    """Write `tuner`'s run directory at `path`, atomically.

    Everything is written to a hidden temporary sibling, then renamed into
    place, so an interrupted save leaves the previous directory (or nothing)
    at `path`, never a half-written one.

    Args:
        tuner: a fitted `FineTuner`.
        path: the run directory to create.
        overwrite: replace an existing directory at `path`.
        signing_key: sign `run.json` with this HMAC key (bytes or str); `None`
            takes `$KERAS_FT_SIGNING_KEY` when set (see `keras_ft.runs.manifest`).

    Returns:
        The path written.
    """
    target = Path(os.path.realpath(path))  # a link to a folder: write into its target
    key = manifest.signing_key(signing_key)
    if target.exists() and not overwrite:
        raise KerasFTError(
            f"Run directory '{path}' already exists. Choose another --output, or pass "
            "overwrite=True (--overwrite) to replace it."
        )
    # Never onto or inside the data; an existing folder only if keras_ft wrote all of it.
    config = tuner.data_config
    data_dirs = () if config is None or config.directory == DATASET else (config.directory,)
    check_output(path, (*data_dirs, config and config.test_dir), overwrite=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(target)
    staging = _sibling(target, "partial")
    staging.mkdir()
    try:
        tuner.model.save(staging / "model.keras")
        export_saved_model(tuner.model, staging / "saved_model")
        _write_json(staging / "class_names.json", list(tuner.class_names))
        _write_history(staging / "history.csv", tuner.history.rows)
        if tuner.metrics is not None:
            _write_json(staging / "metrics.json", tuner.metrics)
        write_report(tuner, staging / "report")
        if getattr(tuner, "tensorboard_dir", None) and os.path.isdir(tuner.tensorboard_dir):
            shutil.copytree(tuner.tensorboard_dir, staging / "logs")
        _write_json(staging / "run.json", seal(run_record(tuner), staging, key))  # last
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return str(target)


def export_for_serving(run_dir, output, version: int | None = None, signing_key=None) -> Path:
    """Copy a run's SavedModel into a TF Serving layout, `output/<version>/`.

    Args:
        run_dir: a run directory; it is verified first, as `load` does.
        output: the model base path TF Serving watches.
        version: the version number; `None` takes one more than the highest there.
        signing_key: as for `load`.

    Returns:
        The version directory written: the files the manifest lists under
        `saved_model/`, each checked again as it is copied, no link followed,
        and the copy checked against `model.keras` (see `check_saved_model`).
    """
    check_destination(output, "OUTPUT", run_dirs=(run_dir,))  # never into a run
    predictor = load(run_dir, signing_key=signing_key)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise KerasFTError(f"Export path '{output}' exists and is not a directory.")
    existing = [int(p.name) for p in output.glob("*") if p.is_dir() and _VERSION.fullmatch(p.name)]
    version = max(existing, default=0) + 1 if version is None else version
    if not isinstance(version, int) or version < 1:
        raise KerasFTError(f"Invalid `version`: expected an int >= 1, received {version!r}.")
    target = output / str(version)
    if target.exists():
        raise KerasFTError(
            f"'{target}' already exists. TF Serving versions are immutable: pass another "
            "--version, or leave it out to use the next free number."
        )
    staging = output / f".{version}.partial-{uuid.uuid4().hex[:8]}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        copy_verified(run_dir, "saved_model", staging, predictor.record["manifest"])
        check_saved_model(staging, predictor.model, run_dir)
        os.replace(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):  # a full or read-only disk
            raise write_failed(output, "OUTPUT", error) from None
        raise
    return target


def _sibling(target: Path, kind: str) -> Path:
    """A hidden sibling of `target` named for this process: `.NAME.KIND-PID-RANDOM`."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_stale_siblings(target: Path) -> None:
    """Delete what saves of `target` killed mid-way left: siblings of processes now gone.

    Only names `_sibling` writes (`.NAME.partial-PID-HEX8`, `.NAME.old-PID-HEX8`)
    are candidates; anything else beside `target` is left alone.
    """
    ours = re.compile(rf"\.{re.escape(target.name)}\.(partial|old)-(\d+)-[0-9a-f]{{8}}")
    for sibling in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        match = ours.fullmatch(sibling.name)
        if match and not sibling.is_symlink() and not _alive(int(match.group(2))):
            _remove(sibling)


def _remove(folder: Path) -> None:
    """Delete a folder keras_ft wrote; a failure is a warning naming it, never silent."""
    try:
        shutil.rmtree(folder)
    except OSError as error:
        warnings.warn(
            f"Could not remove '{folder}' ({error.strerror or error}); delete it by hand.",
            stacklevel=3,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`).

    Returns:
        False where the system or filesystem cannot (the caller falls back).
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, bytes(first), at_fdcwd, bytes(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _replace(staging: Path, target: Path) -> None:
    """Put `staging` at `target`; a previous `target` is swapped out, then deleted.

    Where the system can swap two folders atomically, `target` is at every
    moment either the previous run or the new one, complete. Elsewhere the
    previous run is renamed aside first; a kill between the two renames
    leaves it in `.NAME.old-*`, which `load` points to and the next save removes.
    """
    if not target.exists():
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        _remove(staging)  # it now holds the previous run
        return
    old = _sibling(target, "old")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)  # put the previous run back
        raise
    _remove(old)


def run_record(tuner) -> dict:
    """The JSON run record of a fitted `FineTuner`."""
    data, distribution = tuner.data, tuner.distribution
    record = {
        "format_version": FORMAT_VERSION,
        "keras_ft_version": __version__,
        "seed": tuner.seed,
        "deterministic": tuner.deterministic,
        "class_names": list(tuner.class_names),
        # The configuration (data, model, training, recipe), as `reproduce` reads it back.
        **tuner.run_config.record(),
        "preprocessing": tuner.preprocessing,
        # What built the backbone: `reproduce` rebuilds it by name; None for a keras.Model.
        "backbone": tuner.backbone_spec.describe() if tuner.backbone_spec else None,
        **tuner.record,
        "environment": environment(),
        "reproducibility": guarantee(distribution.name, distribution.replicas),
        "weights_sha256": weights_sha256(tuner.model),
        "backbone_weights_sha256": tuner.backbone_weights_sha256,
    }
    record["distribution"] = distribution.describe(
        tuner.data_config.batch_size, tuner.training_config.lr_scaling
    )
    if data is not None:
        hashes = tuner.file_hashes
        record["data_fingerprint"] = {
            "train": fingerprint(hashes["train"]),
            "test": fingerprint(hashes["test"]) if hashes["test"] else None,
        }
        record["data_files"] = hashes
        record["skipped_files"] = data.skipped
        record["image_counts"] = {
            "train": len(data.train_files),
            "validation": len(data.validation_files),
            "test": len(data.test_files),
        }
    if tuner.metrics is not None:
        record["test_accuracy"] = tuner.metrics["accuracy"]
    return record
