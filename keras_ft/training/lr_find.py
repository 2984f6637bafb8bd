"""Learning-rate range test (Smith 2015, fastai's `lr_find`): loss against an exponential sweep.

Train for a few hundred steps while the learning rate grows exponentially
from `start_lr` to `end_lr`, record each batch's loss, then put every model
variable back (weights, BatchNorm statistics, dropout generator states), so
that the sweep leaves no trace on the training that follows.

The suggestion is a tenth of the learning rate where the smoothed loss is
lowest, past the first 10 steps (Smith's rule of thumb: the minimum is
already on the edge of divergence). The steepest descent of the smoothed loss is reported too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import keras
import numpy as np

from keras_ft.config import TrainingConfig
from keras_ft.models.classifier import freeze_backbone, unfreeze_backbone
from keras_ft.training.optimizers import compile_for_phase
from keras_ft.utils.errors import KerasFTError

DEFAULT_STEPS = 200  # the most steps a range test takes (fewer once the loss diverges)
SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (fastai's)
SKIP_START = 10  # the first steps' average rests on few batches: not where the minimum is sought
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum


@dataclass
class LRFinderResult:
    """A learning-rate sweep and what it suggests.

    Attributes:
        phase: `"head"` or `"finetune"`.
        learning_rates: the rate of each step.
        losses: each step's batch loss.
        smoothed: the bias-corrected moving average of `losses`.
        suggestion: a tenth of the rate at the lowest smoothed loss.
        steepest: the rate where the smoothed loss falls fastest (per log-rate).
    """

    phase: str
    learning_rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float = 0.0
    steepest: float = 0.0

    def summary(self) -> dict:
        """The suggestion, the steepest point and the sweep's range, JSON-ready."""
        return {
            "phase": self.phase,
            "suggestion": self.suggestion,
            "steepest": self.steepest,
            "steps": len(self.losses),
            "range": [self.learning_rates[0], self.learning_rates[-1]],
            "rule": "a tenth of the learning rate at the lowest smoothed loss",
        }

    def plot(self, path) -> None:
        """Write the loss against the learning rate (log axis) as a PNG at `path`."""
        from keras_ft.utils.plots import PLOTS_HINT, matplotlib_figure, png

        Figure = matplotlib_figure()
        if Figure is None:
            raise KerasFTError(f"Cannot write '{path}'. {PLOTS_HINT}.")
        figure = Figure(figsize=(7, 4))
        axis = figure.subplots()
        axis.plot(self.learning_rates, self.losses, alpha=0.3, label="batch loss")
        axis.plot(self.learning_rates, self.smoothed, label="smoothed")
        for name, rate, style in (
            ("suggestion", self.suggestion, "--"),
            ("steepest", self.steepest, ":"),
        ):
            axis.axvline(rate, color="grey", linestyle=style, label=f"{name} {rate:.2g}")
        axis.set_xscale("log")
        axis.set_xlabel(f"learning rate ({self.phase} phase)")
        axis.set_ylabel("loss")
        low, high = min(self.smoothed), max(self.smoothed[: max(2, len(self.smoothed) // 2)])
        axis.set_ylim(low - 0.1 * abs(low), high + 0.5 * (high - low) + 1e-6)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        with open(path, "wb") as handle:
            handle.write(png(figure))


def sweep(
    model: keras.Model,
    data,
    phase: str,
    config: TrainingConfig,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = DEFAULT_STEPS,
    batch_size: int | None = None,
) -> LRFinderResult:
    """Run the range test for `phase` on `model` and restore every variable afterwards.

    Args:
        model: a classifier from `build_classifier` (after phase 1 for `"finetune"`).
        data: an `ImageFolder`; batches come from its training split (with its
            augmentation): epoch 0's, repeated.
        phase: `"head"` (frozen backbone, Adam) or `"finetune"` (unfrozen per
            `config.unfreeze`, SGD momentum, `config.discriminative_lr`).
        config: the run's training configuration (its learning rates are not used).
        start_lr: the first step's learning rate.
        end_lr: the last step's (the sweep stops sooner once the loss diverges).
        steps: at most this many training steps.
        batch_size: images per step (default: the data's).

    Returns:
        An `LRFinderResult`.
    """
    if not (0 < start_lr < end_lr) or steps < 10:
        raise KerasFTError(
            f"Invalid learning-rate sweep: expected 0 < start_lr < end_lr and steps >= 10, "
            f"received start_lr={start_lr}, end_lr={end_lr}, steps={steps}."
        )
    saved = [np.array(variable) for variable in model.variables]
    if phase == "head":
        freeze_backbone(model)
    else:
        unfreeze_backbone(model, config.unfreeze, config.train_batchnorm)
    compile_for_phase(model, phase, config, data.num_classes, learning_rate=start_lr)
    batch_size = batch_size or data.config.batch_size
    growth = (end_lr / start_lr) ** (1.0 / (steps - 1))
    result = LRFinderResult(phase)
    average, best = 0.0, math.inf
    try:
        # Epoch 0's batches, repeated: a sweep needs batches, not new epochs.
        batches = data.train_dataset(0, 1, batch_size).repeat().take(steps)
        for step, (images, labels) in enumerate(batches):
            rate = start_lr * growth**step
            model.optimizer.learning_rate = rate
            loss = float(model.train_on_batch(images, labels, return_dict=True)["loss"])
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            result.learning_rates.append(rate)
            result.losses.append(loss)
            result.smoothed.append(smoothed)
            best = min(best, smoothed)
            if not math.isfinite(loss) or (step > 10 and smoothed > DIVERGED * best):
                break
    finally:
        for variable, value in zip(model.variables, saved, strict=True):
            variable.assign(value)
    return _suggest(result)


def _suggest(result: LRFinderResult) -> LRFinderResult:
    """Fill in `suggestion` and `steepest` from the smoothed curve."""
    rates, smoothed = np.array(result.learning_rates), np.array(result.smoothed)
    if len(rates) < 3:
        raise KerasFTError(
            f"The learning-rate sweep diverged after {len(rates)} steps, before it could "
            "suggest anything. Lower start_lr."
        )
    skip = SKIP_START if len(rates) > 2 * SKIP_START else 0
    lowest = skip + int(np.nanargmin(smoothed[skip:]))
    result.suggestion = float(rates[lowest] / 10.0)
    slopes = np.gradient(smoothed[: lowest + 1], np.log10(rates[: lowest + 1]))
    result.steepest = float(rates[int(np.argmin(slopes))]) if lowest >= 2 else result.suggestion
    return result


def resolve(config: TrainingConfig, phase: str, rate: float) -> TrainingConfig:
    """`config` with `phase`'s learning rate set to `rate` (replacing `"auto"`)."""
    name = "head_lr" if phase == "head" else "finetune_lr"
    return dataclasses.replace(config, **{name: rate})
