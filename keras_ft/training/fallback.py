"""After phase 2: keep, of the fine-tuned model and the fallback candidates (the
phase-1 head, the linear probe, weight-space mixes), the one with the lowest
validation loss."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from keras_ft.models.classifier import set_probe
from keras_ft.models.probe import linear_probe
from keras_ft.training.checkpoint import write_atomically
from keras_ft.utils.errors import KerasFTError

PHASE2_START = "phase2-start.npz"  # in the checkpoints folder, for the fallback


def phase2_start(model, trained, validation, checkpoint_dir, chief: bool, resumed: bool):
    """The weights phase 2 starts from and their validation (loss, accuracy), for the fallback.

    Written beside the checkpoints before phase 2's first epoch, and read back
    by a run resumed within phase 2 (or after it), so that its fallback
    compares with the same weights and scores as the uninterrupted run's.
    """
    path = Path(checkpoint_dir) / PHASE2_START if checkpoint_dir else None
    if resumed:
        if path is None or not path.is_file():
            raise KerasFTError(
                f"Cannot resume the fallback: '{path}' (the weights phase 2 started from) is "
                "missing from the checkpoints. Start again without --resume."
            )
        with np.load(path, allow_pickle=False) as arrays:
            weights = [arrays[f"weight_{i}"] for i in range(len(arrays.files) - 1)]
            return weights, tuple(float(score) for score in arrays["scores"])
    weights, scores = model.get_weights(), validation_scores(trained, validation)
    if path is not None and chief:
        arrays = {f"weight_{i}": weight for i, weight in enumerate(weights)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda handle: np.savez(handle, scores=np.array(scores), **arrays))
    return weights, scores


def validation_scores(model: keras.Model, validation) -> tuple[float, float]:
    """`model`'s compiled loss and accuracy on the validation split (as val_loss, val_accuracy)."""
    measured = model.evaluate(validation, verbose=0, return_dict=True)
    return float(measured["loss"]), float(measured["accuracy"])


def fall_back(
    model,
    trained,
    validation,
    head_weights,
    head_scores: tuple,
    candidates: dict,
    probe=None,
    refit=None,
) -> dict:
    """After phase 2: keep, of the candidates, the weights with the lowest validation loss.

    The fine-tuned weights always compete; with `candidates["head"]`, the
    weights phase 2 started from (the phase-1 head); with `candidates["probe"]`,
    the backbone phase 2 started from with `probe` as the head (`set_probe`);
    for each fraction `a` of `candidates["mixes"]`, `a` times the fine-tuned
    weights plus `1 - a` times those phase 2 started from (`mix_weights`).
    A tie keeps the earlier of fine-tuned, head, probe, mixes; a NaN loss
    never wins. A kept probe is fitted again on the training and validation
    features together when `refit` holds them (`frozen_features`' four arrays).

    Returns:
        The decision for the run record: `kept` ("finetune", "head", "probe"
        or "mix", with the fraction as `mix`), the validation losses, the kept
        model's validation accuracy (`kept_val_accuracy`), and `reason` (one
        sentence).
    """
    scores = {"finetune": validation_scores(trained, validation)}
    weights = {"finetune": model.get_weights()}
    if candidates.get("head"):
        scores["head"], weights["head"] = head_scores, head_weights
    if candidates.get("probe"):
        model.set_weights(head_weights)
        set_probe(model, probe)
        scores["probe"] = validation_scores(trained, validation)
        weights["probe"] = model.get_weights()
    mixes = {f"mix {fraction:g}": fraction for fraction in candidates.get("mixes", ())}
    for name, fraction in mixes.items():
        weights[name] = mix_weights(weights["finetune"], head_weights, fraction)
        model.set_weights(weights[name])
        scores[name] = validation_scores(trained, validation)
    losses = {name: loss for name, (loss, _) in scores.items()}
    head_loss = head_scores[0]
    kept = min(losses, key=lambda key: losses[key] if math.isfinite(losses[key]) else math.inf)
    model.set_weights(weights[kept])
    verdicts = {
        "finetune": "kept the fine-tuned weights",
        "head": "fine-tuning did not lower it, so the phase-1 head's weights were restored",
        "probe": "the linear probe on the frozen features is the model (on the backbone "
        "phase 2 started from)",
        **{
            name: f"kept {name}: {a:g} x the fine-tuned weights + {1 - a:g} x those phase 2 "
            "started from"
            for name, a in mixes.items()
        },
    }
    verdict = verdicts[kept]
    measured = f"validation loss {head_loss:.4g} before phase 2, {losses['finetune']:.4g} after it"
    if "probe" in losses:
        measured += f", {losses['probe']:.4g} with the linear probe"
    measured += "".join(f", {losses[name]:.4g} with {name}" for name in mixes)
    decision = {
        "kept": "mix" if kept in mixes else kept,
        "kept_val_accuracy": scores[kept][1],
        "head_val_loss": head_loss,
        "finetune_val_loss": losses["finetune"],
    }
    if "probe" in losses:
        decision["probe_val_loss"] = losses["probe"]
    if mixes:
        decision["mix_val_losses"] = {f"{a:g}": losses[name] for name, a in mixes.items()}
    if kept in mixes:
        decision["mix"] = mixes[kept]
    if kept == "probe" and refit is not None:
        features, labels = np.concatenate(refit[::2]), np.concatenate(refit[1::2])
        set_probe(model, linear_probe(features, labels, num_classes=len(probe.intercept)))
        decision["probe_refit_images"] = len(labels)
        verdict += f", refitted on the {len(labels)} training and validation images"
    return {**decision, "reason": f"{measured}: {verdict}."}


def mix_weights(tuned: list, start: list, fraction: float) -> list:
    """`fraction * tuned + (1 - fraction) * start`, array by array (`get_weights` lists).

    Arrays that are not floating point (a random generator's state) are
    `tuned`'s, and each mix keeps its array's dtype.
    """
    return [
        (fraction * t + (1 - fraction) * s).astype(t.dtype)
        if np.issubdtype(t.dtype, np.floating)
        else t
        for t, s in zip(tuned, start, strict=True)
    ]
