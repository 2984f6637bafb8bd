"""`recipe="auto"`: which options it sets, which it leaves, and what it refuses."""

from types import SimpleNamespace

import pytest
from conftest import tiny_backbone, write_folder

import keras_ft
from keras_ft.config import FIT_OPTIONS, TrainingConfig, defaults_of
from keras_ft.config.recipe import RECIPES, apply_recipe


def defaults() -> dict:
    """`fit`'s options at their defaults (the constructor's training options left out)."""
    return {n: v for n, v in defaults_of(TrainingConfig).items() if n in FIT_OPTIONS}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("recipe") / "train", ("a", "b", "c"), 12)


def test_auto_sets_the_options_left_at_their_defaults(folder):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25)
    options, applied = apply_recipe("auto", defaults(), data)
    assert len(data.train_files) < RECIPES["auto"].finetune_lrs[0][0]  # 27 images
    assert applied == {
        "fallback_to_head": True, "fallback_to_probe": True, "refit_probe": True,
        "head_epochs": 60, "finetune_epochs": 60,
    }  # fmt: skip
    assert options["fallback_to_head"] is options["fallback_to_probe"] is True
    # A small split keeps the defaults' phase-2 rate: constant 1e-4, no warm-up; it trains
    # for more epochs (at batch 8, 4 steps each).
    assert (options["finetune_lr"], options["finetune_schedule"]) == (1e-4, "constant")
    assert (options["head_epochs"], options["finetune_epochs"]) == (60, 60)
    assert options == defaults() | applied
    chosen, applied = apply_recipe("auto", defaults() | {"head_epochs": 5}, data)
    assert (chosen["head_epochs"], chosen["finetune_epochs"]) == (5, 60)
    # Named in fit's call: kept even at the default's value (refit_probe follows the probe).
    given = ("finetune_epochs", "fallback_to_probe")
    chosen, applied = apply_recipe("auto", defaults(), data, given=given)
    assert applied == {"fallback_to_head": True, "head_epochs": 60}
    assert (chosen["finetune_epochs"], chosen["fallback_to_probe"]) == (10, False)


@pytest.mark.parametrize(
    ("per_class", "train_images", "tier"),
    [(100, 150, (150, 3e-4, 1)), (340, 503, (500, 1e-3, 3))],  # at and just past a threshold
)
def test_auto_runs_phase_2_faster_from_its_size_thresholds(tmp_path, per_class, train_images, tier):
    assert tier in RECIPES["auto"].finetune_lrs
    large = write_folder(tmp_path / "large", ("a", "b"), per_class=per_class, size=8)
    data = keras_ft.ImageFolder(large, image_size=32, batch_size=8, validation_split=0.25)
    assert len(data.train_files) == train_images
    options, applied = apply_recipe("auto", defaults(), data)
    faster = {"finetune_lr": tier[1], "finetune_schedule": "cosine", "warmup_epochs": tier[2]}
    assert {k: options[k] for k in faster} == faster and faster.items() <= applied.items()
    epochs = (30, 30) if train_images < 500 else (10, 15)
    assert (options["head_epochs"], options["finetune_epochs"]) == epochs
    assert ("head_epochs" in applied) is (train_images < 500)  # 10: the default's


def test_auto_leaves_phase_2_alone_when_the_user_asks_for_none(tmp_path):
    """A head-only run (finetune_epochs=0) gets no warm-up epoch it has no room for."""
    large = write_folder(tmp_path / "large", ("a", "b"), per_class=100, size=8)
    data = keras_ft.ImageFolder(large, image_size=32, batch_size=8, validation_split=0.25)
    options, applied = apply_recipe(
        "auto", defaults() | {"finetune_epochs": 0}, data, given=("finetune_epochs",)
    )
    assert not {"finetune_lr", "finetune_schedule", "warmup_epochs"} & set(applied)
    assert options["finetune_epochs"] == options["warmup_epochs"] == 0
    TrainingConfig(**options)  # a valid combination: it used to refuse warmup_epochs=1


@pytest.mark.parametrize("train_images", [149, 150, 500])
@pytest.mark.parametrize(
    "chosen",
    [
        {"finetune_epochs": 1},
        {"finetune_epochs": 2},
        {"finetune_schedule": "constant"},
        {"finetune_schedule": "constant", "finetune_epochs": 2},
    ],
)
def test_auto_never_makes_what_the_caller_chose_invalid(train_images, chosen):
    """Three warm-up epochs do not fit in two of phase 2, and a constant rate has no
    decay to warm up into: `auto` cuts or leaves out its warm-up instead."""
    data = SimpleNamespace(train_files=[None] * train_images, validation_files=[None] * 40)
    options, applied = apply_recipe("auto", defaults() | chosen, data, given=tuple(chosen))
    TrainingConfig(**options)  # valid: no "Invalid `warmup_epochs`"
    assert chosen.items() <= options.items()
    tier = RECIPES["auto"].settings(train_images)
    if options["finetune_schedule"] == "cosine":
        expected = min(tier["warmup_epochs"], options["finetune_epochs"])
        assert applied["warmup_epochs"] == options["warmup_epochs"] == expected
    else:
        assert "warmup_epochs" not in applied and options["warmup_epochs"] == 0
    assert options["finetune_lr"] == tier.get("finetune_lr", 1e-4)  # the rate stays


def test_auto_phase_2_rate_steps_up_with_the_training_split():
    rate = {n: RECIPES["auto"].settings(n).get("finetune_lr") for n in (149, 150, 499, 500, 5000)}
    assert rate == {149: None, 150: 3e-4, 499: 3e-4, 500: 1e-3, 5000: 1e-3}
    # Phase 2's first epochs at 1e-3 could collapse: three of its 15 warm up from 500.
    warmup = {n: RECIPES["auto"].settings(n).get("warmup_epochs") for n in (149, 499, 500)}
    assert warmup == {149: None, 499: 1, 500: 3}
    settings = {n: RECIPES["auto"].settings(n) for n in (1, 149, 150, 499, 500, 5000)}
    epochs = {n: (s["head_epochs"], s["finetune_epochs"]) for n, s in settings.items()}
    assert epochs == {
        1: (60, 60), 149: (60, 60), 150: (30, 30), 499: (30, 30), 500: (10, 15), 5000: (10, 15)
    }  # fmt: skip
    # From 500 images too, the warm-up and the cosine come with the rate.
    at_150 = {"finetune_lr": 3e-4, "warmup_epochs": 1, "head_epochs": 30, "finetune_epochs": 30}
    assert RECIPES["auto"].settings(500) | at_150 == RECIPES["auto"].settings(150)


def test_auto_keeps_what_the_user_chose(tmp_path):
    large = write_folder(tmp_path / "large", ("a", "b"), per_class=100, size=8)
    data = keras_ft.ImageFolder(large, image_size=32, batch_size=8, validation_split=0.25)
    chosen = defaults() | {"finetune_lr": 1e-3, "finetune_schedule": "constant"}
    options, applied = apply_recipe("auto", chosen, data)
    assert options["finetune_lr"] == 1e-3 and "finetune_lr" not in applied
    # "constant" equals the default: only `given` (fit's keywords) tells it was chosen
    assert set(applied) == {
        "fallback_to_head", "fallback_to_probe", "refit_probe", "finetune_schedule",
        "warmup_epochs", "head_epochs", "finetune_epochs",
    }  # fmt: skip
    options, _ = apply_recipe("auto", chosen, data, given=("finetune_schedule",))
    assert options["finetune_schedule"] == "constant"
    assert apply_recipe(None, chosen, data) == (chosen, {})


def test_auto_refuses_an_unknown_name_and_leaves_out_what_cannot_work(folder):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25)
    with pytest.raises(keras_ft.KerasFTError, match=r"Invalid `recipe`: expected None or one"):
        apply_recipe("fast", defaults(), data)
    epochs = {"head_epochs": 60, "finetune_epochs": 60}
    # No validation split: nothing to compare, so no fallback (fit would refuse one).
    unvalidated = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0)
    options, applied = apply_recipe("auto", defaults(), unvalidated)
    assert applied == epochs and not options["fallback_to_head"]
    # Hidden Dense layers: the probe cannot become the head's last layer; the head can return.
    _, applied = apply_recipe("auto", defaults(), data, dense_units=(16,))
    assert applied == epochs | {"fallback_to_head": True}


def test_fit_applies_auto_by_default_and_records_it(folder, capsys):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=2, finetune_epochs=3, head_lr=1e-2, verbose=2)
    out = capsys.readouterr().out
    assert "recipe='auto': fallback_to_head=True, fallback_to_probe=True, refit_probe=True" in out
    applied = {"fallback_to_head": True, "fallback_to_probe": True, "refit_probe": True}
    assert tuner.record["recipe"]["applied"] == applied
    assert tuner.training_config.fallback_to_head is tuner.training_config.fallback_to_probe
    decision = tuner.record["decisions"]["fallback"]
    assert decision["kept"] in ("head", "finetune", "probe")
    losses = {key: decision[f"{key}_val_loss"] for key in ("head", "finetune", "probe")}
    assert losses[decision["kept"]] == min(losses.values())
    assert f"fallback: validation loss {losses['head']:.4g} before phase 2" in out


def test_fit_with_recipe_none_trains_with_the_options_as_given(folder, capsys):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=1, finetune_epochs=1, recipe=None, verbose=0)
    assert "recipe=" not in capsys.readouterr().out
    assert tuner.record["recipe"] is None and "fallback" not in tuner.record["decisions"]
    assert tuner.training_config == keras_ft.TrainingConfig(head_epochs=1, finetune_epochs=1)


def test_fit_keeps_an_option_named_in_its_call_at_the_default_value(folder):
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, validation_split=0.25)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=10, finetune_epochs=0, verbose=0)  # 10: the default's value
    assert (tuner.training_config.head_epochs, len(tuner.history.rows)) == (10, 10)
    assert "head_epochs" not in tuner.record["recipe"]["applied"]  # 60 were it left out
