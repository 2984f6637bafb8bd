"""`recipe="auto"`: which options it sets, which it leaves, and what it refuses."""

import dataclasses

import pytest
from conftest import tiny_backbone, write_folder

import keras_ft
from keras_ft.config import TrainingConfig
from keras_ft.recipe import RECIPES, apply_recipe
from keras_ft.training import LayerwiseSGD


def defaults() -> dict:
    constructor = ("deterministic", "strategy")
    fields = dataclasses.fields(TrainingConfig)
    return {f.name: f.default for f in fields if f.name not in constructor}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("recipe") / "train", ("a", "b", "c"), 12)


def test_auto_sets_the_options_left_at_their_defaults(folder):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25)
    options, adapted, applied = apply_recipe("auto", defaults(), data)
    recipe = RECIPES["auto"]
    assert options["finetune_epochs"] == recipe.finetune_epochs == 30
    assert options["early_stopping"] == recipe.early_stopping
    assert options["discriminative_lr"] == recipe.discriminative_lr
    assert (adapted.config.flip, adapted.config.translation) == ("auto", recipe.translation)
    assert adapted.train_files == data.train_files and data.config.flip is True  # a copy
    assert (options["head_epochs"], options["head_augment"]) == (100, False)
    assert options["fallback_to_head"] is True
    assert set(applied) == {
        "head_epochs",
        "head_augment",
        "finetune_epochs",
        "early_stopping",
        "fallback_to_head",
        "flip",
        "translation",
        "discriminative_lr",
    }


def test_auto_keeps_what_the_user_chose(folder):
    data = keras_ft.ImageFolder(
        folder, image_size=32, batch_size=8, validation_split=0.25, flip=False
    )
    chosen = defaults() | {"finetune_epochs": 4, "early_stopping": 1}
    options, adapted, applied = apply_recipe("auto", chosen, data)
    assert (options["finetune_epochs"], options["early_stopping"]) == (4, 1)
    assert adapted.config.flip is False and "flip" not in applied
    unaugmented = keras_ft.ImageFolder(
        folder, image_size=32, batch_size=8, validation_split=0.25, augment=False
    )
    _, kept, applied = apply_recipe("auto", defaults(), unaugmented)
    assert kept is unaugmented and not {"flip", "translation"} & set(applied)
    assert apply_recipe(None, chosen, data) == (chosen, data, {})


def test_auto_refusals_name_the_problem(folder, tmp_path):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25)
    with pytest.raises(keras_ft.KerasFTError, match=r"Invalid `recipe`: expected None or one"):
        apply_recipe("fast", defaults(), data)
    unvalidated = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0)
    with pytest.raises(keras_ft.KerasFTError, match="validation_split is 0"):
        apply_recipe("auto", defaults(), unvalidated)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf")
    with pytest.raises(keras_ft.KerasFTError, match=r"recipe='auto' stops phases early"):
        tuner.fit(data, recipe="auto", resume=True, checkpoint_dir=tmp_path, verbose=0)


def test_fit_with_auto_records_the_recipe_and_trains_adaptively(folder, capsys):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=2, finetune_epochs=3, head_lr=1e-2, recipe="auto", verbose=2)
    out = capsys.readouterr().out
    assert (
        "recipe='auto': head_augment=False, early_stopping=3, fallback_to_head=True, "
        "flip='auto', translation=0.1"
    ) in out
    assert tuner.record["recipe"]["applied"]["discriminative_lr"] == 10.0
    assert tuner.training_config.finetune_epochs == 3  # chosen, so kept
    assert tuner.data_config.flip == "auto" and "flip" in tuner.record["decisions"]
    assert isinstance(tuner.model.optimizer, LayerwiseSGD)
