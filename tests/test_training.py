import keras
import numpy as np
import pytest
from conftest import tiny_backbone

import keras_ft
from keras_ft.model import backbone_of


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_two_phases_on_one_epoch_axis(split_folders):
    train, test = split_folders
    data = keras_ft.ImageFolder(
        train, test_dir=test, image_size=32, batch_size=8, validation_split=0.25, seed=0
    )
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.build(data.image_size, data.num_classes)
    backbone = backbone_of(tuner.model)
    start = [np.copy(w) for w in backbone.get_weights()]
    recorder = EpochRecorder()
    head_only = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                head_only["weights"] = [np.copy(w) for w in backbone.get_weights()]

    history = tuner.fit(
        data,
        head_epochs=2,
        finetune_epochs=2,
        finetune_lr=0.05,
        callbacks=[recorder, Snapshot()],
        verbose=0,
    )
    assert history.history["phase"] == ["head", "head", "finetune", "finetune"]
    assert history.history["epoch"] == [1, 2, 3, 4]
    assert recorder.epochs == [0, 1, 2, 3]  # user callbacks see both phases
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    for before, after in zip(start, head_only["weights"], strict=True):
        np.testing.assert_array_equal(before, after)  # phase 1 leaves the backbone alone
    changed = [not np.array_equal(a, b) for a, b in zip(start, backbone.get_weights(), strict=True)]
    assert any(changed)  # phase 2 fine-tunes it
    assert isinstance(tuner.model.optimizer, keras.optimizers.SGD)
    assert float(tuner.model.optimizer.momentum) == 0.9
    assert tuner.metrics["count"] == 12


def test_learns_an_easy_task(split_folders):
    train, test = split_folders
    data = keras_ft.ImageFolder(
        train,
        test_dir=test,
        image_size=32,
        batch_size=8,
        validation_split=0.0,
        seed=0,
        augment=False,
    )
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=15, finetune_epochs=0, head_lr=1e-2, verbose=0)
    assert tuner.metrics["accuracy"] >= 0.9


def test_mixed_precision_computes_in_half_and_outputs_float32(split_folders):
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", mixed_precision="bfloat16")
    tuner.fit(data, head_epochs=1, finetune_epochs=1, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # not leaked
    assert tuner.model.get_layer("preprocess").compute_dtype == "bfloat16"
    assert tuner.model.get_layer("predictions").compute_dtype == "float32"
    assert tuner.model.get_layer("predictions").kernel.dtype == "float32"
    assert np.isfinite(tuner.history.history["loss"]).all()


def test_jit_compile_needs_determinism_off(split_folders):
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf")
    with pytest.raises(
        keras_ft.KerasFTError, match="conflicts with op determinism.*--no-determinism"
    ):
        tuner.fit(data, head_epochs=1, finetune_epochs=0, jit_compile=True, verbose=0)
    assert tuner.history.rows == []  # refused before training
