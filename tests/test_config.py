"""Configuration dataclasses: validation with named arguments, image_size pairs, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from keras_ft.config import (
    CONSTRUCTOR_OPTIONS,
    FIT_OPTIONS,
    SEED,
    DataConfig,
    ModelConfig,
    Range,
    TrainingConfig,
    from_dict,
    image_size_pair,
    options_of,
    to_dict,
)
from keras_ft.utils.errors import KerasFTError


def assert_names(error: pytest.ExceptionInfo, argument: str, received: object) -> None:
    message = str(error.value)
    assert f"`{argument}`" in message, message
    assert repr(received) in message, message


# ---------------------------------------------------------------- DataConfig


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("image_size", 0),
        ("image_size", -32),
        ("image_size", (32,)),
        ("image_size", (32, 0)),
        ("image_size", (32, 32, 3)),
        ("image_size", (32.0, 32)),
        ("image_size", "224"),
        ("image_size", True),
        ("image_size", 100000),
        ("batch_size", 0),
        ("batch_size", -4),
        ("batch_size", 8.0),
        ("validation_split", -0.1),
        ("validation_split", 1.0),
        ("validation_split", 20),
        ("validation_split", float("nan")),
        ("seed", 1.5),
        ("seed", "42"),
        ("seed", -1),
        ("seed", 2**32),
        ("rotation", -0.01),
        ("rotation", 0.75),
        ("zoom", 1.0),
        ("zoom", -0.1),
        ("contrast", 1.0),
        ("contrast", -0.5),
    ],
)
def test_data_config_rejects_bad_value_naming_the_argument(argument, value):
    with pytest.raises(KerasFTError) as error:
        DataConfig(directory="d", **{argument: value})
    assert_names(error, argument, value)
    assert "expected" in str(error.value)


def test_data_config_validation_split_error_says_how_to_fix():
    with pytest.raises(KerasFTError, match=r"Use 0 to train on every image"):
        DataConfig(directory="d", validation_split=1.0)


def test_data_config_accepts_boundaries():
    config = DataConfig(
        directory="d",
        validation_split=0.0,
        batch_size=1,
        rotation=0.5,
        zoom=0.0,
        contrast=0.0,
        seed=2**32 - 1,
    )
    assert config.validation_split == 0.0
    assert config.batch_size == 1
    assert config.rotation == 0.5


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (32, (32, 32)),
        ((32, 48), (32, 48)),
        ([40, 36], (40, 36)),
    ],
)
def test_image_size_becomes_a_height_width_tuple(given, expected):
    assert image_size_pair(given) == expected
    assert DataConfig(directory="d", image_size=given).image_size == expected
    assert ModelConfig(num_classes=2, image_size=given).image_size == expected
    assert isinstance(DataConfig(directory="d", image_size=given).image_size, tuple)


def test_an_image_size_too_large_to_train_is_refused_saying_its_memory():
    with pytest.raises(KerasFTError) as error:
        image_size_pair(100000)
    assert str(error.value) == (
        "Invalid `image_size`: expected sides of at most 4096 px, received (100000, 100000). "
        "Each image of a batch would take 120.0 GB as float32 pixels, before any layer. "
        "Pass a smaller size, e.g. 224 (most backbones' default)."
    )
    assert image_size_pair((4096, 32)) == (4096, 32)


def test_data_config_is_frozen():
    config = DataConfig(directory="d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 4


# --------------------------------------------------------------- ModelConfig


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("num_classes", 1),
        ("num_classes", 0),
        ("num_classes", 2.0),
        ("num_classes", "3"),
        ("pooling", "mean"),
        ("pooling", None),
        ("dense_units", (0,)),
        ("dense_units", (128, -1)),
        ("dense_units", (1.5,)),
        ("dropout", 1.0),
        ("dropout", -0.2),
        ("seed", 0.5),
        ("seed", -1),
        ("image_size", (224, -1)),
    ],
)
def test_model_config_rejects_bad_value_naming_the_argument(argument, value):
    values = {"num_classes": 2, argument: value}
    with pytest.raises(KerasFTError) as error:
        ModelConfig(**values)
    message = str(error.value)
    assert f"`{argument}`" in message, message


def test_model_config_pooling_error_lists_what_is_allowed():
    with pytest.raises(KerasFTError) as error:
        ModelConfig(num_classes=3, pooling="mean")
    for allowed in ("avg", "max", "avgmax", "flatten"):
        assert f"'{allowed}'" in str(error.value)
    assert "'mean'" in str(error.value)


def test_model_config_num_classes_error_explains():
    with pytest.raises(KerasFTError, match=r"at least two classes.*received 1"):
        ModelConfig(num_classes=1)


def test_model_config_dense_units_list_becomes_tuple():
    config = ModelConfig(num_classes=4, dense_units=[64, 32])
    assert config.dense_units == (64, 32)


# ------------------------------------------------------------ TrainingConfig


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("head_epochs", -1),
        ("head_epochs", 1.5),
        ("finetune_epochs", -2),
        ("finetune_epochs", "3"),
        ("head_lr", 0),
        ("head_lr", -1e-3),
        ("head_lr", "1e-3"),
        ("finetune_lr", 0.0),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("unfreeze", ""),
        ("unfreeze", 0),
        ("unfreeze", -3),
        ("unfreeze", None),
        ("unfreeze", 2.5),
    ],
)
def test_training_config_rejects_bad_value_naming_the_argument(argument, value):
    with pytest.raises(KerasFTError) as error:
        TrainingConfig(**{argument: value})
    assert_names(error, argument, value)


def test_training_config_needs_at_least_one_epoch():
    with pytest.raises(KerasFTError) as error:
        TrainingConfig(head_epochs=0, finetune_epochs=0)
    assert "`head_epochs/finetune_epochs`" in str(error.value)
    assert "at least one epoch" in str(error.value)


@pytest.mark.parametrize("unfreeze", ["all", "block5_conv1", 1, 4])
def test_training_config_accepts_unfreeze_forms(unfreeze):
    assert TrainingConfig(unfreeze=unfreeze).unfreeze == unfreeze


def test_training_config_allows_a_single_phase():
    assert TrainingConfig(head_epochs=0, finetune_epochs=1).head_epochs == 0
    assert TrainingConfig(head_epochs=3, finetune_epochs=0).finetune_epochs == 0


@pytest.mark.parametrize(
    ("cls", "values", "argument"),
    [
        (DataConfig, {"directory": "d", "validation_split": "0.2"}, "validation_split"),
        (ModelConfig, {"num_classes": 2, "dropout": "0.5"}, "dropout"),
        (TrainingConfig, {"momentum": "0.9"}, "momentum"),
    ],
)
def test_string_for_a_numeric_argument_is_a_named_error(cls, values, argument):
    with pytest.raises(KerasFTError, match=f"`{argument}`"):
        cls(**values)


# ------------------------------------------------------------------ to/from dict


@pytest.mark.parametrize(
    "config",
    [
        DataConfig(
            directory="flowers/train",
            test_dir="flowers/test",
            image_size=36,
            batch_size=4,
            validation_split=0.25,
            seed=7,
            augment=False,
            flip=False,
            rotation=0.1,
            zoom=0.2,
            contrast=0.0,
            skip_bad=True,
        ),
        DataConfig(directory="x"),
        ModelConfig(
            num_classes=5,
            backbone="resnet50",
            weights=None,
            image_size=(40, 32),
            pooling="avgmax",
            dense_units=(64, 16),
            dropout=0.5,
            normalize_features=False,
            seed=3,
        ),
        ModelConfig(num_classes=2, weights="/tmp/w.weights.h5"),
        TrainingConfig(
            head_epochs=0,
            finetune_epochs=3,
            head_lr=0.01,
            finetune_lr=1e-5,
            momentum=0.5,
            unfreeze="block5_conv1",
            deterministic=False,
        ),
        TrainingConfig(unfreeze=3),
    ],
)
def test_to_dict_from_dict_round_trip_through_json(config):
    values = to_dict(config)
    text = json.dumps(values)
    restored = from_dict(type(config), json.loads(text))
    assert restored == config
    assert to_dict(restored) == values
    for name in ("image_size", "dense_units"):
        if hasattr(restored, name):
            assert isinstance(getattr(restored, name), tuple)


def test_to_dict_is_flat_and_names_every_field():
    values = to_dict(ModelConfig(num_classes=3))
    assert values["num_classes"] == 3
    assert values["backbone"] == "vgg16"
    assert values["image_size"] == (224, 224)
    assert set(values) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_from_dict_ignores_unknown_keys():
    values = to_dict(TrainingConfig(head_epochs=2)) | {"added_later": 1}
    assert from_dict(TrainingConfig, values) == TrainingConfig(head_epochs=2)


def test_from_dict_gives_a_record_without_an_option_its_value_before_it_existed():
    """A run recorded before quarter turns existed did not turn: `reproduce` must not
    decide them anew (today's default, "auto", could)."""
    older = from_dict(DataConfig, {"directory": "d", "flip": "auto"})
    assert (older.quarter_turns, older.flip) == (False, "auto")
    assert from_dict(DataConfig, {"directory": "d"}).flip is True
    recorded = from_dict(DataConfig, {"directory": "d", "quarter_turns": "auto"})
    assert recorded.quarter_turns == "auto" == DataConfig("d").quarter_turns


def test_from_dict_validates():
    values = to_dict(DataConfig(directory="d")) | {"batch_size": 0}
    with pytest.raises(KerasFTError, match="`batch_size`"):
        from_dict(DataConfig, values)


@pytest.mark.parametrize(
    ("values", "argument"),
    [
        ({"class_weight": "sometimes"}, "class_weight"),
        ({"class_weight": {"cat": -1.0}}, "class_weight"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"finetune_schedule": "step"}, "finetune_schedule"),
        (
            {"finetune_epochs": 2, "warmup_epochs": 3, "finetune_schedule": "cosine"},
            "warmup_epochs",
        ),
        ({"warmup_epochs": 1}, "warmup_epochs"),
        ({"early_stopping": 0}, "early_stopping"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"weight_decay": "1e-4"}, "weight_decay"),
        ({"head_init": "zeros"}, "head_init"),
        ({"refit_probe": True}, "refit_probe"),
    ],
)
def test_training_options_are_checked(values, argument):
    with pytest.raises(KerasFTError, match=f"`{argument}`"):
        TrainingConfig(**values)


def test_training_options_round_trip_through_json():
    config = TrainingConfig(
        class_weight={"cat": 2.0},
        label_smoothing=0.1,
        finetune_schedule="cosine",
        warmup_epochs=2,
        early_stopping=3,
    )
    assert from_dict(TrainingConfig, json.loads(json.dumps(to_dict(config)))) == config


# ------------------------------------------------------------ the options table


@pytest.mark.parametrize("cls", [DataConfig, ModelConfig, TrainingConfig])
def test_every_field_declares_its_help_and_check(cls):
    for name, declared in options_of(cls).items():
        assert declared.help.strip(), name
        assert (declared.valid is None) == (declared.expected == ""), name


def test_a_field_is_checked_from_its_declared_option():
    declared = options_of(TrainingConfig)["momentum"]
    assert isinstance(declared.valid, Range) and str(declared.valid) == "a float in [0, 1)"
    with pytest.raises(KerasFTError) as error:
        TrainingConfig(momentum=1.0)
    assert str(error.value) == "Invalid `momentum`: expected a float in [0, 1), received 1.0."


@pytest.mark.parametrize(
    ("constraint", "inside", "outside", "words"),
    [
        (Range(1, integer=True), [1, 7], [0, 1.0, True, "2"], "an int >= 1"),
        (Range(0.0, 1.0, closed="left"), [0, 0.5], [1.0, -0.1, float("nan")], "a float in [0, 1)"),
        (Range(0.0, closed="neither"), [1e-9], [0.0, "auto"], "a float > 0"),
        (Range(integer=True), [-3, 0], [0.5, "42"], "an int"),
        (SEED, [0, 2**32 - 1], [-1, 2**32], "an int in [0, 4294967295]"),  # ints in full
    ],
)
def test_range_checks_and_says_what_it_allows(constraint, inside, outside, words):
    assert all(constraint(v) for v in inside)
    assert not any(constraint(v) for v in outside)
    assert str(constraint) == words


def test_only_deterministic_and_strategy_act_before_fit():
    assert CONSTRUCTOR_OPTIONS == ("deterministic", "strategy")
    assert set(FIT_OPTIONS) | set(CONSTRUCTOR_OPTIONS) == set(options_of(TrainingConfig))
