"""The run's SavedModel: its three serving signatures, and the check that it is model.keras.

`export_saved_model` writes what `save_run` puts in `saved_model/`;
`check_saved_model` runs each signature of a SavedModel (the run's, or a copy
of it) against the Keras model, before it is served or converted.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_ft.data.pipeline import decode_and_resize
from keras_ft.utils.errors import KerasFTError

# How a SavedModel is checked against the run's model.keras (see `check_saved_model`).
SERVING_CHECK_IMAGES = 8
SERVING_TOLERANCE = 1e-4
_RESTORE = "Restore the run directory from a copy, or re-create the run."


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
