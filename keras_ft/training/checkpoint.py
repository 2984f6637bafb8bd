"""Checkpoints after epochs (at most one every `Checkpoint.interval` seconds, and one at each
phase's end), written atomically, and reading them back to resume; early stopping, whose
state a checkpoint holds."""

from __future__ import annotations

import json
import math
import os
import time
import zipfile
from pathlib import Path

import keras
import numpy as np

from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.files import CHECKPOINT_STATE


class EarlyStopping(keras.callbacks.Callback):
    """Stop a phase after `patience` epochs without a lower validation loss than the best so
    far, and keep the best epoch's weights.

    Keras's `EarlyStopping(monitor="val_loss", patience=patience,
    restore_best_weights=True)`, epoch for epoch, with two differences that let a
    checkpoint resume it: the best weights are put back at the end of the phase's
    last epoch (or of the epoch it stops at), before that epoch's checkpoint is
    written, and `state()` with `best_weights` is what a checkpoint keeps
    (`EarlyStopping.resume` reads it back).
    """

    def __init__(self, patience: int):
        super().__init__()
        self.patience = patience
        self.best, self.best_epoch, self.wait = math.inf, None, 0
        self.best_weights = None
        self.stopped = self.restored = False

    @classmethod
    def resume(cls, patience: int, checkpoint: dict | None) -> EarlyStopping:
        """Early stopping as `checkpoint` (one written within its phase, or None) left it."""
        stopping = cls(patience)
        state = checkpoint.get("early_stopping") if checkpoint else None
        if state:
            stopping.best, stopping.best_epoch, stopping.wait = (
                state["best"], state["best_epoch"], state["wait"]
            )  # fmt: skip
            arrays = checkpoint["arrays"]
            count = sum(key.startswith("best_") for key in arrays)
            stopping.best_weights = [arrays[f"best_{i}"] for i in range(count)] or None
        return stopping

    def state(self) -> dict:
        """What a checkpoint records besides the best weights."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is None:
            return
        loss = float(loss)
        if self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if loss < self.best:
            self.best, self.best_epoch, self.wait = loss, epoch, 0
            self.best_weights = self.model.get_weights()
        elif self.wait >= self.patience and epoch > 0:
            self.stopped = self.model.stop_training = True
        if self.stopped or epoch + 1 >= self.params["epochs"]:
            self.on_train_end()

    def on_train_end(self, logs=None):
        if self.best_weights is not None and not self.restored:
            self.model.set_weights(self.best_weights)
            self.restored = True


class Checkpoint(keras.callbacks.Callback):
    """Save every variable of the classifier and its optimizer after an epoch: the
    phase's last, and any other that ends `interval` seconds or more after the phase
    began or the last checkpoint was written.

    Short epochs are cheaper to train again than to save (VGG16's variables and
    momentum are 118 MB); a resumed run trains the epochs after its checkpoint
    again, bitwise as the first time. Written atomically into `directory`:
    `epoch-NNNN.npz` (model variables, random-generator states included, and
    optimizer variables; no pickle), then `state.json`
    (`manifest.CHECKPOINT_STATE`) naming it, with the phase, the epoch count and
    the history so far. A kill at any moment leaves the last complete checkpoint.
    With `stopping` (the phase's `EarlyStopping`), its state and best weights
    are kept too, and a phase it stopped is recorded as ended at its last epoch.
    """

    interval = 30.0  # seconds

    def __init__(
        self, directory, classifier: keras.Model, phase: str, history, signature: str,
        stopping: EarlyStopping | None = None,
    ):  # fmt: skip
        super().__init__()
        self.directory = Path(directory)
        self.classifier, self.phase, self.history = classifier, phase, history
        self.signature, self.stopping = signature, stopping

    def on_train_begin(self, logs=None):
        self.saved_at = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 >= self.params["epochs"] or self.model.stop_training
        if not last and time.monotonic() - self.saved_at < self.interval:
            return
        if self.directory.is_symlink():
            raise KerasFTError(
                f"'{self.directory}' is a symbolic link; keras_ft never writes checkpoints "
                "through a link. Remove it, then run again."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        stopping = self.stopping
        done = self.params["epochs"] if stopping and stopping.stopped else epoch + 1
        name = f"epoch-{done:04d}.npz"
        arrays = {f"model_{i}": np.asarray(v) for i, v in enumerate(self.classifier.variables)}
        arrays.update(
            {f"optimizer_{i}": np.asarray(v) for i, v in enumerate(self.model.optimizer.variables)}
        )
        if stopping and stopping.best_weights is not None and not stopping.restored:
            arrays.update({f"best_{i}": w for i, w in enumerate(stopping.best_weights)})
        state = {
            "phase": self.phase,
            "epoch": done,
            "file": name,
            "signature": self.signature,
            "history": self.history.rows,
            "decisions": self.history.decisions.record(),
            "early_stopping": stopping.state() if stopping else None,
        }
        write_atomically(self.directory / name, lambda handle: np.savez(handle, **arrays))
        write_atomically(
            self.directory / CHECKPOINT_STATE, lambda h: h.write(json.dumps(state).encode())
        )
        for old in self.directory.glob("epoch-*.npz"):
            if old.name != name:
                old.unlink()
        self.saved_at = time.monotonic()


def write_atomically(path: Path, write) -> None:
    """Write `path` through a hidden partial file renamed into place; refuse a failed write.

    A full disk or a read-only filesystem raises `KerasFTError` naming the
    file, and leaves no partial file: the previous checkpoint stays complete,
    so the run can be resumed once there is room.
    """
    partial = path.parent / f".{path.name}.partial"
    try:
        with open(partial, "wb") as handle:
            write(handle)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise KerasFTError(
            f"Cannot write checkpoint '{path}': {error.strerror or error}. The last complete "
            "checkpoint is kept: free some space (or fix the folder), then run again with --resume."
        ) from None


def read_checkpoint(directory, signature: str) -> dict | None:
    """The last checkpoint in `directory` (None if there is none), checked against `signature`."""
    path = Path(directory) / CHECKPOINT_STATE
    if not path.is_file():
        return None
    damaged = (
        f"The checkpoint in '{directory}' is damaged ({{}}). Start again without --resume "
        "(with --overwrite), or restore the folder from a copy."
    )
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise KerasFTError(damaged.format(f"'{path.name}': {error}")) from None
    if not isinstance(state, dict) or not isinstance(state.get("file"), str):
        raise KerasFTError(damaged.format(f"'{path.name}' is not a keras_ft checkpoint state"))
    if state.get("signature") != signature:
        raise KerasFTError(
            f"The checkpoint in '{directory}' was written by a run with another configuration "
            "or data. Resume with the same arguments and data, or start again with --overwrite."
        )
    arrays_path = Path(directory) / Path(state["file"]).name
    try:
        with np.load(arrays_path, allow_pickle=False) as arrays:
            state["arrays"] = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise KerasFTError(damaged.format(f"'{arrays_path.name}': {error}")) from None
    return state


def restore_model(state: dict, classifier: keras.Model) -> None:
    """Put the checkpoint's model variables back."""
    for i, variable in enumerate(classifier.variables):
        variable.assign(state["arrays"][f"model_{i}"])


def restore_optimizer(state: dict, trained: keras.Model) -> None:
    """Put the checkpoint's optimizer variables back into `trained`'s (compiled) optimizer."""
    optimizer = trained.optimizer
    optimizer.build(trained.trainable_variables)
    for i, variable in enumerate(optimizer.variables):
        variable.assign(state["arrays"][f"optimizer_{i}"])
