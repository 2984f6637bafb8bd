"""Named recipes: settings for the options a user leaves at their defaults.

`recipe="auto"`, `fit`'s default, adapts the two-phase fit to the data: the
epochs and phase 2's learning rate follow the size of the training split, and
the model kept is the one with the lowest validation loss of the fine-tuned
model, the phase-1 head, and a linear probe on the frozen features (refitted on
the training and validation images when it is kept). `recipe=None`
(`--recipe none`) trains with the options exactly as given.

The values below are the one place these settings live. How the values were
chosen: docs/benchmark-history.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_ft.config.checks import check
from keras_ft.config.options import defaults_of
from keras_ft.config.training_config import WARMUP_NEEDS_COSINE, TrainingConfig
from keras_ft.utils.errors import KerasFTError


@dataclass(frozen=True)
class AutoRecipe:
    """What `recipe="auto"` sets, for each option left at its default.

    Phase 2's rate follows the size of the training split: `finetune_lrs`
    holds `(from_images, rate, warmup_epochs)` rows, and the last row whose
    `from_images` the split reaches sets `finetune_lr` and `warmup_epochs`
    (epochs of linear warm-up), with decay along `finetune_schedule`; below
    the first row phase 2 keeps the defaults' constant rate. `epochs` holds
    `(from_images, head_epochs, finetune_epochs)` rows, read the same way. The
    fallbacks keep, of the fine-tuned model, the phase-1 head and the linear
    probe, the one with the lowest validation loss, and a kept probe is refitted on the
    training and validation images (`refit_probe`). Flips and quarter turns
    are not part of it: the data's `flip="auto"` and `quarter_turns="auto"`
    decide them for any recipe (`keras_ft.training.symmetry.decide_flip`).
    """

    fallback_to_head: bool = True  # phase 2 kept only if it lowered the validation loss
    fallback_to_probe: bool = True  # ... and only if the linear probe's is not lower still
    refit_probe: bool = True  # a kept probe then sees the validation images too
    # (from_images, finetune_lr, warmup_epochs): the last row the split reaches.
    finetune_lrs: tuple[tuple[int, float, int], ...] = ((150, 3e-4, 1), (500, 1e-3, 3))
    # (from_images, head_epochs, finetune_epochs): the last row the split reaches.
    epochs: tuple[tuple[int, int, int], ...] = ((0, 60, 60), (150, 30, 30), (500, 10, 15))
    finetune_schedule: str = "cosine"

    def settings(self, train_images: int) -> dict:
        """The options it sets for a training split of `train_images` images."""
        settings = {
            "fallback_to_head": self.fallback_to_head,
            "fallback_to_probe": self.fallback_to_probe,
            "refit_probe": self.refit_probe,
        }
        phase_2 = _reached(self.finetune_lrs, train_images)
        if phase_2:
            rate, warmup = phase_2
            settings.update(
                finetune_lr=rate, finetune_schedule=self.finetune_schedule, warmup_epochs=warmup
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
    probe's (`NEEDS_LINEAR_HEAD`), `refit_probe` wherever `fallback_to_probe`
    ends up False, and the warm-up where the caller's `finetune_schedule` is
    not cosine; it is cut to the caller's `finetune_epochs`. A `warmup_epochs`
    the caller gave without a schedule, on a split too small for the cosine
    one, is refused, saying from what size the recipe sets it.

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
    recipe, images = RECIPES[name], len(data.train_files)
    options, applied = _resolve(
        recipe, options, images, bool(data.validation_files), dense_units, given
    )
    cosine_from = recipe.finetune_lrs[0][0]
    if images < cosine_from and "finetune_schedule" not in given:
        check(
            options["warmup_epochs"] == 0 or options["finetune_schedule"] == "cosine",
            "warmup_epochs",
            WARMUP_NEEDS_COSINE,
            options["warmup_epochs"],
            f"recipe={name!r} sets the cosine schedule from {cosine_from} training images, "
            f"and this training split holds {images}. Pass finetune_schedule='cosine' too, "
            "or warmup_epochs=0.",
        )
    return options, applied


def could_resolve(name: str, options: dict, given=(), dense_units=()) -> bool:
    """Whether recipe `name` makes `options` a valid `TrainingConfig` for a training split
    of some size (with a validation split): what `keras-ft train` asks before it reads
    the data, so as to leave to `fit` what only the recipe's settings make valid (a
    `warmup_epochs` given alone needs the cosine schedule that `auto` sets on larger
    splits)."""
    check(name in RECIPES, "recipe", f"one of {tuple(RECIPES)}", name)
    recipe = RECIPES[name]
    for images in sorted({row[0] for row in (*recipe.epochs, *recipe.finetune_lrs)}):
        resolved, _ = _resolve(recipe, options, images, True, dense_units, given)
        try:
            TrainingConfig(**resolved)
        except KerasFTError:
            continue
        return True
    return False


def _resolve(recipe, options, train_images, validated, dense_units, given) -> tuple[dict, dict]:
    """`apply_recipe`'s settings for a training split of `train_images` images (`validated`:
    with a validation split)."""
    left_out = (() if validated else NEEDS_VALIDATION) + (NEEDS_LINEAR_HEAD if dense_units else ())
    defaults = defaults_of(TrainingConfig)
    applied = {
        option: value
        for option, value in recipe.settings(train_images).items()
        if option not in (*left_out, *given) and options[option] == defaults[option] != value
    }
    if not {**options, **applied}["fallback_to_probe"]:  # nothing to refit
        applied.pop("refit_probe", None)
    resolved = {**options, **applied}
    if resolved["finetune_epochs"] == 0:  # no phase 2: nothing to schedule
        for option in PHASE_2:
            applied.pop(option, None)
    elif resolved["finetune_schedule"] != "cosine":  # the caller's: no decay to warm up into
        applied.pop("warmup_epochs", None)
    elif "warmup_epochs" in applied:  # no more warm-up than the caller's phase 2 holds
        applied["warmup_epochs"] = min(applied["warmup_epochs"], resolved["finetune_epochs"])
    return {**options, **applied}, applied
