"""`FineTuner`: its options come from the configs; `from_configs` is the one way to build it."""

import inspect
import json
import re

import pytest
from conftest import tiny_backbone

import keras_ft
from keras_ft.config import (
    CONSTRUCTOR_OPTIONS,
    FIT_OPTIONS,
    ModelConfig,
    TrainingConfig,
    defaults_of,
    options_of,
)


def test_fit_signature_and_docstring_list_every_training_option():
    parameters = inspect.signature(keras_ft.FineTuner.fit).parameters
    defaults = defaults_of(TrainingConfig)
    for name in FIT_OPTIONS:
        assert parameters[name].default == defaults[name], name
        assert parameters[name].kind == inspect.Parameter.KEYWORD_ONLY
    assert not set(CONSTRUCTOR_OPTIONS) & set(parameters)
    assert {"recipe", "callbacks", "checkpoint_dir", "resume"} <= set(parameters)
    doc = inspect.getdoc(keras_ft.FineTuner.fit)
    for name in FIT_OPTIONS:  # each entry at the Args level, with the field's help
        first_words = options_of(TrainingConfig)[name].help.split()[0]
        assert f"\n    {name}: {first_words}" in doc, name


def test_constructor_signature_and_docstring_list_the_model_options():
    parameters = inspect.signature(keras_ft.FineTuner).parameters
    model = defaults_of(ModelConfig)
    for name in ("weights", "pooling", "dense_units", "dropout", "mixed_precision", "head"):
        assert parameters[name].default == model[name], name
    assert parameters["image_size"].default is None  # taken from the data
    assert parameters["strategy"].default == "auto" and parameters["deterministic"].default
    doc = inspect.getdoc(keras_ft.FineTuner)
    assert "\n    normalize_features: batch-normalise" in doc
    assert "\n    strategy: how to spread training" in doc


def test_an_unknown_option_is_a_type_error_naming_it(folder):
    with pytest.raises(TypeError, match="unexpected keyword argument 'head_epoch'"):
        keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", head_epoch=1)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf")
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, quiet=True)
    with pytest.raises(TypeError, match=r"FineTuner.fit\(\) got an unexpected keyword argument"):
        tuner.fit(data, deterministic=False)  # a constructor option, not fit's


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [("seed", -1, "an int in [0, 4294967295]"), ("dropout", 1.5, "a float in [0, 1)")],
)
def test_model_options_are_checked_by_the_constructor(option, value, expected):
    """Before anything is built: a negative seed reached NumPy's seeding as a ValueError."""
    with pytest.raises(keras_ft.KerasFTError, match=rf"`{option}`: expected {re.escape(expected)}"):
        keras_ft.FineTuner("vgg16", weights=None, **{option: value})


def test_from_configs_trains_with_the_training_config_it_was_given(folder):
    training = TrainingConfig(
        head_epochs=1,
        finetune_epochs=1,
        momentum=0.5,
        unfreeze=2,
        label_smoothing=0.1,
        deterministic=False,
        strategy="none",
    )
    tuner = keras_ft.FineTuner.from_configs(
        {"backbone": tiny_backbone(), "dropout": 0.1, "seed": 0}, training, preprocessing="tf"
    )
    assert (tuner.deterministic, tuner.strategy) == (False, "none")
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=8, seed=0, quiet=True)
    tuner.fit(data, recipe=None, verbose=0, tensorboard_dir=None)  # no recipe: exactly these
    assert tuner.training_config == training
    assert tuner.model_config.dropout == 0.1 and tuner.model_config.num_classes == 2
    tuner.fit(data, finetune_epochs=2, recipe=None, verbose=0, tensorboard_dir=None)  # overrides
    assert tuner.training_config.finetune_epochs == 2 and tuner.training_config.momentum == 0.5


@pytest.mark.filterwarnings("ignore:Fine-tuning reached")  # untrained: below the probe
def test_a_training_split_smaller_than_one_batch_trains(folder):
    """24 images, 19 of them for training: one partial batch per epoch, as Keras trains it."""
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=32, seed=0, quiet=True)
    assert len(data.train_files) < 32
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    history = tuner.fit(
        data, head_epochs=1, finetune_epochs=1, recipe=None, verbose=0, tensorboard_dir=None
    )
    assert len(history.history["loss"]) == 2


def test_fit_takes_a_dataset_from_image_dataset_from_directory(folder, tmp_path, monkeypatch):
    """Trained and saved as from a folder; the run records no data files, so no reproduce."""
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        folder, image_size=(32, 32), batch_size=8, seed=0, verbose=False
    )
    tuner = keras_ft.FineTuner("testnet", weights=None, seed=0)
    history = tuner.fit(
        dataset, head_epochs=1, finetune_epochs=1, recipe=None, verbose=0, tensorboard_dir=None
    )
    assert len(history.history["loss"]) == 2
    assert tuner.class_names == ("cat", "dog") and tuner.model_config.image_size == (32, 32)
    assert tuner.data_config.batch_size == 8 and tuner.data_config.validation_split == 0
    # The SavedModel export (most of save's time) is tested in test_artifacts.
    monkeypatch.setattr("keras_ft.runs.artifacts.export_saved_model", lambda model, path: None)
    run = tuner.save(tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "data_files" not in record and "data_fingerprint" not in record
    assert keras_ft.load(run).predict([folder / "cat" / "000.png"])[0]["label"] in ("cat", "dog")
    with pytest.raises(keras_ft.KerasFTError, match="cannot be re-trained"):
        keras_ft.reproduce_run(run)
