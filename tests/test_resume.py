"""Interrupted runs: SIGKILL a real training process, resume, and get bitwise the same weights."""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import (
    TINY_TRAIN,
    main_cli,
    run_cli,
    tiny_backbone,
    write_folder,
    write_noise_folder,
)

# Augmentation off, and on with the options decided or drawn during training (the flips,
# and with --recipe auto the model kept after phase 2 from the weights it started from);
# with gradual unfreezing, whose lower group joins at the first epoch after the phase-2 kill.
VARIANTS = {
    "no-augment": ["--no-augment"],
    "adaptive": "--auto-flip --translation 0.1 --recipe auto --gradual-unfreeze 2".split(),
}


def train_args(data, output, variant):
    options = "--batch-size 8 --validation-split 0.2 --head-epochs 3 --finetune-epochs 3 --seed 5"
    args = ["train", str(data), *TINY_TRAIN, *options.split(), "--output", str(output)]
    return args + VARIANTS[variant]


def kill_after_checkpoint(args, epoch):
    """Run `keras-ft train`; it SIGKILLs itself once its checkpoint of `epoch` is written."""
    env = {**os.environ, "KERAS_FT_TEST_KILL_AT_EPOCH": str(epoch)}  # see tests/plugins
    command = [sys.executable, "-m", "keras_ft.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("resume") / "data", ("a", "b", "c"), 12)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Weights hashes and decisions of uninterrupted runs, per variant, in this process (the
    killed runs are fresh processes: the resumed run must match across processes too)."""
    from keras_ft.cli.main import main

    runs = {}
    for variant in VARIANTS:
        output = tmp_path_factory.mktemp("reference") / "run"
        assert main([str(a) for a in train_args(data, output, variant)]) == 0
        record = json.loads((output / "run.json").read_text())
        runs[variant] = (record["weights_sha256"], record["decisions"])
    return runs


@pytest.mark.parametrize(
    ("variant", "kills"),
    [
        ("no-augment", (1,)),  # phase 1, head trained on cached features
        # Killed in phase 1 (head trained on augmented images; the flip decision is read
        # back), resumed and killed again in phase 2 (fine-tuning: its optimizer state and
        # the weights phase 2 started from, for the fallback, are read back), then resumed
        # to the end. A run resumed after its last epoch, with only the fallback left:
        # test_training's test_a_resumed_fallback_reads_phase_2s_start_and_refuses_without_it.
        ("adaptive", (1, 4)),
    ],
)
def test_resume_after_sigkill_is_bitwise_identical(
    variant, kills, data, reference, tmp_path, capsys
):
    output = tmp_path / "run"
    args = train_args(data, output, variant)
    for i, kill_at in enumerate(kills):
        killed = kill_after_checkpoint(args + ["--resume"] * (i > 0), kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        state = json.loads((output / "checkpoints" / "state.json").read_text())
        assert state["epoch"] == kill_at
        assert not (output / "run.json").exists()
        code, _, err = main_cli(capsys, *args)  # in this process: refused before any training
        assert code == 2 and "--resume" in err
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((output / "run.json").read_text())
    assert (record["weights_sha256"], record["decisions"]) == reference[variant]
    assert not (output / "checkpoints").exists()
    history = (output / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 6  # every epoch of both phases, once


def test_resume_without_a_checkpoint_is_refused(data, tmp_path, capsys):
    code, _, err = main_cli(capsys, *train_args(data, tmp_path / "run", "adaptive"), "--resume")
    assert code == 2 and "holds no checkpoint" in err


def test_checkpoints_come_at_each_phases_end_and_at_most_once_an_interval(
    data, tmp_path, monkeypatch
):
    """Short epochs are cheaper to train again than to save: within `Checkpoint.interval`
    seconds only a phase's last epoch is saved; with an interval of 0, every epoch."""
    import keras_ft
    from keras_ft.training import checkpoint

    written, write = [], checkpoint.write_atomically

    def counted(path, contents):
        written.append(path.name)
        write(path, contents)

    monkeypatch.setattr(checkpoint, "write_atomically", counted)
    folder = keras_ft.ImageFolder(data, image_size=32, batch_size=8, seed=0)
    for interval, run in ((checkpoint.Checkpoint.interval, "slow"), (0.0, "every")):
        monkeypatch.setattr(checkpoint.Checkpoint, "interval", interval)
        written.clear()
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(folder, recipe=None, head_epochs=3, finetune_epochs=2, verbose=0,
                  checkpoint_dir=tmp_path / run)  # fmt: skip
        saved = [name for name in written if name.endswith(".npz")]
        epochs = (3, 5) if run == "slow" else range(1, 6)
        assert saved == [f"epoch-{epoch:04d}.npz" for epoch in epochs]


def test_a_phase_1_on_augmented_copies_resumes_bitwise(data, tmp_path, monkeypatch):
    """Stopped after epoch 1 of 3, with 2 copies: the copies are computed again, and epoch 3
    trains on copy 0 as an uninterrupted run's does."""
    import keras
    import numpy as np

    import keras_ft
    from keras_ft.training.checkpoint import Checkpoint

    monkeypatch.setattr(Checkpoint, "interval", 0.0)
    folder = keras_ft.ImageFolder(data, image_size=32, batch_size=8, seed=0)

    class Stopped(Exception):
        pass

    class StopAfterFirstEpoch(keras.callbacks.Callback):  # runs before the checkpoint
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Stopped

    def fit(run, callbacks=(), resume=False):
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(folder, recipe=None, head_epochs=3, finetune_epochs=1, head_copies=2,
                  verbose=0, callbacks=list(callbacks), checkpoint_dir=tmp_path / run,
                  resume=resume)  # fmt: skip
        return tuner.model.get_weights()

    uninterrupted = fit("whole")
    with pytest.raises(Stopped):
        fit("stopped", [StopAfterFirstEpoch()])
    state = json.loads((tmp_path / "stopped" / "state.json").read_text())
    assert (state["phase"], state["epoch"]) == ("head", 1)

    class Epochs(keras.callbacks.Callback):
        trained = []

        def on_epoch_begin(self, epoch, logs=None):
            self.trained.append(epoch)

    resumed = fit("stopped", [Epochs()], resume=True)
    assert Epochs.trained == [1, 2, 3]  # from the checkpoint: epochs 2 and 3, then phase 2's
    assert all(np.array_equal(a, b) for a, b in zip(uninterrupted, resumed, strict=True))


def test_early_stopping_resumes_bitwise_within_a_phase_and_after_it_stopped(tmp_path, monkeypatch):
    """Killed after an epoch that did not improve (the best weights are an earlier epoch's),
    and after early stopping ended phase 1: each resumed run ends bitwise as the
    uninterrupted one, training only the epochs after its checkpoint."""
    import keras
    import numpy as np

    import keras_ft
    from keras_ft.training.checkpoint import Checkpoint

    monkeypatch.setattr(Checkpoint, "interval", 0.0)
    noise = write_noise_folder(tmp_path / "noise")  # at a large head rate
    folder = keras_ft.ImageFolder(noise, image_size=32, batch_size=8, validation_split=0.25)

    class Stopped(Exception):
        pass

    class Epochs(keras.callbacks.Callback):  # runs before the checkpoint
        def __init__(self, stop_at=None):
            super().__init__()
            self.stop_at, self.trained = stop_at, []

        def on_epoch_end(self, epoch, logs=None):
            if epoch == self.stop_at:
                raise Stopped
            self.trained.append(epoch)

    def fit(run, epochs, resume=False):
        tuner = keras_ft.FineTuner(tiny_backbone(), preprocessing="tf", seed=0)
        tuner.fit(folder, recipe=None, head_epochs=10, finetune_epochs=2, head_lr=1.0,
                  early_stopping=2, verbose=0, callbacks=[epochs],
                  checkpoint_dir=tmp_path / run, resume=resume)  # fmt: skip
        return tuner

    whole = fit("whole", Epochs())
    losses = [row["val_loss"] for row in whole.history.rows if row["phase"] == "head"]
    best = int(np.argmin(losses))
    assert len(losses) == best + 3 < 10  # stopped 2 epochs after its best
    expected = whole.model.get_weights()

    for run, stop_at, resumed_from in (
        ("within", best + 2, best + 2),  # checkpoint of epoch best + 1: not the best
        ("after", 10, 10),  # phase 2's first epoch: the checkpoint is phase 1's end
    ):
        with pytest.raises(Stopped):
            fit(run, Epochs(stop_at))
        state = json.loads((tmp_path / run / "state.json").read_text())
        assert (state["phase"], state["epoch"]) == ("head", resumed_from)
        with np.load(tmp_path / run / state["file"]) as arrays:
            best_arrays = [key for key in arrays.files if key.startswith("best_")]
        assert bool(best_arrays) == (run == "within")  # phase 1's end holds its best already
        epochs = Epochs()
        resumed = fit(run, epochs, resume=True)
        assert epochs.trained == [*range(resumed_from, len(losses)), 10, 11]
        weights = resumed.model.get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(expected, weights, strict=True))
        assert resumed.history.rows == whole.history.rows


@pytest.mark.parametrize("patience", [1, 3, 30])
def test_early_stopping_stops_and_keeps_the_weights_keras_callback_would(patience):
    """keras_ft's resumable `EarlyStopping` against Keras's (`restore_best_weights=True`):
    the same epochs, the same final weights; with a patience of 30 it never stops and
    both keep the best epoch's weights."""
    import keras
    import numpy as np

    from keras_ft.training.checkpoint import EarlyStopping

    def fit(callback):
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, 64)
        validation = rng.normal(size=(32, 8)).astype("float32"), rng.integers(0, 3, 32)
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
        )
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(keras.optimizers.SGD(0.05), loss)
        history = model.fit(x, y, validation_data=validation, epochs=30, batch_size=16,
                            shuffle=False, verbose=0, callbacks=[callback])  # fmt: skip
        return history.history["val_loss"], model.get_weights()

    keras_losses, keras_weights = fit(
        keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    )
    losses, weights = fit(EarlyStopping(patience))
    assert losses == keras_losses
    assert 0 < int(np.argmin(losses)) < len(losses) - 1  # the kept epoch is neither end
    assert (len(losses) < 30) == (patience < 30)
    assert all(np.array_equal(a, b) for a, b in zip(keras_weights, weights, strict=True))
