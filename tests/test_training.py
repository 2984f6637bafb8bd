import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_backbone, write_folder, write_noise_folder

import keras_ft
from keras_ft.config import TrainingConfig
from keras_ft.models.classifier import backbone_of, split_at_features
from keras_ft.models.probe import linear_probe
from keras_ft.training.features import frozen_features
from keras_ft.training.history import advice
from keras_ft.training.phases import fit_two_phase


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
        recipe=None,  # no fallback: the backbone ends as phase 2 left it
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


def test_mixed_precision_phase_1_trains_on_float32_cached_features(split_folders):
    """The backbone computes its features in bfloat16; cached, they are float32, so phase 1
    trains on them (it failed with "pyfunc returned bfloat16, expects float") and the
    feature norm starts at their float32 statistics (NumPy's bfloat16 mean was far off)."""
    from keras_ft.models.classifier import split_at_features
    from keras_ft.training.features import extract_features

    train, _ = split_folders
    data = keras_ft.ImageFolder(
        train, image_size=32, batch_size=8, validation_split=0.25, augment=False, seed=0
    )
    tuner = keras_ft.FineTuner(
        tiny_backbone(), preprocessing="tf", mixed_precision="bfloat16", seed=0
    )
    tuner.build(data.image_size, data.num_classes)
    features, _ = extract_features(split_at_features(tuner.model)[0], data.unaugmented_train())
    assert features.dtype == np.float32
    seen = {}

    class AtStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            norm = tuner.model.get_layer("feature_norm")
            seen.setdefault("mean", np.asarray(norm.moving_mean))  # phase 1's start

    tuner.fit(data, head_epochs=2, finetune_epochs=1, callbacks=[AtStart()], verbose=0)
    assert np.isfinite(tuner.history.history["loss"]).all()
    assert [row["phase"] for row in tuner.history.rows] == ["head", "head", "finetune"]
    np.testing.assert_allclose(seen["mean"], features.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_jit_compile_needs_determinism_off(split_folders):
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf")
    with pytest.raises(
        keras_ft.KerasFTError, match="conflicts with op determinism.*--no-determinism"
    ):
        tuner.fit(data, head_epochs=1, finetune_epochs=0, jit_compile=True, verbose=0)
    assert tuner.history.rows == []  # refused before training


@pytest.fixture
def imbalanced(tmp_path):
    from conftest import write_folder

    write_folder(tmp_path / "data", ("common",), per_class=32, seed=1)
    return write_folder(tmp_path / "data", ("rare",), per_class=8, seed=2)


def test_imbalance_warns_and_balanced_weights_follow_sklearn(imbalanced):
    from keras_ft.config import TrainingConfig
    from keras_ft.training.optimizers import class_weights

    with pytest.warns(UserWarning, match="'common' has 32 images, 'rare' 8.*class_weight"):
        data = keras_ft.ImageFolder(imbalanced, image_size=32, batch_size=8, validation_split=0)
    weights = class_weights(TrainingConfig(class_weight="balanced"), data)
    assert weights == pytest.approx({0: 40 / (2 * 32), 1: 40 / (2 * 8)})
    assert class_weights(TrainingConfig(class_weight={"rare": 3.0}), data) == {0: 1.0, 1: 3.0}
    with pytest.raises(keras_ft.KerasFTError, match=r"unknown class\(es\) \['zebra'\]"):
        class_weights(TrainingConfig(class_weight={"zebra": 2.0}), data)


def test_class_weight_changes_what_the_model_favours(imbalanced):
    with pytest.warns(UserWarning):
        data = keras_ft.ImageFolder(
            imbalanced, image_size=32, batch_size=8, validation_split=0, augment=False
        )
    recalls = {}
    for weight in (None, {"common": 0.01, "rare": 100.0}):
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(
            data,
            head_epochs=3,
            finetune_epochs=0,
            head_lr=0.05,
            class_weight=weight,
            verbose=0,
            evaluate=False,
        )
        metrics = tuner.evaluate(data.unaugmented_train())
        recalls[weight is None] = metrics["per_class"]["rare"]["recall"]
    assert recalls[False] == 1.0 and recalls[False] > recalls[True]


def test_label_smoothing_loss_matches_its_formula():
    from keras_ft.training.optimizers import SparseSmoothedCrossentropy

    probabilities = np.array([[0.7, 0.2, 0.1]], "float32")
    loss = float(SparseSmoothedCrossentropy(0.3)(np.array([0]), probabilities))
    targets = np.array([0.7 + 0.1, 0.1, 0.1])  # 1 - 0.3 + 0.3 / 3, and 0.3 / 3
    assert loss == pytest.approx(-(targets * np.log(probabilities[0])).sum(), rel=1e-5)


def test_label_smoothing_is_used_by_training(split_folders):
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf")
    tuner.fit(data, head_epochs=0, finetune_epochs=1, label_smoothing=0.2, verbose=0)
    assert tuner.model.loss.label_smoothing == 0.2


def test_warmup_then_cosine_schedule():
    from keras_ft.training.optimizers import finetune_learning_rate

    config = TrainingConfig(
        finetune_epochs=4, finetune_lr=0.1, finetune_schedule="cosine", warmup_epochs=1
    )
    schedule = finetune_learning_rate(config, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.05) and rates[2] == pytest.approx(0.1)
    assert rates[2] > rates[3] > rates[4] and rates[4] == pytest.approx(0.0, abs=1e-7)
    assert finetune_learning_rate(TrainingConfig(), 10) == 1e-4  # constant by default


def test_early_stopping_stops_the_phase_and_keeps_the_best_weights(tmp_path, split_folders, capsys):
    # Pure noise at a learning rate so large that the validation loss rises after the first
    # epoch: the best epoch and the last differ, in loss and in weights.
    noise = write_noise_folder(tmp_path / "noise")
    data = keras_ft.ImageFolder(noise, image_size=32, batch_size=8, validation_split=0.25, seed=0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    snapshots = []

    class Snapshot(keras.callbacks.Callback):  # the trained weights at each epoch's end
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([np.copy(w) for w in self.model.get_weights()])

    snapshot = Snapshot()
    tuner.fit(
        data, head_epochs=10, finetune_epochs=0, head_lr=1.0, early_stopping=1, recipe=None,
        callbacks=[snapshot], verbose=2,
    )  # fmt: skip
    losses = tuner.history.history["val_loss"]
    assert len(losses) < 10 and len(snapshots) == len(losses)  # stopped early
    best = int(np.argmin(losses))
    assert best < len(losses) - 1 and losses[best] < losses[-1]  # the last epoch is not the best
    assert any(
        not np.array_equal(a, b) for a, b in zip(snapshots[best], snapshots[-1], strict=True)
    )
    # The best epoch's weights are restored, not the last epoch's.
    for kept, at_best in zip(snapshot.model.get_weights(), snapshots[best], strict=True):
        np.testing.assert_array_equal(kept, at_best)
    assert tuner.model.evaluate(data.validation, verbose=0)[0] == pytest.approx(
        losses[best], rel=1e-4
    )  # Keras's loss, as in history
    stopped = f"phase 1 (head) stopped early at epoch {len(losses)} ({len(losses)} of 10 epochs)"
    assert tuner.advice[0].startswith(stopped)
    assert f"kept the weights of epoch {best + 1}." in tuner.advice[0]
    assert f"advice: {stopped}" in capsys.readouterr().out
    train, _ = split_folders
    with pytest.raises(keras_ft.KerasFTError, match="validation_split is 0"):
        no_validation = keras_ft.ImageFolder(
            train, image_size=32, batch_size=8, validation_split=0.0
        )
        tuner.fit(no_validation, head_epochs=2, finetune_epochs=0, early_stopping=1, verbose=0)


def test_feature_cache_gives_the_result_of_recomputing_the_backbone(split_folders, capsys):
    train, _ = split_folders
    weights = {}
    for cache in (True, False):
        data = keras_ft.ImageFolder(
            train, image_size=32, batch_size=8, validation_split=0.25, augment=False, seed=0
        )
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(data, head_epochs=3, finetune_epochs=0, feature_cache=cache, verbose=0)
        weights[cache] = tuner.model.get_weights()
    for cached, recomputed in zip(weights[True], weights[False], strict=True):
        np.testing.assert_allclose(cached, recomputed, atol=1e-6)
    assert "cannot be cached" not in capsys.readouterr().out


def test_augmentation_keeps_the_full_phase_1_and_says_so(split_folders, capsys):
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0, seed=0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=2)
    assert "augmentation is on, so its features change each epoch" in capsys.readouterr().out


def test_head_copies_train_phase_1_on_each_epochs_augmented_features(split_folders, capsys):
    """As many copies as epochs train the head as running the backbone on every batch does
    (to float rounding); with fewer, epoch e reuses copy e mod copies."""
    train, _ = split_folders

    def fit(**options):
        data = keras_ft.ImageFolder(
            train, image_size=32, batch_size=8, validation_split=0.25, seed=0
        )
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(data, recipe=None, head_epochs=3, finetune_epochs=0, verbose=2, **options)
        return tuner.model.get_weights(), capsys.readouterr().out

    every_batch, _ = fit()
    three, out = fit(head_copies=3)
    assert "Backbone features of 3 augmented copies of the training images" in out
    assert "frozen backbone's cached features of 3 augmented copies" in out
    for expected, got in zip(every_batch, three, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    two, out = fit(head_copies=2)
    assert "of 2 augmented copies" in out
    moved = max(np.abs(a - b).max() for a, b in zip(every_batch, two, strict=True))
    assert moved > 1e-5  # epoch 2 trained on epoch 0's augmentation
    with pytest.raises(keras_ft.KerasFTError, match="`head_copies`"):
        TrainingConfig(head_copies=2, head_augment=False)


def test_cached_phase_1_starts_the_feature_norm_at_the_features_statistics(split_folders):
    from keras_ft.models.classifier import split_at_features
    from keras_ft.training.features import extract_features

    train, _ = split_folders
    data = keras_ft.ImageFolder(
        train, image_size=32, batch_size=8, validation_split=0.25, augment=False, seed=0
    )
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    seen = {}

    class AtStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            norm = tuner.model.get_layer("feature_norm")
            seen["mean"] = np.asarray(norm.moving_mean)
            seen["variance"] = np.asarray(norm.moving_variance)

    tuner.build(data.image_size, data.num_classes)
    features, _ = extract_features(split_at_features(tuner.model)[0], data.unaugmented_train())
    tuner.fit(data, head_epochs=1, finetune_epochs=0, callbacks=[AtStart()], verbose=0)
    assert not np.allclose(features.var(axis=0), 1.0, atol=0.1)  # unlike the initial 0 and 1
    np.testing.assert_allclose(seen["mean"], features.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen["variance"], features.var(axis=0), rtol=1e-5, atol=1e-6)


def test_head_augment_false_trains_phase_1_on_the_unaugmented_features(split_folders, capsys):
    train, _ = split_folders
    weights = {}
    for augment in (True, False):
        data = keras_ft.ImageFolder(
            train, image_size=32, batch_size=8, validation_split=0.25, augment=augment, seed=0
        )
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(data, head_epochs=3, finetune_epochs=0, head_augment=False, verbose=0)
        weights[augment] = tuner.model.get_weights()
    for augmented_data, plain in zip(weights[True], weights[False], strict=True):
        np.testing.assert_array_equal(augmented_data, plain)  # the same cached features
    assert "cannot be cached" not in capsys.readouterr().out
    with pytest.raises(keras_ft.KerasFTError, match="`head_augment`"):
        TrainingConfig(head_augment=False, feature_cache=False)


def test_train_batchnorm_moves_the_backbones_statistics_in_phase_2_only(split_folders):
    """Frozen by default, the backbone's BatchNormalization ends a fit as it was built;
    with train_batchnorm phase 2 trains it (and phase 1 still does not)."""
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, augment=False, seed=0)
    start = tiny_backbone().get_layer("bn_a").get_weights()
    moved = {}
    for train_batchnorm, finetune_epochs in ((False, 1), (True, 0), (True, 1)):
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(
            data, head_epochs=1, finetune_epochs=finetune_epochs, recipe=None, verbose=0,
            train_batchnorm=train_batchnorm,
        )  # fmt: skip
        after = backbone_of(tuner.model).get_layer("bn_a").get_weights()
        moved[train_batchnorm, finetune_epochs] = [
            not np.array_equal(x, y) for x, y in zip(start, after, strict=True)
        ]
    assert moved == {(False, 1): [False] * 4, (True, 0): [False] * 4, (True, 1): [True] * 4}


def test_fallback_to_head_keeps_the_head_when_fine_tuning_hurts(split_folders, capsys):
    train, _ = split_folders
    data = keras_ft.ImageFolder(
        train, image_size=32, batch_size=8, validation_split=0.25, augment=False, seed=0
    )
    results = {}
    for finetune_epochs, fallback in ((0, False), (2, False), (2, True)):
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(
            data, head_epochs=3, finetune_epochs=finetune_epochs, head_lr=1e-2,
            finetune_lr=5.0, fallback_to_head=fallback, recipe=None, verbose=0,
        )  # fmt: skip
        results[finetune_epochs, fallback] = tuner
    head, wrecked, kept = results[0, False], results[2, False], results[2, True]
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(head.model.get_weights(), wrecked.model.get_weights(), strict=True)
    )  # a learning rate of 5 ruins the model ...
    for a, b in zip(head.model.get_weights(), kept.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # ... and the fallback puts the head back
    decision = kept.record["decisions"]["fallback"]
    assert decision["kept"] == "head"
    assert decision["finetune_val_loss"] >= decision["head_val_loss"]
    head_rows = [r for r in kept.history.rows if r["phase"] == "head"]
    assert decision["kept_val_accuracy"] == pytest.approx(head_rows[-1]["val_accuracy"])
    assert any("the head's weights were kept" in message for message in kept.advice)
    with pytest.raises(keras_ft.KerasFTError, match="`fallback_to_head`"):
        unvalidated = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0)
        keras_ft.FineTuner(tiny_backbone(), preprocessing="tf").fit(
            unvalidated, head_epochs=1, finetune_epochs=1, fallback_to_head=True, verbose=0
        )


def test_fallback_to_mixes_keeps_the_weight_space_mix_with_the_lowest_loss(split_folders):
    """Each mix is `a` x the fine-tuned weights + `1 - a` x the phase-1 head's (on the frozen
    backbone), scored on validation; the lowest loss is kept. Phase 2 at rate 0.025 overshoots
    (a validation loss of 23 after it, 0.61 before), and a mix scores below both."""
    train, _ = split_folders
    data = keras_ft.ImageFolder(
        train, image_size=32, batch_size=8, validation_split=0.25, augment=False, seed=0
    )
    fitted = {}
    for finetune_epochs, mixes in ((0, ()), (2, ()), (2, (0.25, 0.5, 0.75))):
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(
            data, head_epochs=3, finetune_epochs=finetune_epochs, finetune_lr=0.025,
            fallback_to_head=bool(mixes), fallback_to_mixes=mixes, recipe=None, verbose=0,
        )  # fmt: skip
        fitted[mixes or finetune_epochs] = tuner
    head, tuned = fitted[0].model.get_weights(), fitted[2].model.get_weights()
    mixed = fitted[(0.25, 0.5, 0.75)]
    decision = mixed.record["decisions"]["fallback"]
    assert decision["kept"] == "mix", decision
    losses = {"finetune": decision["finetune_val_loss"], **decision["mix_val_losses"]}
    assert set(losses) == {"finetune", "0.25", "0.5", "0.75"}
    assert f"{decision['mix']:g}" == min(losses, key=losses.get)
    assert losses[f"{decision['mix']:g}"] < min(decision["head_val_loss"], losses["finetune"])
    mix = decision["mix"]
    expected = [mix * t + (1 - mix) * h for t, h in zip(tuned, head, strict=True)]
    for a, b in zip(mixed.model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert f"kept mix {decision['mix']:g}: " in decision["reason"]
    measured = mixed.model.evaluate(data.validation, verbose=0, return_dict=True)
    assert measured["loss"] == pytest.approx(losses[f"{decision['mix']:g}"], rel=1e-5)
    assert decision["kept_val_accuracy"] == pytest.approx(measured["accuracy"])
    with pytest.raises(keras_ft.KerasFTError, match="Invalid `fallback_to_mixes`.*validation"):
        unvalidated = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0)
        keras_ft.FineTuner(tiny_backbone(), preprocessing="tf").fit(
            unvalidated, head_epochs=1, finetune_epochs=1, fallback_to_mixes=(0.5,), verbose=0
        )
    with pytest.raises(keras_ft.KerasFTError, match="fractions strictly between 0 and 1"):
        TrainingConfig(fallback_to_mixes=(0.5, 1.0))


def ruined_run(data, **fallbacks):
    """A tuner fitted with no phase 1 and a ruinous phase 2 (rate 5), and its fallback decision."""
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    tuner.fit(
        data, head_epochs=0, finetune_epochs=2, finetune_lr=5.0, recipe=None, verbose=0,
        **fallbacks,
    )  # fmt: skip
    return tuner, tuner.record["decisions"]["fallback"]


def probabilities(probe, features):
    """`probe`'s class probabilities of `features`."""
    kernel, bias = probe.folded()
    return keras.ops.softmax(features @ kernel + bias).numpy()


def test_fallback_to_probe_makes_the_linear_probe_the_model_when_its_loss_is_lowest(
    split_folders,
):
    """No phase 1 (the head as initialised) and a ruinous phase 2 (rate 5, its loss NaN): the
    probe has the lowest validation loss, and the model then is the probe on the untouched
    backbone."""
    train, _ = split_folders
    data = keras_ft.ImageFolder(
        train, image_size=32, batch_size=8, validation_split=0.25, augment=False, seed=0
    )
    tuner, decision = ruined_run(data, fallback_to_head=True, fallback_to_probe=True)
    assert decision["kept"] == "probe", decision
    others = (decision["head_val_loss"], decision["finetune_val_loss"])
    assert decision["probe_val_loss"] < min(others)
    assert any("the model is that linear probe" in message for message in tuner.advice)
    assert tuner.record["linear_probe"]["is_the_model"] is True
    # The metrics, their printed form and the report's title name the model kept.
    from keras_ft.runs.evaluation import format_metrics

    assert tuner.kept_model == "linear probe"
    metrics = tuner.evaluate(data.validation)
    assert metrics["kept_model"] == "linear probe"
    assert format_metrics(metrics).startswith("model kept: the linear probe\ntest loss:")
    from keras_ft.runs.report import write_report

    page = (write_report(tuner, split_folders[0].parent / "report")).read_text()
    assert "<h1>keras_ft run: tiny, 3 classes; the model is the linear probe</h1>" in page
    # The backbone is the one phase 2 started from (the untrained, seeded tiny backbone) ...
    for a, b in zip(
        backbone_of(tuner.model).get_weights(), tiny_backbone().get_weights(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # ... and the classifier's probabilities are the probe's on its features.
    extractor, _ = split_at_features(tuner.model)
    features = frozen_features(extractor, data)
    expected = probabilities(linear_probe(*features, num_classes=3), features[2])
    np.testing.assert_allclose(tuner.model.predict(data.validation, verbose=0), expected, atol=1e-5)
    assert decision["kept_val_accuracy"] == pytest.approx(
        np.mean(expected.argmax(1) == features[3])
    )
    # With refit_probe the kept probe is fitted again on training and validation images.
    refitted, decision = ruined_run(data, fallback_to_probe=True, refit_probe=True)
    images = len(data.train_files) + len(data.validation_files)
    assert decision["kept"] == "probe" and decision["probe_refit_images"] == images == 48
    assert f"refitted on the {images} training and validation images" in decision["reason"]
    both = np.concatenate(features[::2]), np.concatenate(features[1::2])
    expected = probabilities(linear_probe(*both, num_classes=3), features[2])
    predicted = refitted.model.predict(data.validation, verbose=0)
    np.testing.assert_allclose(predicted, expected, atol=1e-5)


def test_fallback_to_probe_refuses_what_it_cannot_compare_or_hold(split_folders):
    train, _ = split_folders
    unvalidated = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0)
    with pytest.raises(keras_ft.KerasFTError, match="Invalid `fallback_to_probe`.*validation"):
        keras_ft.FineTuner(tiny_backbone(), preprocessing="tf").fit(
            unvalidated, head_epochs=1, finetune_epochs=1, fallback_to_probe=True, verbose=0
        )
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.25)
    hidden = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", dense_units=[16])
    with pytest.raises(keras_ft.KerasFTError, match="Pass dense_units=\\(\\) or fallback"):
        hidden.fit(data, head_epochs=1, finetune_epochs=1, fallback_to_probe=True, verbose=0)
    assert hidden.history is None or hidden.history.rows == []  # refused before training


def test_head_init_probe_starts_the_head_as_the_linear_probe(split_folders):
    """Phase 2 (no phase 1) starts from exactly the probe on the frozen features, the head's
    BatchNormalization standardising as the probe does; no validation split needed."""
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0, seed=0)
    tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    start = {}

    class Start(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            start["weights"] = self.model.get_weights()

    tuner.fit(
        data, head_epochs=0, finetune_epochs=1, head_init="probe", callbacks=[Start()], verbose=0
    )
    assert "linear_probe" not in tuner.record  # nothing to score it on
    tuner.model.set_weights(start["weights"])
    extractor, _ = split_at_features(tuner.model)
    features = frozen_features(extractor, data)
    probe = linear_probe(*features, num_classes=3)
    norm = tuner.model.get_layer("feature_norm")
    np.testing.assert_allclose(norm.moving_mean.numpy(), probe.mean, rtol=1e-6)
    expected = probabilities(probe, features[0])
    predicted = tuner.model.predict(data.unaugmented_train(), verbose=0)
    np.testing.assert_allclose(predicted, expected, atol=1e-5)


def test_head_init_probe_refuses_a_head_the_probe_cannot_be(split_folders):
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.25)
    hidden = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", dense_units=[16])
    with pytest.raises(keras_ft.KerasFTError, match='Invalid `head_init`.*head_init="random"'):
        hidden.fit(data, head_epochs=1, finetune_epochs=1, head_init="probe", verbose=0)
    with pytest.raises(keras_ft.KerasFTError, match="`head_init`.*one of \\('random', 'probe'\\)"):
        keras_ft.FineTuner(tiny_backbone(), preprocessing="tf").fit(data, head_init="linear")


def rows(phase, losses, accuracies, start=1):
    return [
        {"epoch": start + i, "phase": phase, "val_loss": loss, "val_accuracy": accuracy}
        for i, (loss, accuracy) in enumerate(zip(losses, accuracies, strict=True))
    ]


def test_advice_says_stopped_early_still_improving_and_below_the_head():
    config = TrainingConfig(head_epochs=4, finetune_epochs=6, early_stopping=2)
    history = rows("head", [1.0, 0.8, 0.7, 0.6], [0.5, 0.6, 0.7, 0.8])
    history += rows("finetune", [0.65, 0.62, 0.7, 0.75], [0.75, 0.78, 0.6, 0.5], start=5)
    head, tuned, below = advice(history, config)
    assert "phase 1 (head): val_loss was still improving" in head
    assert "train longer: +2 epochs (head_epochs=6)" in head
    short = TrainingConfig(head_epochs=2, finetune_epochs=0)
    (head,) = advice(rows("head", [1.0, 0.8], [0.5, 0.6]), short)
    assert "train longer: +1 epoch (head_epochs=3)" in head
    assert "phase 2 (fine-tuning) stopped early at epoch 8 (4 of 6 epochs)" in tuned
    assert "kept the weights of epoch 6" in tuned
    # The kept fine-tuned epoch (6, the lowest val_loss) has 0.78 < the head's 0.8.
    assert "fine-tuning ended below the phase-1 head: val_accuracy 0.7800" in below
    assert "vs 0.8000 after phase 1" in below


def test_advice_is_silent_on_a_settled_run_or_without_validation():
    config = TrainingConfig(head_epochs=3, finetune_epochs=2)
    history = rows("head", [1.0, 0.5, 0.6], [0.5, 0.8, 0.8])
    history += rows("finetune", [0.55, 0.58], [0.85, 0.85], start=4)
    assert advice(history, config) == []
    unvalidated = [{"epoch": 1, "phase": "head", "loss": 0.3}]
    assert advice(unvalidated, TrainingConfig(head_epochs=1, finetune_epochs=0)) == []


def halves_folder(root):
    """Class 'left': the left half bright; class 'right': the right half."""
    from PIL import Image

    for c, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = np.full((32, 32, 3), 20 + i, np.uint8)
            pixels[:, 16 * c : 16 * c + 16] = 220
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def pooled(features) -> keras.Model:
    """A fixed 'backbone and pooling': `features(images)`, for `decide_flip`'s probe."""
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, keras.layers.Lambda(features)(inputs))


def test_decide_flip_flips_only_when_mirror_images_score_as_well(tmp_path):
    from keras_ft.models.probe import ProbeResult, linear_probe
    from keras_ft.training.features import frozen_features
    from keras_ft.training.symmetry import decide_flip

    def decide(extractor, data):
        probe = linear_probe(*frozen_features(extractor, data), num_classes=2)
        return decide_flip(extractor, data, probe)

    ops = keras.ops
    halves = keras_ft.ImageFolder(
        halves_folder(tmp_path / "halves"), image_size=32, batch_size=4, validation_split=0.0
    )
    by_side = pooled(
        lambda x: ops.stack(
            [ops.mean(x[:, :, :16], (1, 2, 3)), ops.mean(x[:, :, 16:], (1, 2, 3))], 1
        )
    )
    sided = decide(by_side, halves)  # the probe reads the bright side: mirrors swap it
    assert (sided["flip"], sided["accuracy"], sided["mirrored_accuracy"]) == (False, 1.0, 0.0)
    assert sided["retained"] == -1.0  # (0 - 1/2) / (1 - 1/2): below chance
    assert sided["reason"] == (
        "no horizontal flips: the linear probe's accuracy on the training images is 1.000, "
        "on their mirror images 0.000, keeping -100% of its accuracy above chance (< 60%)."
    )
    colours = keras_ft.ImageFolder(
        write_folder(tmp_path / "colours", ("a_red", "b_green"), per_class=10),
        image_size=32,
        batch_size=4,
        validation_split=0.0,
    )
    coloured = decide(pooled(lambda x: ops.mean(x, (1, 2))), colours)
    assert coloured["flip"] and coloured["accuracy"] == coloured["mirrored_accuracy"] == 1.0
    assert coloured["reason"].startswith("horizontal flips: the linear probe's")
    assert coloured["reason"].endswith("keeping 100% of its accuracy above chance (>= 60%).")
    zeros = np.zeros((2, 2))  # a probe that always answers class 0: chance on halves
    chance = ProbeResult(None, None, 0.5, 1.0, zeros[0], np.ones(2), zeros, zeros[0])
    constant = decide_flip(by_side, halves, chance)
    assert not constant["flip"] and "too close to chance" in constant["reason"]


def test_a_mirror_invariant_backbone_does_not_decide_flips_alone(tmp_path):
    """Pooled features that cannot tell an image from its mirror (as ImageNet-trained ones
    nearly cannot) keep all their accuracy on mirror images; the probe on the feature map's
    2x2 grid sees that the evidence lies on one side, and the flip is refused."""
    from PIL import Image

    from keras_ft.models.probe import linear_probe
    from keras_ft.training.features import frozen_features
    from keras_ft.training.symmetry import decide_flip

    rng = np.random.default_rng(0)
    for c, name in enumerate(("thin", "thick")):  # a bar at the left edge, 4 or 8 px wide
        (tmp_path / name).mkdir()
        for i in range(10):
            pixels = rng.uniform(0, 40, (32, 32, 3)).astype(np.uint8)
            pixels[:, : 4 * (c + 1)] = 220
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    data = keras_ft.ImageFolder(tmp_path, image_size=32, batch_size=4, validation_split=0.0)
    pixels = keras.Input((32, 32, 3))
    backbone = keras.Model(pixels, keras.layers.AveragePooling2D(4)(pixels), name="backbone")
    inputs = keras.Input((32, 32, 3))
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    probe = linear_probe(*frozen_features(extractor, data), num_classes=2)
    decision = decide_flip(extractor, data, probe)
    assert decision["mirrored_accuracy"] == decision["retained"] == 1.0
    assert decision["retained_grid"] == 0.0 and not decision["flip"]
    assert decision["reason"] == (
        "no horizontal flips: the linear probe's accuracy on the training images is 1.000, "
        "on their mirror images 1.000 (on a 2x2 grid of a shallower feature map 1.000 and "
        "0.500), keeping 100% of its accuracy above chance (>= 60%), a probe on a shallower "
        "map's grid 0% (< 30%)."
    )


def test_decide_quarter_turns_turns_only_when_turned_images_score_as_well(tmp_path):
    from keras_ft.models.probe import linear_probe
    from keras_ft.training.features import frozen_features
    from keras_ft.training.symmetry import decide_quarter_turns

    def decide(extractor, data):
        probe = linear_probe(*frozen_features(extractor, data), num_classes=2)
        return decide_quarter_turns(extractor, data, probe)

    ops = keras.ops
    halves = halves_folder(tmp_path / "halves")
    by_side = pooled(
        lambda x: ops.stack(
            [ops.mean(x[:, :, :16], (1, 2, 3)), ops.mean(x[:, :, 16:], (1, 2, 3))], 1
        )
    )
    # A turn takes the bright square from the left or right half to the top or bottom.
    square = dict(image_size=32, batch_size=4, validation_split=0.0)
    sided = decide(by_side, keras_ft.ImageFolder(halves, **square))
    assert not sided["quarter_turns"] and sided["accuracy"] == 1.0
    assert sided["reason"].startswith(
        "no quarter turns: the linear probe's accuracy on the training images is 1.000, on "
        f"their copies turned a quarter {sided['turned_accuracy']:.3f}, keeping "
    )
    colours = write_folder(tmp_path / "colours", ("a_red", "b_green"), per_class=10)
    mean_colour = pooled(lambda x: ops.mean(x, (1, 2)))
    coloured = decide(mean_colour, keras_ft.ImageFolder(colours, **square))
    assert coloured["quarter_turns"] and coloured["turned_accuracy"] == 1.0
    assert coloured["reason"].endswith("keeping 100% of its accuracy above chance (>= 50%).")
    wide = keras_ft.ImageFolder(colours, **(square | {"image_size": (32, 48)}))
    assert decide(mean_colour, wide) == {
        "quarter_turns": False,
        "reason": "no quarter turns: the images (32x48) are not square.",
    }


def test_flip_auto_is_the_default_and_decides_before_phase_1(split_folders, capsys, monkeypatch):
    """Decided to flip, the default trains bitwise as flip=True (and quarter_turns="auto",
    decided to turn, as quarter_turns=True); the decisions are printed and recorded. No
    validation split is needed: the probe is measured on the training images. Both
    decisions share one probe on the shallow grid."""
    from keras_ft.training import symmetry

    grid_probes, fit_probe = [], symmetry.linear_probe

    def counted(*args, **kwargs):
        grid_probes.append(1)
        return fit_probe(*args, **kwargs)

    monkeypatch.setattr(symmetry, "linear_probe", counted)
    train, _ = split_folders
    weights, rows = {}, {}
    for flip in ("auto", True):
        data = keras_ft.ImageFolder(
            train,
            image_size=32,
            batch_size=8,
            validation_split=0.0,
            seed=0,
            quarter_turns=flip,
            **({} if flip == "auto" else {"flip": flip}),  # "auto": the default's
        )
        assert data.config.flip == flip
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(data, head_epochs=2, finetune_epochs=1, head_lr=1e-2, verbose=2)
        weights[flip], rows[flip] = tuner.model.get_weights(), tuner.history.rows
        if flip == "auto":
            decision, turns = (tuner.record["decisions"][k] for k in ("flip", "quarter_turns"))
            printed = capsys.readouterr().out
            assert f"flip='auto': {decision['reason']}" in printed
            assert f"quarter_turns='auto': {turns['reason']}" in printed
        else:
            assert tuner.record["decisions"] == {}
    # Colour classes: left and right mean nothing, the mirror images score the same.
    assert decision["flip"] and decision["accuracy"] == decision["mirrored_accuracy"]
    assert turns["quarter_turns"] and turns["accuracy"] == turns["turned_accuracy"]
    assert "retained_grid" in decision and "retained_grid" in turns and len(grid_probes) == 1
    assert rows["auto"] == rows[True]
    assert all(np.array_equal(a, b) for a, b in zip(*weights.values(), strict=True))
    # Called without FineTuner, fit_two_phase has no probe to decide on: a clear refusal.
    model = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0).build((32, 32), 3)
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.0)
    with pytest.raises(keras_ft.KerasFTError, match="Invalid `flip`: it needs the linear probe"):
        fit_two_phase(model, data, TrainingConfig(head_epochs=1, finetune_epochs=0))


@pytest.mark.parametrize("weight_decay", [None, 0.05])
def test_layerwise_sgd_is_plain_sgd_at_each_variables_scaled_rate(weight_decay):
    """Weight decay included: decoupled, it follows each variable's own rate."""
    from keras_ft.training.optimizers import LayerwiseSGD

    def model():
        init = keras.initializers.GlorotUniform(seed=1)
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(5, "tanh", kernel_initializer=init, name="low")(inputs)
        return keras.Model(
            inputs, keras.layers.Dense(3, kernel_initializer=init, name="top")(hidden)
        )

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")
    layerwise, reference = model(), model()
    low = {v.path: 0.1 for v in layerwise.get_layer("low").trainable_weights}
    sgd = dict(momentum=0.9, weight_decay=weight_decay)
    optimizer = LayerwiseSGD(low, learning_rate=0.05, **sgd)
    # The reference: two plain SGDs, the low layer's at 0.1 x the rate.
    plain_low = keras.optimizers.SGD(learning_rate=0.005, **sgd)
    plain_top = keras.optimizers.SGD(learning_rate=0.05, **sgd)
    for _ in range(200):
        for net in (layerwise, reference):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((net(x) - y) ** 2)
            grads = tape.gradient(loss, net.trainable_variables)
            if net is layerwise:
                optimizer.apply(grads, net.trainable_variables)
            else:
                plain_low.apply(grads[:2], net.trainable_variables[:2])
                plain_top.apply(grads[2:], net.trainable_variables[2:])
    # Up to the float32 rounding of `0.05 * 0.1` against 0.005, over 200 steps (2.6e-6
    # relative on a 2-core AVX2 EPYC); a missing multiplier would be 10x off.
    for mine, theirs in zip(layerwise.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    start = model().get_weights()
    moved = [np.abs(w - s).max() for w, s in zip(layerwise.get_weights(), start, strict=True)]
    assert min(moved) > 1e-3  # every layer trained
    config = optimizer.get_config()
    assert LayerwiseSGD.from_config(config).multipliers == low


def test_layerwise_sgd_keeps_a_variable_bitwise_until_its_start_step():
    """Before its start a variable takes no step and no weight decay; from it on, it
    trains as a plain SGD started then. The other variables train as plain SGD with
    the same weight decay, which `LayerwiseSGD` applies itself."""
    from keras_ft.training.optimizers import LayerwiseSGD

    init = keras.initializers.GlorotUniform(seed=3)
    low, top = (keras.layers.Dense(3, kernel_initializer=init) for _ in range(2))
    low.build((None, 4)), top.build((None, 4))
    low_start = [w.numpy() for w in low.trainable_weights]
    starts = {v.path: 5 for v in low.trainable_weights}
    sgd = dict(learning_rate=0.05, momentum=0.9, weight_decay=0.1)
    optimizer = LayerwiseSGD(starts=starts, **sgd)
    plain_low, plain_top = keras.optimizers.SGD(**sgd), keras.optimizers.SGD(**sgd)
    mirror_low, mirror_top = ([tf.Variable(w) for w in layer.get_weights()] for layer in (low, top))
    rng = np.random.default_rng(0)
    for step in range(12):
        grads = [tf.constant(rng.normal(size=w.shape), "float32") for w in low_start * 2]
        optimizer.apply(grads, low.trainable_weights + top.trainable_weights)
        plain_top.apply(grads[2:], mirror_top)
        if step >= 5:
            plain_low.apply(grads[:2], mirror_low)
        if step == 4:  # five steps: the low layer has not moved, its momentum is 0
            for weight, start in zip(low.get_weights(), low_start, strict=True):
                np.testing.assert_array_equal(weight, start)
    for mine, theirs in zip(
        low.get_weights() + top.get_weights(), mirror_low + mirror_top, strict=True
    ):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-6, atol=1e-7)
    assert np.abs(low.get_weights()[0] - low_start[0]).min() > 0  # it did train, then
    assert LayerwiseSGD.from_config(optimizer.get_config()).starts == starts


def test_gradual_unfreeze_adds_one_group_per_epoch_from_the_top(split_folders, capsys):
    from keras_ft.models.classifier import backbone_of, unfreeze_backbone
    from keras_ft.training.optimizers import unfreeze_groups

    train, _ = split_folders

    class Kernels(keras.callbacks.Callback):  # the backbone's, at each epoch's end
        def on_epoch_end(self, epoch, logs=None):
            backbone = backbone_of(tuner.model)
            kernels.append([backbone.get_layer(n).kernel.numpy() for n in ("conv_a", "conv_b")])

    runs = []
    for _ in range(2):
        kernels = []
        data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.25)
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        options = dict(head_epochs=1, finetune_epochs=3, gradual_unfreeze=2, weight_decay=0.01)
        tuner.fit(data, recipe=None, callbacks=[Kernels()], head_augment=False, **options)
        runs.append(kernels)
    (before, first, second, third), again = runs
    np.testing.assert_array_equal(first[0], before[0])  # conv_a waits for phase 2's epoch 2
    assert not np.array_equal(first[1], before[1])  # conv_b, the top group, trains from 1
    assert not np.array_equal(second[0], first[0])
    for ours, theirs in zip(sum(runs[0], []), sum(again, []), strict=True):  # bitwise replay
        np.testing.assert_array_equal(ours, theirs)
    printed = capsys.readouterr().out
    assert (
        "gradual unfreezing: phase 2's epoch 1 trains the head and conv_b; epoch 2 adds conv_a."
        in printed
    )
    # VGG16 from block 1 in 5 groups: its blocks, the top first.
    vgg = keras_ft.FineTuner("vgg16", weights=None).build((32, 32), 2)
    unfreeze_backbone(vgg, "all")
    groups = [[layer.name for layer in group] for group in unfreeze_groups(vgg, 5)]
    assert [g[-1] for g in groups] == [f"block{b}_conv1" for b in (5, 4, 3, 2, 1)]
    assert [len(g) for g in groups] == [3, 3, 3, 2, 2]
    with pytest.raises(
        keras_ft.KerasFTError,
        match=r"Invalid `gradual_unfreeze`: expected an int from 0 to finetune_epochs \(3\)",
    ):
        TrainingConfig(finetune_epochs=3, gradual_unfreeze=4)


def test_discriminative_lr_spaces_rates_by_depth_and_replays_bitwise(split_folders):
    from keras_ft.training.optimizers import LayerwiseSGD, layer_multipliers

    train, _ = split_folders
    runs = []
    for _ in range(2):
        data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.25)
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(data, head_epochs=1, finetune_epochs=1, discriminative_lr=100.0, verbose=0)
        runs.append(tuner.model.get_weights())
    optimizer = tuner.model.optimizer
    assert isinstance(optimizer, LayerwiseSGD)
    by_layer = {path.split("/")[-2]: m for path, m in optimizer.multipliers.items()}
    assert by_layer == {"conv_a": pytest.approx(0.01), "conv_b": 1.0}  # BatchNorm stays frozen
    assert layer_multipliers(tuner.model, 100.0) == optimizer.multipliers
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_weight_decay_shrinks_phase_2_weights_by_decay_times_rate(weight_decay):
    from keras_ft.training.optimizers import compile_for_phase

    def model():
        init = keras.initializers.GlorotUniform(seed=2)
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(3, "softmax", kernel_initializer=init, name="top")(inputs)
        return keras.Model(inputs, outputs)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.integers(0, 3, 8)
    decayed, plain = model(), model()
    start = decayed.get_layer("top").kernel.numpy()
    for net, decay in ((decayed, weight_decay), (plain, 0.0)):
        config = TrainingConfig(finetune_lr=0.1, momentum=0.9, weight_decay=decay)
        compile_for_phase(net, "finetune", config, num_classes=3)
        net.train_on_batch(x, y)
    # Keras's decoupled decay: w -= w * weight_decay * lr, then the same gradient step.
    difference = decayed.get_layer("top").kernel.numpy() - plain.get_layer("top").kernel.numpy()
    np.testing.assert_allclose(difference, -start * weight_decay * 0.1, atol=1e-6)
    assert decayed.optimizer.weight_decay == (weight_decay or None)  # 0: Keras skips it


@pytest.mark.parametrize("classes", [5, 6])
def test_top_5_accuracy_is_logged_only_when_it_can_be_below_1(classes):
    from keras_ft.training.optimizers import compile_for_phase

    inputs = keras.Input((4,))
    net = keras.Model(inputs, keras.layers.Dense(classes, "softmax")(inputs))
    compile_for_phase(net, "head", TrainingConfig(), num_classes=classes)
    x, y = np.zeros((6, 4), "float32"), np.arange(6) % classes
    names = set(net.train_on_batch(x, y, return_dict=True))
    assert "accuracy" in names and ("top_k_accuracy" in names) == (classes > 5)


def test_a_resumed_fallback_reads_phase_2s_start_and_refuses_without_it(split_folders, tmp_path):
    """Resuming after the last epoch redoes only the fallback, from the weights and scores kept
    beside the checkpoints; without that file it says what is missing."""
    train, _ = split_folders
    data = keras_ft.ImageFolder(train, image_size=32, batch_size=8, validation_split=0.25, seed=0)
    options = dict(head_epochs=1, finetune_epochs=1, finetune_lr=0.05, fallback_to_head=True)
    first = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    first.fit(data, **options, checkpoint_dir=tmp_path, verbose=0)
    again = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
    again.fit(data, **options, checkpoint_dir=tmp_path, resume=True, verbose=0)
    assert again.record["decisions"] == first.record["decisions"]
    for a, b in zip(again.model.get_weights(), first.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "phase2-start.npz").unlink()
    with pytest.raises(keras_ft.KerasFTError, match="phase2-start.npz.*missing.*without --resume"):
        keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0).fit(
            data, **options, checkpoint_dir=tmp_path, resume=True, verbose=0
        )


def test_durations_read_as_a_person_says_them():
    from keras_ft.utils.progress import format_duration

    assert format_duration(0.2) == "0 s" and format_duration(44.6) == "45 s"
    assert format_duration(80) == "1 min 20 s" and format_duration(120) == "2 min"
    assert format_duration(3725) == "1 h 2 min"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_left_is_estimated_per_phase_from_its_own_epochs(capsys):
    """Phase 1 on cached features is far faster per epoch than phase 2: each phase is
    timed on its own epochs (its first, which traces the step, left out once others ran),
    and phase 2 is not guessed from phase 1."""
    from keras_ft.utils.progress import Progress

    clock = FakeClock()
    progress = Progress([("head", 0, 3), ("finetune", 3, 3)], verbose=2, clock=clock)
    lines = []
    for phase, durations in (("head", (5, 1, 1)), ("finetune", (9, 4, 4))):
        progress.start_phase(phase)
        start = 0 if phase == "head" else 3
        for i, seconds in enumerate(durations):
            progress.on_epoch_begin(start + i)
            clock.now += seconds
            progress.on_epoch_end(start + i, {"loss": 0.5, "accuracy": 0.75})
            lines.append(capsys.readouterr().out)
    assert lines[0] == (
        "epoch 1/6 overall, 10 s left in phase 1, then 3 epochs of phase 2 - "
        "phase 1 epoch 1/3 - 5.0 s - loss: 0.5000 - accuracy: 0.7500\n"
    )
    assert lines[1].startswith("epoch 2/6 overall, 1 s left in phase 1, then 3 epochs of phase 2")
    assert lines[2].startswith("epoch 3/6 overall, phase 1 done, 3 epochs of phase 2 to go - ")
    assert lines[3].startswith("epoch 4/6 overall, 18 s left - phase 2 epoch 1/3 - 9.0 s - ")
    assert lines[4].startswith("epoch 5/6 overall, 4 s left - ")
    assert lines[5].startswith("epoch 6/6 overall, done - phase 2 epoch 3/3 - 4.0 s - ")


def test_the_first_epochs_estimate_counts_its_tracing_batches_as_long_as_the_others(capsys):
    """A phase's first training step and first validation batch trace their functions:
    on a small data set most of the first epoch. The estimate after it counts each as long
    as a usual step, so it does not say minutes where seconds are left."""
    from keras_ft.utils.progress import Progress

    clock = FakeClock()
    progress = Progress([("finetune", 0, 3)], verbose=2, clock=clock)
    progress.start_phase("finetune")
    lines = []
    for epoch, (train, test) in enumerate((((6, 0.5, 0.5, 0.5), (1.5,)), ((0.5,) * 4, (0.3,)))):
        progress.on_epoch_begin(epoch)
        for kind, times in (("train", train), ("test", test)):
            for batch, seconds in enumerate(times):
                getattr(progress, f"on_{kind}_batch_begin")(batch)
                clock.now += seconds
                getattr(progress, f"on_{kind}_batch_end")(batch)
        progress.on_epoch_end(epoch, {})
        lines.append(capsys.readouterr().out)
    # 9 s, of which 5.5 s and 1 s were the first batches' tracing: 2.5 s an epoch.
    assert lines[0].startswith("epoch 1/3 overall, 5 s left - phase 2 epoch 1/3 - 9.0 s")
    assert lines[1].startswith("epoch 2/3 overall, 2 s left - phase 2 epoch 2/3 - 2.3 s")


def test_on_a_terminal_the_keras_bar_stays_and_the_overall_line_follows_it(monkeypatch, capsys):
    from keras_ft.utils import progress

    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    tracker = progress.Progress([("head", 0, 2)], verbose="auto")
    assert tracker.keras_verbose == 1
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    tracker.start_phase("head")
    x, y = np.zeros((8, 3), "float32"), np.zeros(8, "int32")
    model.fit(x, y, epochs=2, callbacks=tracker.callbacks(), verbose=tracker.keras_verbose)
    out = capsys.readouterr().out
    assert "Epoch 2/2" in out and "━" in out  # Keras's own progress bar
    assert "\nepoch 1/2 overall, " in out and "\nepoch 2/2 overall, done\n" in out
    # After the bar's last update: its line ends before the overall line starts.
    bar_end = out.index("\nepoch 1/2 overall")
    assert "━" in out[:bar_end] and out.count("epoch 1/2 overall") == 1
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    assert progress.Progress([], verbose="auto").keras_verbose == 0  # keras_ft's lines instead
    assert progress.Progress([], verbose=1).keras_verbose == 1  # asked for: the bar anyway
    assert progress.Progress([], verbose=2).keras_verbose == 0


def test_retracing_warnings_are_dropped_where_keras_ft_triggers_them_only():
    """Each new Keras model traces its predict step anew (every feature extractor that
    training builds), which TensorFlow counts as retracing one function (its code object)
    and warns about, twice per process: each part starts from a fresh count."""
    import logging

    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    from keras_ft.training.features import extract_features

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    images = tf.data.Dataset.from_tensor_slices((np.zeros((5, 8, 8, 3), "float32"), np.zeros(5)))

    def models():
        polymorphic_function._frequent_tracing_detector_manager._detectors.clear()
        records.clear()
        for _ in range(4):  # each traces twice: batches of 3 and 2
            yield keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])

    def retracing():
        return [r for r in records if "tf.function retracing" in r.getMessage()]

    try:
        for model in models():  # keras_ft's code: silent
            extract_features(model, images.batch(3))
        assert not retracing()
        for model in models():  # the user's own code: TensorFlow's warning as usual
            model.predict_on_batch(np.zeros((3, 8, 8, 3)))
            model.predict_on_batch(np.zeros((2, 8, 8, 3)))
        assert retracing()
        logger.setLevel(logging.INFO)  # asked for: kept
        for model in models():
            extract_features(model, images.batch(3))
        assert retracing()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )


def test_importing_keras_ft_keeps_tensorflow_native_log_lines_out_unless_asked():
    show = "import os, keras_ft; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    assert run_python(show, env).stdout == "3\n"
    assert run_python(show, {**env, "TF_CPP_MIN_LOG_LEVEL": "0"}).stdout == "0\n"


API_FIT = """
import keras_ft
data = keras_ft.ImageFolder({data!r}, image_size=32, batch_size=8, seed=1)
tuner = keras_ft.FineTuner("testnet", weights=None, seed=1)
tuner.fit(data, head_epochs=2, finetune_epochs=2, tensorboard_dir=None)
"""


def test_python_api_fit_prints_clean_lines_and_no_tensorflow_logs(tmp_path):
    """Through a pipe, as a script's output written to a file: no TensorFlow C++ lines
    (`failed call to cuInit`, absl's), no retracing warnings, no terminal control."""
    data = write_folder(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = run_python(API_FIT.format(data=str(data)), env)
    assert result.returncode == 0, result.stderr
    for noise in ("cuInit", "absl", "I0000", "W0000", "E0000", "retracing", "WARNING:tensorflow"):
        assert noise not in result.stderr, result.stderr
    for control in ("\x1b", "\b", "\r"):
        assert control not in result.stdout + result.stderr, repr(control)
    lines = result.stdout.splitlines()
    assert [line.split(",")[0] for line in lines if line.startswith("epoch ")] == [
        f"epoch {i}/4 overall" for i in range(1, 5)
    ]
    assert [line.split(":")[0] for line in lines if line.startswith("phase ")] == [
        "phase 1",
        "phase 2",
    ]
