"""keras_ft.training.decisions and keras_ft.training.resolve: what "auto" decided, recorded
once and replayed; keras_ft.config.run: a run's whole configuration from its record."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_backbone, write_folder

import keras_ft
from keras_ft.config import DataConfig, ModelConfig, RunConfig, TrainingConfig, to_dict
from keras_ft.training.decisions import Decisions

FLIPPED = {"flip": True, "accuracy": 1.0, "mirrored_accuracy": 1.0, "reason": "flip: ..."}
RATE = {"suggestion": 0.01, "steepest": 0.02}


def test_decisions_round_trip_through_the_record():
    record = {"flip": FLIPPED, "head_lr": RATE, "fallback": {"kept": "head"}}
    decisions = Decisions.from_record(record)
    assert decisions.augmentation == {"flip": FLIPPED}
    assert decisions.head_lr == RATE and decisions.finetune_lr is None
    assert decisions.record() == record
    assert Decisions.from_record(None).record() == {}


def test_augmented_resolves_auto_from_the_decisions_and_reads_older_records():
    decisions = Decisions.from_record({"flip": FLIPPED})
    auto = {"augment": True, "flip": "auto", "quarter_turns": "auto"}
    assert decisions.augmented(auto) == {"flip": True, "quarter_turns": False}
    assert decisions.symmetries(auto) == ("flip",)
    assert decisions.symmetries({**auto, "augment": False}) == ()  # nothing augmented
    # A record from before the options existed trained with flips, not with turns.
    assert Decisions().symmetries({"augment": True}) == ("flip",)
    assert Decisions().symmetries({**auto, "flip": False, "quarter_turns": True}) == (
        "quarter_turns",
    )


def test_run_config_from_a_record_and_its_one_image_size(tmp_path):
    data = DataConfig(str(tmp_path), image_size=(32, 32), seed=3)
    model = ModelConfig(2, backbone="vgg16", image_size=(32, 32), seed=3)
    config = RunConfig(data, model, TrainingConfig(head_epochs=1), {"name": "auto", "applied": {}})
    assert (config.seed, config.image_size) == (3, (32, 32))
    assert RunConfig.from_record(config.record()) == config
    older = config.record()
    del older["data"]["flip"], older["model"]["preprocessing_layers"]  # before they existed
    rebuilt = RunConfig.from_record(older)
    assert rebuilt.data.flip is True and rebuilt.model.preprocessing_layers == "keras_ft"
    with pytest.raises(keras_ft.KerasFTError, match=r"Invalid `image_size`: expected the data's"):
        RunConfig(data, ModelConfig(2, image_size=(64, 64)), TrainingConfig())
    damaged = {**config.record(), "training": {"head_epochs": -1}}
    with pytest.raises(keras_ft.KerasFTError, match=r"'run/run.json' is damaged: 'training'"):
        RunConfig.from_record(damaged, "run/run.json")


def test_fit_replays_given_decisions_instead_of_measuring(tmp_path):
    """Decisions passed to `fit` (as `reproduce` passes a run's) are not taken again: a
    flip decided in the record trains as flip=True, whatever the data would decide."""
    train = write_folder(tmp_path / "train", ("red", "green", "blue"), per_class=6, size=32)
    weights, records = {}, {}
    for name, flip, decisions in (
        ("replayed", "auto", Decisions.from_record({"flip": {**FLIPPED}})),
        ("told", True, None),
    ):
        data = keras_ft.ImageFolder(
            train, image_size=32, batch_size=8, validation_split=0.0, seed=0, flip=flip,
            quarter_turns=False,
        )  # fmt: skip
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        options = dict(head_epochs=1, finetune_epochs=1, recipe=None, verbose=0)
        tuner.fit(data, **options, decisions=decisions)
        weights[name], records[name] = tuner.model.get_weights(), tuner.record["decisions"]
    assert records["replayed"] == {"flip": FLIPPED} and records["told"] == {}
    assert all(np.array_equal(a, b) for a, b in zip(*weights.values(), strict=True))
    assert to_dict(tuner.run_config.data)["flip"] is True  # told: the config as given
