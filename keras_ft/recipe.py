"""Named recipes: settings for the options a user leaves at their defaults.

`fit(..., recipe="auto")` adapts the two-phase fit to the data: the head
starts as the linear probe on the frozen features, phase 2's learning rate
follows the size of the training split, and the model kept is the one with
the lower validation loss of the fine-tuned model and the linear probe.

The values below are the one place these settings live. They were chosen on
the validation splits of the quality benchmark (bench/quality.py,
BENCHMARKS.md "Quality"), never on its test splits.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_ft.config import TrainingConfig, check, defaults_of
from keras_ft.errors import KerasFTError


@dataclass(frozen=True)
class AutoRecipe:
    """What `recipe="auto"` sets, for each option left at its default.

    Linear probing, then fine-tuning (LP-FT, Kumar et al. 2022): the head
    starts as the linear probe on the frozen features (`head_init="probe"`),
    so phase 1 has nothing left to do (`head_epochs=0`) and phase 2 starts
    from the probe's predictions. After phase 2 the model with the lower
    validation loss is kept, fine-tuned or probe (`fallback_to_probe`; with a
    phase 1 the user asked for, its head competes too), and a kept probe is
    refitted on the training and validation images (`refit_probe`).
    With at least `min_train_images` training images, phase 2 runs at
    `finetune_lr` after `warmup_epochs` of linear warm-up, decaying along
    `finetune_schedule`; with fewer it keeps the defaults' constant 1e-4.

    Chosen on the quality benchmark's validation splits (seeds 0-2, BENCHMARKS.md
    "Quality", round 4): LP-FT against the previous `auto` (a 10-epoch phase 1
    from random weights); the faster phase 2 won on MNIST with 240 and 800
    training images and lost, on average, on each smaller split; `flip="auto"`
    ended 2 and 1 validation images below the defaults' flips on Cahn-Hilliard
    10 and 30 per class (seed 0). The refit cannot be measured on validation
    (it trains on it); it is there because selection on validation, then a
    refit on every labelled image, is how a probe is fitted.
    """

    head_init: str = "probe"
    head_epochs: int = 0
    fallback_to_probe: bool = True
    refit_probe: bool = True
    min_train_images: int = 150
    finetune_lr: float = 3e-4
    finetune_schedule: str = "cosine"
    warmup_epochs: int = 1

    def settings(self, train_images: int) -> dict:
        """The options it sets for a training split of `train_images` images."""
        settings = {
            "head_init": self.head_init,
            "head_epochs": self.head_epochs,
            "fallback_to_probe": self.fallback_to_probe,
            "refit_probe": self.refit_probe,
        }
        if train_images >= self.min_train_images:
            settings.update(
                finetune_lr=self.finetune_lr,
                finetune_schedule=self.finetune_schedule,
                warmup_epochs=self.warmup_epochs,
            )
        return settings


RECIPES = {"auto": AutoRecipe()}


def apply_recipe(name: str | None, options: dict, data) -> tuple[dict, dict]:
    """Give `options` (fit's) the recipe's settings for `data` (an `ImageFolder`).

    Only options still at their defaults change: a value the user chose (one
    that differs from the default) is kept.

    Args:
        name: a key of `RECIPES`, or None (nothing changes).
        options: `TrainingConfig` keyword arguments.
        data: the `ImageFolder` (its training split's size decides phase 2's rate).

    Returns:
        `(options, applied)`, `applied` being `{option: value}` of what changed.
    """
    if name is None:
        return options, {}
    check(name in RECIPES, "recipe", f"None or one of {tuple(RECIPES)}", name)
    if not data.validation_files:
        raise KerasFTError(
            f"recipe={name!r} compares the validation loss before and after phase 2, and "
            "validation_split is 0. Set validation_split > 0 (e.g. 0.2)."
        )
    defaults = defaults_of(TrainingConfig)
    applied = {
        option: value
        for option, value in RECIPES[name].settings(len(data.train_files)).items()
        if options[option] == defaults[option] != value
    }
    options = {**options, **applied}
    if options["head_epochs"] and options["fallback_to_head"] == defaults["fallback_to_head"]:
        applied["fallback_to_head"] = options["fallback_to_head"] = True  # a phase 1 was asked
    return options, applied
