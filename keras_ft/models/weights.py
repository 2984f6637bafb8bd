"""Loading a weights file into a backbone, refusing one that does not fit it exactly."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from keras_ft.utils.errors import KerasFTError

if TYPE_CHECKING:  # Keras (and TensorFlow) are imported only to build a backbone
    import keras


def load_backbone_weights(model: keras.Model, path: Path, name: str) -> None:
    """Load `path` into `model`, refusing a file that does not match it exactly.

    Keras only warns when a file lacks some of the model's layers; here any
    such warning is an error, so a backbone never trains half-initialised.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(path))
            problem = next(
                (
                    str(w.message)
                    for w in caught
                    if "load" in str(w.message).lower() or "skipping" in str(w.message).lower()
                ),
                None,
            )
        except Exception as error:  # Keras raises ValueError, KeyError or OSError here.
            problem = str(error)
    if problem:
        raise KerasFTError(
            f"Weights file '{path}' does not fit backbone '{name}' built with "
            f"include_top=False ({problem.splitlines()[0].split('. ')[0].rstrip(':.')}). "
            "Pass a file saved by "
            "`backbone.save_weights('x.weights.h5')` from the same backbone, or "
            "weights='imagenet' / weights=None."
        )
