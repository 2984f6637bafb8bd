"""Reading a run directory: verified file by file, its model loaded safely, for prediction.

`verify_run` checks a run directory before anything in it is used (its record,
signature, manifest and class names); `load` then loads the model from a
verified private copy and returns a `Predictor`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from keras_ft.data.decode import pil_to_rgb
from keras_ft.data.pipeline import read_rgb, resize
from keras_ft.models.backbones import is_registered, not_registered
from keras_ft.runs import manifest
from keras_ft.runs.manifest import (
    check_manifest,
    check_record,
    check_signature,
    copy_verified_file,
    is_class_list,
    short_json,
)
from keras_ft.runs.reproducibility import weights_sha256
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.version import __version__

# 2: run.json holds a manifest of every file (format 1 runs cannot be verified, so not read).
FORMAT_VERSION = 2
RUN_FILES = ("model.keras", "class_names.json", "history.csv", "run.json")


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
    check_signature(record, run_dir / "run.json", manifest.signing_key(signing_key))
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

    def read_batch(self, images) -> np.ndarray:
        """Read `images` as one float32 batch, `(N, H, W, 3)` 0-255 RGB at the run's size.

        `images` is what `predict` takes; an image file that cannot be read
        raises `KerasFTError` naming it.
        """
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
        batch = self.read_batch(images)
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
