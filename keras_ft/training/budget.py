"""A time budget: the epochs of both phases planned from a few measured training steps.

Before phase 1, `measure` times a few training steps of each phase, and a
forward pass, on the run's own model and batches, then puts every variable back;
`plan_epochs` shortens the configured epochs, in the same proportion for both
phases, where they would not end within the time left. The plan is a decision
(`Decisions.time_budget`), so a resumed or reproduced run replays it instead of
timing again, and trains bitwise as the first run did.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

from keras_ft.models.classifier import freeze_backbone, split_at_features, unfreeze_backbone
from keras_ft.training.lr_find import DEFAULT_STEPS
from keras_ft.training.optimizers import compile_for_phase

TIMED_STEPS = 4  # the first traces the step; the others are timed
MARGIN = 0.9  # of the time left: testing, saving and timing noise take the rest


def measure(model, data, config, batch_size: int, features_cached: bool) -> dict:
    """Seconds of one training step of each phase and of the forward pass of one image.

    The steps run on the run's model, compiled as each phase compiles it, and
    on its training batches; every model variable (weights, BatchNormalization
    statistics, random-generator states) is put back afterwards and the timing
    optimizers are dropped, so training continues as if nothing had run.

    Returns:
        A dict: `head_step` (a phase-1 step: on cached features when
        `features_cached`, else through the frozen backbone), `finetune_step`,
        `forward_image` (inference, per image) and `trace` (the first steps'
        extra time, once per phase).
    """
    saved = [np.array(variable) for variable in model.variables]
    batches = data.train_dataset(0, 1, batch_size).repeat().take(TIMED_STEPS)
    try:
        extractor, head = split_at_features(model)
        freeze_backbone(model)
        images, labels = next(iter(batches))
        forward = _timed(lambda: extractor.predict_on_batch(images), 2)[1] / len(labels)
        if features_cached:
            dummy = np.zeros((batch_size, *extractor.output.shape[1:]), np.float32)
            trained, head_batches = head, [(dummy, np.zeros(batch_size, np.int64))] * TIMED_STEPS
        else:
            trained, head_batches = model, batches
        compile_for_phase(trained, "head", config, data.num_classes, learning_rate=1e-9)
        head_first, head_step = _train_steps(trained, head_batches)
        unfreeze_backbone(model, config.unfreeze, config.train_batchnorm)
        compile_for_phase(model, "finetune", config, data.num_classes, learning_rate=1e-9)
        tune_first, tune_step = _train_steps(model, batches)
    finally:
        freeze_backbone(model)
        for variable, value in zip(model.variables, saved, strict=True):
            variable.assign(value)
    trace = max(0.0, head_first - head_step) + max(0.0, tune_first - tune_step)
    return {
        "head_step": head_step,
        "finetune_step": tune_step,
        "forward_image": forward,
        "trace": trace,
    }


def _train_steps(model, batches) -> tuple[float, float]:
    """(seconds of the first step, median seconds of the others) of `train_on_batch`."""
    times = [_timed(lambda x=x, y=y: model.train_on_batch(x, y), 1)[0] for x, y in batches]
    return times[0], statistics.median(times[1:])


def _timed(call, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `call`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def epoch_seconds(measured: dict, steps: int, images: dict, features_cached: bool) -> dict:
    """Seconds of an epoch of each phase, its validation included, and the one-off costs.

    Args:
        measured: `measure`'s.
        steps: training steps per epoch.
        images: `{"train": n, "validation": n}`.
        features_cached: whether phase 1 trains on cached features (its
            validation then costs next to nothing).
    """
    forward = measured["forward_image"]
    validation = images["validation"] * forward
    return {
        "head": steps * measured["head_step"] + (0.0 if features_cached else validation),
        "finetune": steps * measured["finetune_step"] + validation,
    }


def plan_epochs(seconds_left: float, epochs: dict, epoch_s: dict, fixed_s: float) -> dict:
    """The epochs of each phase that end within `seconds_left`.

    The configured `epochs` (`{"head": n, "finetune": n}`) are kept when they
    fit in `MARGIN` of the time left after the `fixed_s` costs; otherwise both
    are shortened in the same proportion (rounded down; one epoch is kept:
    phase 1's when it had any, else phase 2's).
    """
    usable = seconds_left * MARGIN - fixed_s
    needed = sum(epochs[phase] * epoch_s[phase] for phase in epochs)
    if needed <= usable:
        return dict(epochs)
    share = max(0.0, usable) / needed
    planned = {phase: math.floor(epochs[phase] * share) for phase in epochs}
    kept = "head" if epochs["head"] else "finetune"
    planned[kept] = max(1, planned[kept])
    return planned


def fixed_seconds(measured: dict, config, images: dict, decided: set) -> float:
    """The costs that do not grow with the epochs: tracing, the range tests still to run
    (`"auto"` rates not in `decided`) and the fallback's scoring of its candidates."""
    fixed = measured["trace"]
    for phase, step in (("head", "head_step"), ("finetune", "finetune_step")):
        if getattr(config, f"{phase}_lr") == "auto" and f"{phase}_lr" not in decided:
            fixed += DEFAULT_STEPS * measured[step]
    candidates = 1 + bool(config.fallback_to_head) + bool(config.fallback_to_probe)
    candidates += len(config.fallback_to_mixes)
    if candidates > 1:
        fixed += candidates * images["validation"] * measured["forward_image"]
    return fixed
