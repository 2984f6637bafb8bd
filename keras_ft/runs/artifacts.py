"""The run directory: written atomically, loaded safely, exported for serving.

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
import tempfile
import uuid
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from keras_ft.utils.version import __version__
from keras_ft.models.backbones import is_registered, not_registered
from keras_ft.config import to_dict
from keras_ft.data.decode import pil_to_rgb
from keras_ft.data.folder import DATASET
from keras_ft.data.pipeline import decode_and_resize, read_rgb, resize
from keras_ft.utils.errors import KerasFTError
from keras_ft.runs.manifest import (
    check_manifest,
    check_record,
    check_signature,
    copy_verified,
    copy_verified_file,
    is_class_list,
    seal,
    short_json,
)
from keras_ft.runs.manifest import signing_key as _signing_key
from keras_ft.runs.output import check_destination, check_output, write_failed
from keras_ft.runs.report import write_report
from keras_ft.runs.reproducibility import environment, fingerprint, guarantee, weights_sha256

# 2: run.json holds a manifest of every file (format 1 runs cannot be verified, so not read).
FORMAT_VERSION = 2
RUN_FILES = ("model.keras", "class_names.json", "history.csv", "run.json")
# How a SavedModel is checked against the run's model.keras (see `check_saved_model`).
SERVING_CHECK_IMAGES = 8
SERVING_TOLERANCE = 1e-4
_RESTORE = "Restore the run directory from a copy, or re-create the run."
# A TF Serving version folder: ASCII digits (str.isdigit() also takes '²', which int() refuses).
_VERSION = re.compile("[0-9]+")


def export_saved_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Export `model` as a SavedModel with three signatures.

    `serving_default` takes `images`, a float32 batch `(N, H, W, 3)` of 0-255
    RGB pixels; `serving_uint8` the same as uint8; `serving_bytes` takes
    `images`, a `tf.string` batch of encoded JPEG/PNG/GIF/BMP files, and
    decodes (with TensorFlow's decoders) and resizes them inside the graph.
    All return `probabilities`, `(N, num_classes)`.
    """
    height, width = model.input_shape[1:3]
    archive = keras.export.ExportArchive()
    archive.track(model)

    # One traced function: the other two signatures call it, so the model's graph is
    # traced and stored once (exporting takes about a quarter less time).
    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, "images")])
    def serve(images):
        return {"probabilities": model(images, training=False)}

    def serve_bytes(images):
        decoded = tf.map_fn(
            lambda contents: tf.cast(decode_and_resize(contents, (height, width)), tf.float32),
            images,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
        )
        return serve(decoded)

    archive.add_endpoint("serving_default", serve)
    archive.add_endpoint(
        "serving_uint8",
        lambda images: serve(tf.cast(images, tf.float32)),
        [tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")],
    )
    archive.add_endpoint(
        "serving_bytes", serve_bytes, [tf.TensorSpec([None], tf.string, name="images")]
    )
    archive.write_out(str(path), verbose=False)


def check_saved_model(path, model: keras.Model, run_dir) -> None:
    """Refuse a run's SavedModel (or a copy of it at `path`) that does not compute `model`.

    Each signature runs on `SERVING_CHECK_IMAGES` seeded random images (for
    `serving_bytes`, encoded as PNG) and must give `model`'s probabilities
    within `SERVING_TOLERANCE`. The manifest proves the files are the ones
    saved; without a signing key it can be rewritten, so only this proves the
    SavedModel is the run's model.keras.

    Raises:
        KerasFTError: naming the signature that differs, or why it cannot run.
    """
    height, width = model.input_shape[1:3]
    shape = (SERVING_CHECK_IMAGES, height, width, 3)
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    expected = np.asarray(model.predict_on_batch(pixels.astype(np.float32)))
    inputs = {
        "serving_default": tf.constant(pixels, tf.float32),
        "serving_uint8": tf.constant(pixels),
        "serving_bytes": tf.stack([tf.io.encode_png(image) for image in pixels]),
    }
    mismatch = f"'{Path(run_dir) / 'saved_model'}' does not match '{Path(run_dir) / 'model.keras'}'"
    try:
        signatures = tf.saved_model.load(str(path)).signatures
        served = {
            name: signatures[name](images=x)["probabilities"].numpy() for name, x in inputs.items()
        }
    except Exception as error:  # other variables, a missing signature: loading fails many ways
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        raise KerasFTError(f"{mismatch}: it cannot be run ({reason}). " + _RESTORE) from None
    for name, probabilities in served.items():
        if probabilities.shape != expected.shape:
            raise KerasFTError(
                f"{mismatch}: its {name} signature gives probabilities of shape "
                f"{probabilities.shape}, the model {expected.shape}. " + _RESTORE
            )
        difference = float(np.abs(probabilities - expected).max())
        if difference > SERVING_TOLERANCE:
            raise KerasFTError(
                f"{mismatch}: its {name} signature's probabilities differ from the model's by up "
                f"to {difference:.3g} on {len(pixels)} seeded random images (at most "
                f"{SERVING_TOLERANCE:g} allowed). " + _RESTORE
            )


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
    key = _signing_key(signing_key)
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
        "data": to_dict(tuner.data_config) if tuner.data_config else None,
        "model": to_dict(tuner.model_config),
        "preprocessing": tuner.preprocessing,
        # What built the backbone: `reproduce` rebuilds it by name; None for a keras.Model.
        "backbone": tuner.backbone_spec.describe() if tuner.backbone_spec else None,
        "training": to_dict(tuner.training_config) if tuner.training_config else None,
        **tuner.record,
        "environment": environment(),
        "reproducibility": guarantee(distribution.name, distribution.replicas),
        "weights_sha256": weights_sha256(tuner.model),
        "backbone_weights_sha256": tuner.backbone_weights_sha256,
    }
    if tuner.training_config is not None:
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


def read_record(path) -> dict:
    """Read `path/run.json` and check its schema; refuse what is not a run directory."""
    run_dir = Path(path)
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    left = sorted(run_dir.parent.glob(f".{run_dir.name}.old-*"))
    if not run_dir.exists() and left:
        raise KerasFTError(
            f"'{run_dir}' does not exist: a save into it was killed after moving the previous "
            f"run aside, to '{left[-1]}'. Rename that folder to '{run_dir.name}' to use it."
        )
    if not run_dir.is_dir() or missing:
        raise KerasFTError(
            f"'{run_dir}' is not a keras_ft run directory (missing: "
            f"{', '.join(missing) if run_dir.is_dir() else 'the directory itself'}). "
            "Pass a directory written by `keras-ft train --output` or `FineTuner.save`."
        )
    path = run_dir / "run.json"
    record = _read_json(path)
    version = record.get("format_version") if isinstance(record, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise KerasFTError(
            f"'{run_dir}' has run-directory format {version!r}; this keras_ft "
            f"{__version__} reads format {FORMAT_VERSION}. Upgrade keras-ft."
        )
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise KerasFTError(
            f"'{run_dir}' has run-directory format {version}, which records no file manifest, "
            f"so this keras_ft cannot verify it. Re-create the run with keras-ft {__version__} "
            f"(format {FORMAT_VERSION})."
        )
    check_record(record, path)
    return record


def _read_json(path: Path):
    """Parse a JSON record of a run directory; refuse undecodable text in one line."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else str(error)
        raise KerasFTError(
            f"'{path}' is damaged: not valid JSON ({reason}). Restore the run directory from "
            "a copy, or re-create the run with `keras-ft train`."
        ) from None


def verify_run(path, signing_key=None) -> tuple[dict, tuple[str, ...]]:
    """Check a run directory before anything in it is used; return its record and classes.

    Checks, in order: `run.json`'s schema; its signature when a key is given
    (see `keras_ft.runs.manifest.signature`); the SHA-256 of every file against
    the manifest (links refused); `class_names.json` against the record.
    The model itself is checked by `load`.

    Args:
        path: a run directory.
        signing_key: HMAC key (bytes or str); `None` takes `$KERAS_FT_SIGNING_KEY`
            when set. With a key, an unsigned or wrongly signed run is refused;
            without one, a signed run is checked by its hashes only.

    Returns:
        `(record, class_names)`.
    """
    run_dir = Path(path)
    record = read_record(run_dir)
    check_signature(record, run_dir / "run.json", _signing_key(signing_key))
    check_manifest(run_dir, record["manifest"])
    names_path = run_dir / "class_names.json"
    class_names = _read_json(names_path)
    if not is_class_list(class_names):
        raise KerasFTError(
            f"'{names_path}' is damaged: expected a JSON list of distinct class-name strings, "
            f"received {short_json(class_names)}. Restore the run directory from a copy."
        )
    if class_names != record["class_names"]:
        raise KerasFTError(
            f"'{names_path}' ({short_json(class_names)}) does not match 'class_names' in "
            f"'{run_dir / 'run.json'}' ({short_json(record['class_names'])}). Restore the "
            "run directory from a copy."
        )
    return record, tuple(class_names)


def _unknown_class(model_path: Path, error: str, record: dict) -> str:
    """The message for a model.keras holding a layer class this process has not imported."""
    found = re.search(r"Could not locate class '([^']+)'", error)
    missing = found.group(1).split(">")[-1] if found else "(unnamed)"
    name = record["model"].get("backbone")
    if record.get("backbone") and not is_registered(name):  # a backbone registered by the user
        why = not_registered(name, record["backbone"])
    else:
        why = (
            "Import the module that defines it (with @keras.saving.register_keras_serializable) "
            "before loading."
        )
    return f"Cannot load '{model_path}': it uses the layer class {missing}, unknown here. {why}"


def _load_model(path: Path, model_path: Path, record: dict) -> keras.Model:
    """Load the model at `path`, a verified copy of the run's `model_path`, in safe mode."""
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # a truncated or altered zip fails in many ways
        if "safe_mode" in str(error):  # Keras refuses to deserialise Python code
            raise KerasFTError(
                f"'{model_path}' contains code that keras_ft will not run (a Python lambda "
                "or function, which Keras's safe mode refuses to load). Rebuild the model "
                "without Lambda layers, or use a run directory you trust."
            ) from None
        if "Could not locate class" in str(error):  # a layer class defined outside Keras
            raise KerasFTError(_unknown_class(model_path, str(error), record)) from None
        raise KerasFTError(
            f"Cannot load '{model_path}': {str(error).splitlines()[0]}. The file is damaged; "
            "re-create the run or restore it from a copy."
        ) from None


class Predictor:
    """A loaded run: predicts labels for image files, arrays or PIL images."""

    def __init__(self, model: keras.Model, class_names, record: dict):
        self.model = model
        self.class_names = tuple(class_names)
        self.record = record
        self.image_size = tuple(model.input_shape[1:3])

    def _as_batch(self, images) -> np.ndarray:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            items = list(images)
        elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            items = [images]
        else:
            items = list(images)
        arrays = []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                try:
                    item = read_rgb(item)
                except Image.DecompressionBombError as error:
                    raise KerasFTError(
                        f"Cannot read image '{item}': too large to decode safely ({error})."
                    ) from None
                except Exception as error:  # any decoder failure: this image cannot be used
                    text = str(error) or type(error).__name__
                    raise KerasFTError(f"Cannot read image '{item}': {text}.") from None
            elif isinstance(item, Image.Image):
                item = pil_to_rgb(item)
            array = np.asarray(item)
            if array.ndim != 3 or array.shape[-1] != 3:
                raise KerasFTError(
                    f"Expected an RGB image array of shape (height, width, 3), received shape "
                    f"{array.shape}. Convert grayscale or RGBA images to RGB first."
                )
            if array.shape[:2] != self.image_size:
                array = resize(array, self.image_size).numpy()
            arrays.append(array.astype(np.float32))
        return np.stack(arrays)

    def predict_proba(self, images, batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """Class probabilities, `(N, num_classes)`.

        Batch by batch through Keras' compiled predict function, as in
        evaluation, so a loaded run gives bitwise the probabilities the
        trained model gave. `tta`: the mean over test-time views (shifts, and
        the mirror image or the quarter turns if the run trained with them; see
        `keras_ft.runs.evaluation.predict_views`).
        """
        from keras_ft.runs.evaluation import predict_views, trained_symmetries

        record = self.record
        symmetries = trained_symmetries(record.get("data") or {}, record.get("decisions", {}))
        batch = self._as_batch(images)
        return np.concatenate(
            [
                predict_views(self.model, batch[i : i + batch_size], tta, symmetries)
                for i in range(0, len(batch), batch_size)
            ]
        )

    def predict(self, images, top_k: int = 3, tta: bool = False) -> list[dict]:
        """Predict each image's label.

        Args:
            images: a path, a PIL image, an `(H, W, 3)` array, an `(N, H, W, 3)`
                array, or a list of any of those. Arrays hold 0-255 RGB pixels;
                other sizes are resized.
            top_k: how many labels to list per image.
            tta: test-time augmentation (see `predict_proba`).

        An image file that cannot be read or decoded raises `KerasFTError`
        naming it; so does one of more than twice Pillow's
        `Image.MAX_IMAGE_PIXELS` (a decompression bomb). Between one and two
        times that limit it is read, with Pillow's `DecompressionBombWarning`.

        Returns:
            One dict per image: `label`, `probability` and `top_k`, a list of
            `{"label", "probability"}` in decreasing probability.
        """
        results = []
        for row in self.predict_proba(images, tta=tta):
            order = np.argsort(-row, kind="stable")[:top_k]
            top = [{"label": self.class_names[i], "probability": float(row[i])} for i in order]
            results.append(
                {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
            )
        return results


def load(path, signing_key=None) -> Predictor:
    """Load a run directory for prediction, checking it is complete and unchanged.

    Every file is checked against the manifest in `run.json` (see
    `verify_run`), then the model is loaded in Keras's safe mode from a
    private copy of `model.keras`, checked again as it is copied, and its
    weights checked against their SHA-256.

    Args:
        path: a directory written by `FineTuner.save` or `keras-ft train`.
        signing_key: HMAC key (bytes or str) the run was signed with; `None`
            takes `$KERAS_FT_SIGNING_KEY` when set.

    Returns:
        A `Predictor`.
    """
    run_dir = Path(path)
    record, class_names = verify_run(run_dir, signing_key)
    written = record.get("environment", {})
    for library, current in (("tensorflow", tf.__version__), ("keras", keras.__version__)):
        if written.get(library) and written[library] != current:
            warnings.warn(
                f"'{run_dir}' was written with {library} {written[library]}; this is "
                f"{current}. Predictions may differ slightly.",
                stacklevel=2,
            )
    import keras_ft.models.classifier  # noqa: F401  registers `Preprocess`, which older model.keras files hold

    model_path = run_dir / "model.keras"
    # Keras reads a private copy made from the bytes checked against the manifest, not the
    # run's file again: a model.keras swapped after verify_run hashed it is never loaded.
    with tempfile.TemporaryDirectory() as scratch:
        verified = Path(scratch) / "model.keras"
        copy_verified_file(run_dir, "model.keras", verified, record["manifest"])
        model = _load_model(verified, model_path, record)
    if weights_sha256(model) != record.get("weights_sha256"):
        raise KerasFTError(
            f"The weights in '{model_path}' do not match 'weights_sha256' in "
            f"'{run_dir / 'run.json'}': one of them was changed after the run was saved. "
            "Restore the run directory from a copy, or re-create the run."
        )
    outputs = model.output_shape[-1]
    if len(class_names) != outputs:
        raise KerasFTError(
            f"'{run_dir / 'class_names.json'}' lists {len(class_names)} class names for a "
            f"model with {outputs} outputs. Restore the run directory from a copy."
        )
    return Predictor(model, class_names, record)
