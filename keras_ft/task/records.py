"""What a fit records beside its configuration: the time, the training signature that
checkpoints are checked against, and the linear probe's comparison."""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import datetime, timezone

import numpy as np

from keras_ft.config import to_dict
from keras_ft.training.history import TrainingHistory

FOLDERS = ("directory", "test_dir")  # where the data is, not what it is


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def training_signature(tuner) -> str:
    """A digest of everything that decides `tuner`'s training: configuration and data.

    The data enters by content (the files' hashes), not by where the folders
    are or how their paths were typed.
    """
    data = {k: v for k, v in to_dict(tuner.data_config).items() if k not in FOLDERS}
    described = {
        "replicas": tuner.distribution.replicas,
        "data": data,
        "model": to_dict(tuner.model_config),
        "training": to_dict(tuner.training_config),
        "files": tuner.file_hashes,
        "preprocessing": tuner.preprocessing,
        "seed": tuner.seed,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def compare_with_probe(probe: dict, history: TrainingHistory, stacklevel: int = 3) -> dict:
    """`probe` with the trained validation accuracy added; warn when the training is below it.

    Args:
        probe: `ProbeResult.summary()` of a linear probe on the frozen features.
        history: the finished training's history (its last `val_accuracy`).
        stacklevel: the warning's, pointing at the caller of `FineTuner.fit`.

    Returns:
        The record's `"linear_probe"` entry: the probe's numbers, plus
        `finetuned_validation_accuracy` and `below_probe`.
    """
    accuracies = history.history.get("val_accuracy") or [None]
    finetuned = accuracies[-1]
    # Keras reports accuracy in float32 and the probe's is float64: compared unrounded, the
    # same number of right validation images would read as fine-tuning being below.
    below = finetuned is not None and bool(
        np.float32(finetuned) < np.float32(probe["validation_accuracy"])
    )
    if (history.decisions.fallback or {}).get("kept") == "probe":  # fallback_to_probe
        return {**probe, "finetuned_validation_accuracy": finetuned, "is_the_model": True}
    if below:
        if history.fine_tuned:
            message = (
                f"Fine-tuning reached a validation accuracy of {finetuned:.4f}, below the "
                f"{probe['validation_accuracy']:.4f} of a logistic regression on the frozen "
                "backbone's features: the training hurt what the backbone already knew "
                "(negative transfer). Try unfreezing fewer layers (--unfreeze with a later "
                "layer, or --finetune-epochs 0), a lower --finetune-lr, or"
            )
        else:  # phase 1 alone: a head on the features the probe saw
            message = (
                f"The head reached a validation accuracy of {finetuned:.4f} (no fine-tuning "
                f"ran), below the {probe['validation_accuracy']:.4f} of a logistic regression "
                "on the same frozen features. Train it for more epochs (--head-epochs), or"
            )
        warnings.warn(
            f"{message} keep the linear probe itself as the model (`keras-ft probe`, or "
            "FineTuner(..., head='linear')).",
            stacklevel=stacklevel,
        )
    return {**probe, "finetuned_validation_accuracy": finetuned, "below_probe": below}
