"""Named recipes: settings for the options a user leaves at their defaults.

`fit(..., recipe="auto")` adapts the two-phase fit to the data: phase 2 runs
until the validation loss stops improving (a budget of epochs, early stopping,
best weights kept), flips are decided from the data, lower layers fine-tune at
lower rates, and images are shifted a little.

The values below are the one place these defaults live. Those marked
"placeholder" wait for the quality benchmark (bench/quality.py), which
compares settings on validation splits; change them here when it has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from keras_ft.config import DataConfig, TrainingConfig, check
from keras_ft.errors import KerasFTError

DATA_OPTIONS = ("flip", "translation")  # set on the ImageFolder, the others on `fit`


@dataclass(frozen=True)
class AutoRecipe:
    """What `recipe="auto"` sets, for each option left at its default."""

    head_epochs: int = 100  # a budget: on cached features an epoch of the head costs little
    head_augment: bool = False  # phase 1 on the unaugmented images' features, computed once
    finetune_epochs: int = 30  # a budget: early stopping ends phase 2 when val_loss stalls
    early_stopping: int = 3  # patience, both phases; the best epoch's weights are kept
    fallback_to_head: bool = True  # phase 2 kept only if it lowered the validation loss
    flip: bool | str = "auto"  # decided after phase 1 from mirrored validation images
    translation: float = 0.1  # placeholder: shifts up to 10% (random crops, with zoom)
    discriminative_lr: float = 10.0  # placeholder: lowest unfrozen layer at finetune_lr / 10
    finetune_schedule: str = "constant"  # placeholder: "cosine" (with warm-up) if it wins
    head_lr: float | str = 1e-3  # placeholder: "auto" (range test) if it wins
    finetune_lr: float | str = 1e-4  # placeholder: "auto" (range test) if it wins


RECIPES = {"auto": AutoRecipe()}


def apply_recipe(name: str | None, options: dict, data) -> tuple[dict, object, dict]:
    """Give `options` (fit's) and `data` (an `ImageFolder`) the recipe's settings.

    Only options still at their defaults change: a value the user chose (one
    that differs from the default) is kept.

    Args:
        name: a key of `RECIPES`, or None (nothing changes).
        options: `TrainingConfig` keyword arguments.
        data: the `ImageFolder`; a copy with the recipe's augmentation is returned.

    Returns:
        `(options, data, applied)`, `applied` being `{option: value}` of what changed.
    """
    if name is None:
        return options, data, {}
    check(name in RECIPES, "recipe", f"None or one of {tuple(RECIPES)}", name)
    if not data.validation_files:
        raise KerasFTError(
            f"recipe={name!r} follows the validation loss and measures flips on validation "
            "images, and validation_split is 0. Set validation_split > 0 (e.g. 0.2)."
        )
    recipe = dataclasses.asdict(RECIPES[name])
    training = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    augmentation = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    applied, changes = {}, {}
    for option, value in recipe.items():
        if option in DATA_OPTIONS:
            if getattr(data.config, option) == augmentation[option] != value:
                changes[option] = applied[option] = value
        elif options[option] == training[option] != value:
            options = {**options, option: value}
            applied[option] = value
    if changes and data.config.augment:
        data = data.with_augmentation(**changes)
    elif not data.config.augment:  # augment=False: the user asked for none
        applied = {k: v for k, v in applied.items() if k not in DATA_OPTIONS}
    return options, data, applied
