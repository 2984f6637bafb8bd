"""Named recipes: settings for the options a user leaves at their defaults.

`recipe="auto"`, `fit`'s default, adapts the two-phase fit to the data: the
epochs and phase 2's learning rate follow the size of the training split, and
the model kept is the one with the lowest validation loss of the fine-tuned
model, the phase-1 head, and a linear probe on the frozen features (refitted on
the training and validation images when it is kept). `recipe=None`
(`--recipe none`) trains with the options exactly as given.

The values below are the one place these settings live. They were chosen on
the validation splits of the quality benchmark (bench/quality.py,
BENCHMARKS.md "Quality"), never on its test splits.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_ft.config import TrainingConfig, check, defaults_of


@dataclass(frozen=True)
class AutoRecipe:
    """What `recipe="auto"` sets, for each option left at its default.

    Phase 2's rate follows the size of the training split: `finetune_lrs`
    holds `(from_images, rate)` rows, and the last row whose `from_images`
    the split reaches sets `finetune_lr`, with `warmup_epochs` of linear
    warm-up and decay along `finetune_schedule`; below the first row phase 2
    keeps the defaults' constant 1e-4. On the benchmark's validation splits
    3e-4 won over 1e-4 on MNIST with 30 and 100 images per class (240 and 800
    training images) and lost, on average, on each smaller split (MNIST 10 per
    class, Cahn-Hilliard 10 and 30 per class: 24-80 training images; seeds 0
    and 1). 1e-3 won over 3e-4 on MNIST 100 per class (about 815 training
    images; higher validation accuracy or the same, lower loss, at each of
    seeds 0-2) and fell to chance on MNIST and digits at 30 per class (240
    training images, seed 0; round 5). Flips are not part of it:
    `ImageFolder`'s default, `flip="auto"` (since round 8), decides them for
    any recipe before phase 1, from the linear probe. Deciding them after a
    phase 1 without flips, as `flip="auto"` did before, lost on Cahn-Hilliard
    10 and 30 per class (selection 0.760 and 0.835 against 0.778 and 0.853
    with flips, seeds 0-2; candidate `c15-autoflip`). Nor are quarter turns:
    `quarter_turns="auto"`, the data's default since round 10, decides them the
    same way (mean selection accuracy over seeds 0-2, candidate `c17-turns`
    against round 9's `auto`: Cahn-Hilliard 10, 30 and 100 per class +6.8,
    +4.2 and +1.0 points; Ising 10 and 30 -0.6 and -0.1; no digit task turns,
    bench/results/turns.jsonl). `fallback_to_probe`: over
    seeds 0-2, the benchmark's linear probe (on avg+max pooled frozen features)
    had the higher mean validation accuracy on Cahn-Hilliard 30 per class
    (0.861 against `auto`'s fine-tuned 0.807), and on single seeds elsewhere.
    `refit_probe` cannot be measured on validation (it trains on it): it is
    there because selection on validation, then a refit on every labelled
    image, is how a probe is fitted. Linear probing, then fine-tuning
    (`head_init="probe"` with `head_epochs=0`) was tried and left out: over
    seeds 0-2 its fine-tuned models had the lower mean validation accuracy
    on 3 of 5 task sizes (0.809 against 0.875 over the 5; round 4).

    `epochs` holds `(from_images, head_epochs, finetune_epochs)` rows; the last
    row the split reaches sets both. Below 150 training images an epoch is a
    few steps (2-3 at batch 32), and 10 epochs left the model far from
    converged (digits 10 per class: the head's training accuracy 0.52 after
    phase 1). 60 epochs in each phase won on the benchmark's selection folders
    (as many images as the test split, drawn from the training pool; round 6)
    at each of the six task sizes below 150 training images, by 0.5 to 7.1
    points (mean over seeds 0-2); the validation accuracy was higher on three,
    level on two and lower on one (Cahn-Hilliard 10 per class, with 5-6
    validation images). 60 epochs for the head alone did not help (digits 10
    per class). From 150 to 500 training images (8-16 steps an epoch), 30
    epochs in each phase won on the selection folders of the three task sizes
    there (digits and MNIST 30 per class, Cahn-Hilliard 100 per class: +3.8,
    +3.2 and +0.6 points, mean over seeds 0-2; round 7); the validation
    accuracy was higher on the first two and lower on Cahn-Hilliard (-1.3).
    From 500, 15 fine-tuning epochs rather than 10 won on the selection
    folders of MNIST 100 per class (0.980 against 0.974, seeds 0-2) and digits
    70 per class (0.960 against 0.941, seeds 0-1); the validation accuracy was
    lower on MNIST (-0.7) and higher on digits (+1.6).

    Weight-space mixes of the fine-tuned model and the phase-1 head
    (`fallback_to_mixes`, WiSE-FT) were tried as more fallback candidates and
    left out (round 9): on the selection folders they won on Cahn-Hilliard 10
    and 30 per class (+3.9 and +1.2 points, seeds 0-2) and lost on MNIST 10
    per class (-1.7, seeds 0-1); validation splits this small cannot choose
    among that many candidates.
    """

    fallback_to_head: bool = True  # phase 2 kept only if it lowered the validation loss
    fallback_to_probe: bool = True  # ... and only if the linear probe's is not lower still
    refit_probe: bool = True  # a kept probe then sees the validation images too
    finetune_lrs: tuple[tuple[int, float], ...] = ((150, 3e-4), (500, 1e-3))
    # (from_images, head_epochs, finetune_epochs): the last row the split reaches.
    epochs: tuple[tuple[int, int, int], ...] = ((0, 60, 60), (150, 30, 30), (500, 10, 15))
    finetune_schedule: str = "cosine"
    warmup_epochs: int = 1

    def settings(self, train_images: int) -> dict:
        """The options it sets for a training split of `train_images` images."""
        settings = {
            "fallback_to_head": self.fallback_to_head,
            "fallback_to_probe": self.fallback_to_probe,
            "refit_probe": self.refit_probe,
        }
        rate = _reached(self.finetune_lrs, train_images)
        if rate:
            settings.update(
                finetune_lr=rate[0],
                finetune_schedule=self.finetune_schedule,
                warmup_epochs=self.warmup_epochs,
            )
        head, finetune = _reached(self.epochs, train_images)
        return settings | {"head_epochs": head, "finetune_epochs": finetune}


def _reached(rows: tuple[tuple, ...], train_images: int) -> tuple:
    """The values of the last `(from_images, *values)` row that `train_images` reaches, or ()."""
    reached = [row[1:] for row in rows if train_images >= row[0]]
    return reached[-1] if reached else ()


RECIPES = {"auto": AutoRecipe()}
# Settings left out where they cannot work: the fallbacks compare validation losses, and
# the probe becomes the head's last layer, on the pooled features (`refit_probe` goes with
# `fallback_to_probe`, in `apply_recipe`).
NEEDS_VALIDATION = ("fallback_to_head", "fallback_to_probe")
NEEDS_LINEAR_HEAD = ("fallback_to_probe",)
# Phase 2's settings, left out where the caller's finetune_epochs=0 leaves no phase 2
# (a warm-up epoch would not fit in it).
PHASE_2 = ("finetune_lr", "finetune_schedule", "warmup_epochs")


def apply_recipe(
    name: str | None, options: dict, data, dense_units=(), given=()
) -> tuple[dict, dict]:
    """Give `options` (fit's) the recipe's settings for `data` (an `ImageFolder`).

    Only options left alone change: one named in `given` (passed to `fit`),
    or whose value differs from the default, is kept. Settings that cannot
    work here are left out rather than refused, so that the default recipe
    trains anything `recipe=None` trains: without a validation split the
    fallbacks (`NEEDS_VALIDATION`), with hidden Dense layers in the head the
    probe's (`NEEDS_LINEAR_HEAD`), and `refit_probe` wherever
    `fallback_to_probe` ends up False.

    Args:
        name: a key of `RECIPES`, or None (nothing changes).
        options: `TrainingConfig` keyword arguments.
        data: the `ImageFolder` (its training split's size sets the epochs and rate).
        dense_units: the head's hidden layers (`ModelConfig.dense_units`).
        given: the options the caller named, kept whatever their value.

    Returns:
        `(options, applied)`, `applied` being `{option: value}` of what changed.
    """
    if name is None:
        return options, {}
    check(name in RECIPES, "recipe", f"None or one of {tuple(RECIPES)}", name)
    left_out = (NEEDS_VALIDATION if not data.validation_files else ()) + (
        NEEDS_LINEAR_HEAD if dense_units else ()
    )
    defaults = defaults_of(TrainingConfig)
    applied = {
        option: value
        for option, value in RECIPES[name].settings(len(data.train_files)).items()
        if option not in (*left_out, *given) and options[option] == defaults[option] != value
    }
    if not {**options, **applied}["fallback_to_probe"]:  # nothing to refit
        applied.pop("refit_probe", None)
    if {**options, **applied}["finetune_epochs"] == 0:  # no phase 2: nothing to schedule
        for option in PHASE_2:
            applied.pop(option, None)
    return {**options, **applied}, applied
