"""The two-phase fit: head on a frozen backbone, then fine-tuning with SGD momentum."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from keras_ft.config import TrainingConfig
from keras_ft.models.classifier import (
    backbone_of,
    feature_norm,
    freeze_backbone,
    set_probe,
    split_at_features,
    unfreeze_backbone,
)
from keras_ft.models.probe import linear_probe
from keras_ft.training.distribute import (
    evenly_batched,
    predict_batch,
    scale_learning_rate,
    shard_by_data,
)
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.files import CHECKPOINT_STATE
from keras_ft.utils.progress import Progress, phase_line, uses_bars

PHASES = ("head", "finetune")


class TrainingHistory:
    """Per-epoch metrics of both phases on one epoch axis.

    Attributes:
        history: like `keras.callbacks.History.history`, a dict of lists, plus
            `"epoch"` and `"phase"` (`"head"` or `"finetune"`) for each epoch.
        decisions: what training decided from the data on the way (`"flip"`
            for `flip="auto"`), kept in checkpoints so a resumed run keeps them.
    """

    def __init__(self, rows: list[dict] | None = None, decisions: dict | None = None):
        self.rows = list(rows or [])
        self.decisions = dict(decisions or {})

    @property
    def history(self) -> dict[str, list]:
        keys = dict.fromkeys(key for row in self.rows for key in row)
        return {key: [row.get(key) for row in self.rows] for key in keys}

    def recorder(self, phase: str) -> keras.callbacks.Callback:
        """A callback appending each finished epoch of `phase` to `rows`."""
        rows = self.rows

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = {k: float(v) for k, v in (logs or {}).items()}
                rows.append({"epoch": epoch + 1, "phase": phase, **logs})

        return Recorder()


@keras.saving.register_keras_serializable(package="keras_ft")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing.

    Keras's `SparseCategoricalCrossentropy` has no `label_smoothing`; this is
    `CategoricalCrossentropy(label_smoothing=...)` on one-hot labels.
    """

    def __init__(self, label_smoothing: float = 0.0, name="sparse_smoothed_crossentropy", **kw):
        super().__init__(name=name, **kw)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        one_hot = keras.ops.one_hot(keras.ops.reshape(y_true, (-1,)), keras.ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="keras_ft")
class LayerwiseSGD(keras.optimizers.SGD):
    """SGD (with momentum) whose learning rate is multiplied per variable, and
    whose variables may start training late.

    Keras's SGD update is linear in `learning_rate * gradient`, so this is
    what scaling each variable's gradient would do, and exactly per-variable
    learning rates: a variable with multiplier s trains as plain SGD at
    `s * learning_rate` would (up to float rounding of the product). A variable
    with a start step takes no step before the optimizer's iteration reaches it
    (counted from 0): its momentum stays 0 and its weights are kept bitwise,
    as if frozen (gradual unfreezing). Decoupled weight decay, as Keras's SGD
    applies it, is applied here per variable: from its start step, at the
    variable's scaled rate, so that weight decay included a variable trains
    as plain SGD at its own rate would.

    Args:
        multipliers: `{variable path: multiplier}`; unnamed variables keep 1.
        starts: `{variable path: first step}`; unnamed variables start at 0.
        **kwargs: `keras.optimizers.SGD` arguments.
    """

    def __init__(self, multipliers=None, starts=None, **kwargs):
        super().__init__(**kwargs)
        self.multipliers = dict(multipliers or {})
        self.starts = dict(starts or {})

    def build(self, variables):
        # The backend hands `update_step` raw variables without paths: key by index.
        self._scales = [self.multipliers.get(v.path, 1.0) for v in variables]
        self._starts = [self.starts.get(v.path, 0) for v in variables]
        super().build(variables)

    def _apply_weight_decay(self, variables):
        pass  # in `update_step`, where each variable's start is known

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if self._starts[index]:
            started = keras.ops.greater_equal(self.iterations, self._starts[index])
            learning_rate = keras.ops.where(started, learning_rate, 0.0)
        if self._scales[index] != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, self._scales[index])
        if self.weight_decay is not None and self._use_weight_decay(variable):
            rate = keras.ops.cast(learning_rate, variable.dtype)
            decay = keras.ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, variable * decay * rate)  # as Keras's SGD at that rate
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "multipliers": self.multipliers, "starts": self.starts}


def trainable_backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers that phase 2 trains (those with trainable weights), in depth
    order."""
    return [layer for layer in backbone_of(model).layers if layer.trainable_weights]


def layer_multipliers(model: keras.Model, ratio: float) -> dict[str, float]:
    """Discriminative learning rates: lower multipliers for lower trainable backbone layers.

    The backbone's trainable layers, in depth order, get multipliers spaced
    geometrically from `1 / ratio` (the lowest) to 1 (the top one); the
    head's layers keep 1 (fastai's `slice(lr / ratio, lr)`, one step per layer).

    Returns:
        `{variable path: multiplier}` for the backbone's trainable variables.
    """
    layers = trainable_backbone_layers(model)
    multipliers = {}
    for i, layer in enumerate(layers):
        depth = i / (len(layers) - 1) if len(layers) > 1 else 1.0
        for variable in layer.trainable_weights:
            multipliers[variable.path] = float(ratio ** (depth - 1.0))
    return multipliers


def unfreeze_groups(model: keras.Model, groups: int) -> list[list[keras.layers.Layer]]:
    """Gradual unfreezing's groups: the backbone's trainable layers, top first, in
    `groups` runs of consecutive layers of about equal size (the larger runs at
    the top; at most one group per layer, and 0 is one group).

    For VGG16 unfrozen from block 1, 5 groups are its 5 blocks.
    """
    layers = trainable_backbone_layers(model)[::-1]
    if not layers:
        return []
    parts = np.array_split(np.arange(len(layers)), min(max(groups, 1), len(layers)))
    return [[layers[i] for i in part] for part in parts]


def layer_starts(model: keras.Model, groups: int, steps_per_epoch: int) -> dict[str, int]:
    """`LayerwiseSGD`'s starts for gradual unfreezing: group g of `unfreeze_groups`
    (0 at the top) starts at step `g * steps_per_epoch`, the first step of phase 2's
    epoch g + 1.

    Returns:
        `{variable path: first step}` for the variables that start after step 0.
    """
    return {
        variable.path: g * steps_per_epoch
        for g, group in enumerate(unfreeze_groups(model, groups))
        for layer in group
        for variable in layer.trainable_weights
        if g
    }


def finetune_learning_rate(config: TrainingConfig, steps_per_epoch: int):
    """Phase 2's learning rate: constant, or linear warm-up then cosine decay to 0."""
    if config.finetune_schedule == "constant":
        return config.finetune_lr
    warmup = config.warmup_epochs * steps_per_epoch
    decay = max(1, (config.finetune_epochs - config.warmup_epochs) * steps_per_epoch)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(config.finetune_lr, decay)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay, warmup_target=config.finetune_lr, warmup_steps=warmup
    )


def class_weights(config: TrainingConfig, data) -> dict[int, float] | None:
    """`config.class_weight` as Keras wants it: {class index: weight}.

    `"balanced"` weighs each class by n_samples / (n_classes * its count),
    scikit-learn's rule; a dict names classes, and unnamed ones weigh 1.
    """
    if config.class_weight is None:
        return None
    labels = np.array([f.label for f in data.train_files])
    if config.class_weight == "balanced":
        weights = compute_class_weight("balanced", classes=np.arange(data.num_classes), y=labels)
        return {i: float(w) for i, w in enumerate(weights)}
    unknown = sorted(set(config.class_weight) - set(data.class_names))
    if unknown:
        raise KerasFTError(
            f"Invalid `class_weight`: unknown class(es) {unknown}. "
            f"The classes are: {list(data.class_names)}."
        )
    return {i: float(config.class_weight.get(name, 1.0)) for i, name in enumerate(data.class_names)}


def gradual_plan(groups: list[list[keras.layers.Layer]]) -> str:
    """What gradual unfreezing trains at each epoch of phase 2, in one line."""
    if not groups:
        return "gradual unfreezing: no backbone layer trains in phase 2."
    names = [g[0].name if len(g) == 1 else f"{g[-1].name}-{g[0].name}" for g in groups]
    later = "".join(f"; epoch {i} adds {name}" for i, name in enumerate(names[1:], 2))
    return f"gradual unfreezing: phase 2's epoch 1 trains the head and {names[0]}{later}."


def compile_for_phase(
    model: keras.Model,
    phase: str,
    config: TrainingConfig,
    num_classes: int,
    steps_per_epoch: int = 1,
    learning_rate: float | None = None,
) -> None:
    """Compile `model` for `phase`: Adam at `head_lr`, or SGD momentum for fine-tuning.

    With `config.discriminative_lr` > 1 or `config.gradual_unfreeze` > 1,
    fine-tuning uses `LayerwiseSGD`: with `layer_multipliers` (lower backbone
    layers train at lower rates) and `layer_starts` (lower groups join later).
    `learning_rate` replaces the configured rate and schedule (the range test's
    sweep, in which every unfrozen layer trains from the first step).
    """
    if phase == "head":
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate or config.head_lr)
    else:
        rate = learning_rate or finetune_learning_rate(config, steps_per_epoch)
        sgd = dict(
            learning_rate=rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay or None,  # None: Keras skips the decay step
        )
        ratio, groups = config.discriminative_lr, config.gradual_unfreeze
        multipliers = layer_multipliers(model, ratio) if ratio > 1.0 else {}
        gradual = groups > 1 and not learning_rate
        starts = layer_starts(model, groups, steps_per_epoch) if gradual else {}
        if multipliers or starts:
            optimizer = LayerwiseSGD(multipliers, starts, **sgd)
        else:
            optimizer = keras.optimizers.SGD(**sgd)
    if config.label_smoothing:
        loss = SparseSmoothedCrossentropy(config.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(
                k=min(5, num_classes), name="top_k_accuracy"
            ),
        ],
        jit_compile=config.jit_compile,  # refused with determinism (see TrainingConfig)
    )


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` writing per-epoch summaries only.

    Steps are epochs, which `fit_two_phase` numbers continuously across both
    phases, so the head and fine-tune phases share one axis. Keras's extra
    `evaluation_*_vs_iterations` summaries are left out: they are keyed on the
    optimizer's step count, which restarts with phase 2's new optimizer.
    """

    def __init__(self, log_dir):
        super().__init__(log_dir=str(log_dir), write_graph=False, update_freq="epoch")

    def on_test_end(self, logs=None):
        # With update_freq="epoch" the base class pushes no writer at test begin;
        # all it would do here is write the iteration-keyed summaries.
        pass


class Checkpoint(keras.callbacks.Callback):
    """Save every variable of the classifier and its optimizer after each epoch.

    Written atomically into `directory`: `epoch-NNNN.npz` (model variables,
    random-generator states included, and optimizer variables; no pickle),
    then `state.json` (`manifest.CHECKPOINT_STATE`) naming it, with the phase,
    the epoch count and the history so far. A kill at any moment leaves the
    last complete checkpoint.
    """

    def __init__(self, directory, classifier: keras.Model, phase: str, history, signature: str):
        super().__init__()
        self.directory = Path(directory)
        self.classifier, self.phase, self.history = classifier, phase, history
        self.signature = signature

    def on_epoch_end(self, epoch, logs=None):
        if self.directory.is_symlink():
            raise KerasFTError(
                f"'{self.directory}' is a symbolic link; keras_ft never writes checkpoints "
                "through a link. Remove it, then run again."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.npz"
        arrays = {f"model_{i}": np.asarray(v) for i, v in enumerate(self.classifier.variables)}
        arrays.update(
            {f"optimizer_{i}": np.asarray(v) for i, v in enumerate(self.model.optimizer.variables)}
        )
        state = {
            "phase": self.phase,
            "epoch": epoch + 1,
            "file": name,
            "signature": self.signature,
            "history": self.history.rows,
            "decisions": self.history.decisions,
        }
        write_atomically(self.directory / name, lambda handle: np.savez(handle, **arrays))
        write_atomically(
            self.directory / CHECKPOINT_STATE, lambda h: h.write(json.dumps(state).encode())
        )
        for old in self.directory.glob("epoch-*.npz"):
            if old.name != name:
                old.unlink()


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


def _restore_model(state: dict, classifier: keras.Model) -> None:
    """Put the checkpoint's model variables back."""
    for i, variable in enumerate(classifier.variables):
        variable.assign(state["arrays"][f"model_{i}"])


def _restore_optimizer(state: dict, trained: keras.Model) -> None:
    """Put the checkpoint's optimizer variables back into `trained`'s (compiled) optimizer."""
    optimizer = trained.optimizer
    optimizer.build(trained.trainable_variables)
    for i, variable in enumerate(optimizer.variables):
        variable.assign(state["arrays"][f"optimizer_{i}"])


def fit_two_phase(
    model: keras.Model,
    data,
    config: TrainingConfig,
    callbacks=(),
    verbose="auto",
    checkpoint_dir=None,
    resume: bool = False,
    signature: str = "",
    replicas: int = 1,
    chief: bool = True,
    frozen=None,
    probe=None,
) -> TrainingHistory:
    """Train `model` on `data` (an `ImageFolder`) in two phases.

    Phase 1 freezes the backbone and trains the head for `config.head_epochs`
    (on features computed once, when there is no augmentation and
    `config.feature_cache` is on: see `fit_head_on_features`).
    Phase 2 unfreezes the backbone per `config.unfreeze` (BatchNormalization
    stays frozen), recompiles with SGD momentum and trains for
    `config.finetune_epochs`, continuing the epoch count.

    Args:
        checkpoint_dir: where to checkpoint after every epoch (None: nowhere).
        resume: continue from the checkpoint in `checkpoint_dir`, if any.
            Every epoch's data and randomness follow from the seed and the
            epoch number, so a resumed run ends bitwise where an uninterrupted
            one does.
        signature: identifies the configuration and data; a checkpoint with
            another signature is refused.
        replicas: model replicas of the `tf.distribute` strategy this runs
            under (in its scope): each step takes `data.config.batch_size`
            images per replica, and `config.lr_scaling` applies.
        chief: whether this process writes checkpoints (under a multi-worker
            strategy only the chief does; every worker reads them to resume).
        frozen: the frozen backbone's `(train, train labels, validation,
            validation labels)` features if already computed (see
            `frozen_features`); phase 1 then uses them instead of computing them.
        probe: the `keras_ft.models.probe.ProbeResult` of a linear probe on those
            features: the third candidate of `config.fallback_to_probe`, and what
            `flip="auto"` decides on (`decide_flip`).

    Returns:
        A `TrainingHistory` covering both phases.
    """
    if config.early_stopping and data.validation is None:
        raise KerasFTError(
            "Invalid `early_stopping`: it watches the validation loss, and "
            "validation_split is 0. Set validation_split > 0 (e.g. 0.2)."
        )
    if config.early_stopping and resume:
        raise KerasFTError(
            "`resume` cannot replay early stopping's state exactly. Start again "
            "without resume, or train without early_stopping."
        )
    for name, instead in (("fallback_to_head", "False"), ("fallback_to_mixes", "()")):
        if getattr(config, name) and data.validation is None:
            raise KerasFTError(
                f"Invalid `{name}`: it compares validation losses after phase 2 with those of "
                "the weights phase 2 started from, which needs a validation split. Set "
                f"validation_split > 0, or pass {name}={instead}."
            )
    if config.fallback_to_probe:
        _check_probe_fallback(model, data, probe)
    if config.head_init == "probe":
        _check_probe_head(model, probe)
    for name in data.decides:
        _require_probe(probe, name, f"{name}=True or {name}=False to the ImageFolder")
    weights = class_weights(config, data)
    scaled = {  # a rate found by the range test is found at the global batch already
        name: scale_learning_rate(rate, replicas, config.lr_scaling)
        for name in ("head_lr", "finetune_lr")
        if (rate := getattr(config, name)) != "auto"
    }
    config = dataclasses.replace(config, **scaled)
    batch_size = data.config.batch_size * replicas  # global: the strategy splits it
    used = len(data.train_files) - len(data.train_files) % replicas  # see train_dataset
    if used == 0:
        raise KerasFTError(
            f"Only {len(data.train_files)} training images for {replicas} replicas. "
            "Add images or use fewer devices."
        )
    steps = math.ceil(used / batch_size)
    state = read_checkpoint(checkpoint_dir, signature) if resume and checkpoint_dir else None
    done = state["epoch"] if state else 0
    history = TrainingHistory(state["history"], state["decisions"]) if state else TrainingHistory()
    # Weights first: decisions are measured on them, and when every epoch was done
    # (only the save after them failed) they are the final weights.
    if state:
        _restore_model(state, model)
    elif config.head_init == "probe":
        set_probe(model, probe, standardise=True)
    decisions = history.decisions
    for name in data.decides:
        if name not in decisions:
            decisions[name] = DECIDERS[name](split_at_features(model)[0], data, probe)
            if verbose != 0:
                print(f"{name}='auto': {decisions[name]['reason']}")
    decided = {name: decisions[name][name] for name in data.decides}
    plan = (
        ("head", 0, config.head_epochs),
        ("finetune", config.head_epochs, config.finetune_epochs),
    )
    progress = Progress(plan, verbose)
    for phase, start, epochs in plan:
        end = start + epochs
        fallback = phase == "finetune" and bool(
            config.fallback_to_head or config.fallback_to_probe or config.fallback_to_mixes
        )
        # A run killed after its last epoch's checkpoint still has the fallback to take.
        if not epochs or (done >= end and not fallback):
            continue
        first = max(start, done)
        config = _decide(model, data, phase, config, history, verbose, batch_size, decided)
        features = None
        if phase == "head":
            freeze_backbone(model)
            extractor, head = split_at_features(model)
            cached = config.feature_cache and not (data.config.augment and config.head_augment)
            trained = head if cached else model
            if frozen is not None:  # computed by the caller (FineTuner, for its linear probe)
                features = frozen[:2]
            elif cached or first == 0:
                if verbose != 0:
                    print("Backbone features of the training images, computed once:")
                features = _features(extractor, data.unaugmented_train(), verbose)
            if first == 0 and config.head_init != "probe":  # a fresh phase 1 (a resumed
                start_feature_norm(model, features[0])  # one has its statistics back)
            if not cached and config.feature_cache and verbose != 0:
                print(
                    "Phase 1 runs the frozen backbone on every batch: augmentation is on, so "
                    "its features change each epoch and cannot be cached. (With "
                    "head_augment=False, --no-head-augment, phase 1 trains on the unaugmented "
                    "images' features, computed once; phase 2 still augments.)"
                )
        else:
            unfreeze_backbone(model, config.unfreeze)
            trained = model
        compile_for_phase(trained, phase, config, data.num_classes, steps)
        progress.start_phase(phase)
        if first < end and verbose != 0:
            layers = len(trainable_backbone_layers(model)) if phase != "head" else 0
            print(phase_line(phase, config, epochs, first - start, layers, trained is not model))
        if phase != "head" and config.gradual_unfreeze > 1 and first < end and verbose != 0:
            print(gradual_plan(unfreeze_groups(model, config.gradual_unfreeze)))
        if state:  # resuming: the optimizer state only carries over within its phase
            if state["phase"] == phase and first > start:
                _restore_optimizer(state, trained)
            state = None
        if trained is model:
            if first < end:
                dataset = data.train_dataset(first, end - first, batch_size, replicas, decided)
            validation = data.validation
        else:
            dataset = feature_batches(features, data, first, end, batch_size, replicas)
            # Arrays: Keras batches them itself, and shards them by DATA under a strategy.
            if frozen is not None:
                validation = frozen[2:] if data.validation else None
            else:
                validation = (
                    _features(extractor, data.validation, verbose) if data.validation else None
                )
        if validation is not None and replicas > 1:
            count = len(data.validation_files)
            validation = evenly_batched(validation, count, batch_size, replicas)
        if isinstance(validation, tf.data.Dataset):
            validation = shard_by_data(validation)
        run_callbacks = [*callbacks, history.recorder(phase)]
        if config.early_stopping:
            run_callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=config.early_stopping, restore_best_weights=True
                )
            )
        if checkpoint_dir and chief:
            run_callbacks.append(Checkpoint(checkpoint_dir, model, phase, history, signature))
        if fallback:
            resumed = first > start
            head = _phase2_start(model, trained, validation, checkpoint_dir, chief, resumed)
        if first < end:
            trained.fit(
                shard_by_data(dataset),
                epochs=end,
                initial_epoch=first,
                steps_per_epoch=steps,
                validation_data=validation,
                callbacks=[*run_callbacks, *progress.callbacks()],
                class_weight=weights,
                shuffle=False,  # each epoch is already shuffled from the seed
                verbose=progress.keras_verbose,  # a bar on a terminal, else Progress's lines
            )
        if fallback:
            candidates = {
                "head": config.fallback_to_head,
                "probe": config.fallback_to_probe,
                "mixes": config.fallback_to_mixes,
            }
            refit = frozen if config.refit_probe else None
            decision = _fall_back(model, trained, validation, *head, candidates, probe, refit)
            history.decisions["fallback"] = decision
            if verbose != 0:
                print(f"fallback: {decision['reason']}")
    return history


PHASE2_START = "phase2-start.npz"  # in the checkpoints folder, for the fallback


def _phase2_start(model, trained, validation, checkpoint_dir, chief: bool, resumed: bool):
    """The weights phase 2 starts from and their validation (loss, accuracy), for the fallback.

    Written beside the checkpoints before phase 2's first epoch, and read back
    by a run resumed within phase 2 (or after it), so that its fallback
    compares with the same weights and scores as the uninterrupted run's.
    """
    path = Path(checkpoint_dir) / PHASE2_START if checkpoint_dir else None
    if resumed:
        if path is None or not path.is_file():
            raise KerasFTError(
                f"Cannot resume the fallback: '{path}' (the weights phase 2 started from) is "
                "missing from the checkpoints. Start again without --resume."
            )
        with np.load(path, allow_pickle=False) as arrays:
            weights = [arrays[f"weight_{i}"] for i in range(len(arrays.files) - 1)]
            return weights, tuple(float(score) for score in arrays["scores"])
    weights, scores = model.get_weights(), _scores(trained, validation)
    if path is not None and chief:
        arrays = {f"weight_{i}": weight for i, weight in enumerate(weights)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda handle: np.savez(handle, scores=np.array(scores), **arrays))
    return weights, scores


def _scores(model: keras.Model, validation) -> tuple[float, float]:
    """`model`'s compiled loss and accuracy on the validation split (as val_loss, val_accuracy)."""
    measured = model.evaluate(validation, verbose=0, return_dict=True)
    return float(measured["loss"]), float(measured["accuracy"])


def _check_probe_fallback(model: keras.Model, data, probe) -> None:
    """Refuse `fallback_to_probe` where the probe cannot be measured or become the model."""
    if data.validation is None:
        raise KerasFTError(
            "Invalid `fallback_to_probe`: it compares the validation loss of the fine-tuned "
            "model with that of a linear probe on the frozen features, which needs a "
            "validation split. Set validation_split > 0, or pass fallback_to_probe=False."
        )
    _check_probe_head(model, probe, "fallback_to_probe", "fallback_to_probe=False")


def _require_probe(probe, option: str, instead: str) -> None:
    """Refuse `option` when `fit_two_phase` was not given the linear probe it needs."""
    if probe is None:
        raise KerasFTError(
            f"Invalid `{option}`: it needs the linear probe on the frozen features, which "
            "`FineTuner.fit` computes (pass it as `probe` when calling `fit_two_phase`), "
            f"or pass {instead}."
        )


def _check_probe_head(model, probe, option="head_init", instead='head_init="random"') -> None:
    """Refuse to make the linear probe the head's last layer where it cannot be."""
    _require_probe(probe, option, instead)
    if any(layer.name.startswith("head_dense_") for layer in model.layers):
        raise KerasFTError(
            f"Invalid `{option}`: the probe becomes the head's last layer, on the "
            "pooled features, which a head with hidden Dense layers (`dense_units`) cannot "
            f"hold. Pass dense_units=() or {instead}."
        )


def _fall_back(
    model,
    trained,
    validation,
    head_weights,
    head_scores: tuple,
    candidates: dict,
    probe=None,
    refit=None,
) -> dict:
    """After phase 2: keep, of the candidates, the weights with the lowest validation loss.

    The fine-tuned weights always compete; with `candidates["head"]`, the
    weights phase 2 started from (the phase-1 head); with `candidates["probe"]`,
    the backbone phase 2 started from with `probe` as the head (`set_probe`);
    for each fraction `a` of `candidates["mixes"]`, `a` times the fine-tuned
    weights plus `1 - a` times those phase 2 started from (`mix_weights`).
    A tie keeps the earlier of fine-tuned, head, probe, mixes; a NaN loss
    never wins. A kept probe is fitted again on the training and validation
    features together when `refit` holds them (`frozen_features`' four arrays).

    Returns:
        The decision for the run record: `kept` ("finetune", "head", "probe"
        or "mix", with the fraction as `mix`), the validation losses, the kept
        model's validation accuracy (`kept_val_accuracy`), and `reason` (one
        sentence).
    """
    scores = {"finetune": _scores(trained, validation)}
    weights = {"finetune": model.get_weights()}
    if candidates.get("head"):
        scores["head"], weights["head"] = head_scores, head_weights
    if candidates.get("probe"):
        model.set_weights(head_weights)
        set_probe(model, probe)
        scores["probe"], weights["probe"] = _scores(trained, validation), model.get_weights()
    mixes = {f"mix {fraction:g}": fraction for fraction in candidates.get("mixes", ())}
    for name, fraction in mixes.items():
        weights[name] = mix_weights(weights["finetune"], head_weights, fraction)
        model.set_weights(weights[name])
        scores[name] = _scores(trained, validation)
    losses = {name: loss for name, (loss, _) in scores.items()}
    head_loss = head_scores[0]
    kept = min(losses, key=lambda key: losses[key] if math.isfinite(losses[key]) else math.inf)
    model.set_weights(weights[kept])
    verdicts = {
        "finetune": "kept the fine-tuned weights",
        "head": "fine-tuning did not lower it, so the phase-1 head's weights were restored",
        "probe": "the linear probe on the frozen features is the model (on the backbone "
        "phase 2 started from)",
        **{
            name: f"kept {name}: {a:g} x the fine-tuned weights + {1 - a:g} x those phase 2 "
            "started from"
            for name, a in mixes.items()
        },
    }
    verdict = verdicts[kept]
    measured = f"validation loss {head_loss:.4g} before phase 2, {losses['finetune']:.4g} after it"
    if "probe" in losses:
        measured += f", {losses['probe']:.4g} with the linear probe"
    measured += "".join(f", {losses[name]:.4g} with {name}" for name in mixes)
    decision = {
        "kept": "mix" if kept in mixes else kept,
        "kept_val_accuracy": scores[kept][1],
        "head_val_loss": head_loss,
        "finetune_val_loss": losses["finetune"],
    }
    if "probe" in losses:
        decision["probe_val_loss"] = losses["probe"]
    if mixes:
        decision["mix_val_losses"] = {f"{a:g}": losses[name] for name, a in mixes.items()}
    if kept in mixes:
        decision["mix"] = mixes[kept]
    if kept == "probe" and refit is not None:
        features, labels = np.concatenate(refit[::2]), np.concatenate(refit[1::2])
        set_probe(model, linear_probe(features, labels, num_classes=len(probe.intercept)))
        decision["probe_refit_images"] = len(labels)
        verdict += f", refitted on the {len(labels)} training and validation images"
    return {**decision, "reason": f"{measured}: {verdict}."}


def mix_weights(tuned: list, start: list, fraction: float) -> list:
    """`fraction * tuned + (1 - fraction) * start`, array by array (`get_weights` lists).

    Arrays that are not floating point (a random generator's state) are
    `tuned`'s, and each mix keeps its array's dtype.
    """
    return [
        (fraction * t + (1 - fraction) * s).astype(t.dtype)
        if np.issubdtype(t.dtype, np.floating)
        else t
        for t, s in zip(tuned, start, strict=True)
    ]


def _decide(model, data, phase, config, history, verbose, batch_size, decided) -> TrainingConfig:
    """Take `phase`'s decisions from the data: its `"auto"` learning rate (the range
    test's batches augmented as `decided`, the augmentation decisions).

    Each is taken once, before the phase trains, and kept in `history.decisions`
    (so in checkpoints, where a resumed run reads it back, and in the run record).

    Returns:
        `config` with the phase's learning rate resolved.
    """
    from keras_ft.training.lr_find import resolve, sweep

    decisions = history.decisions
    name = f"{phase}_lr"
    if getattr(config, name) != "auto":
        return config
    if name not in decisions:
        found = sweep(model, data, phase, config, batch_size=batch_size, decided=decided)
        decisions[name] = found.summary()
        if verbose != 0:
            print(
                f"{name}='auto': the learning-rate range test ({len(found.losses)} steps) "
                f"suggests {found.suggestion:.3g} (steepest descent at {found.steepest:.3g})"
            )
    return resolve(config, phase, decisions[name]["suggestion"])


FLIP_RETAINED = 0.6  # for flip="auto": the share of the probe's accuracy mirrors must keep
TURNS_RETAINED = 0.5  # for quarter_turns="auto": the share turned images must keep
GRID_RETAINED = 0.3  # for both: the share the shallow grid's probe must keep (`_decide_symmetry`)


def decide_flip(extractor: keras.Model, data, probe) -> dict:
    """Whether training should flip images, from how linear probes see mirrored ones.

    Taken before phase 1, so that both phases follow it. The linear probe,
    fitted on the frozen features of the training images, is shown the same
    images mirrored. Where left and right carry no meaning (photos, textures)
    a mirror image is just another image of its class, and the probe keeps
    most of its accuracy; mirrored digits and text are other symbols, and it
    loses most of it. The share kept is `(mirrored - chance) / (accuracy -
    chance)`; the rule (`_decide_symmetry`): flip when the probe keeps at
    least `FLIP_RETAINED`, a second probe on a shallower feature map at least
    `GRID_RETAINED`, and both close at least a quarter of the gap from chance
    to 1. Otherwise do not flip: a wrong flip is the silent mistake. The
    training split, not the validation split, is measured: it is the larger,
    and it exists without a validation split. It costs two more passes of the
    frozen backbone over the training images.

    Args:
        extractor: the frozen backbone and its pooling (`split_at_features`).
        data: the `ImageFolder` (its training split is measured).
        probe: the `keras_ft.models.probe.ProbeResult` fitted on the training
            split's frozen features.

    Returns:
        A dict: `flip` (bool), `accuracy` and `mirrored_accuracy` (the
        probe's on the training images and on their mirror images),
        `retained` (its share), `retained_grid` (the second probe's, where
        there is one) and `reason` (one sentence, for the user).
    """
    words = ("flip", "mirrored", "mirror images", "horizontal flips", FLIP_RETAINED)
    return _decide_symmetry(extractor, data, probe, words, tf.image.flip_left_right)


def decide_quarter_turns(extractor: keras.Model, data, probe) -> dict:
    """Whether training should turn images by quarter turns, as `decide_flip` decides flips.

    The probes are shown the training images turned a quarter (90 degrees):
    the classes of textures, micrographs, aerial and microscope images keep
    under a turn, those of digits, text and upright photos do not. The rule
    is `decide_flip`'s, with `TURNS_RETAINED` for the pooled probe; images
    that are not square are never turned (a turn would swap their height and
    width).

    Returns:
        A dict: `quarter_turns` (bool), `accuracy` and `turned_accuracy`,
        `retained`, `retained_grid` and `reason`, as `decide_flip`'s.
    """
    height, width = data.image_size
    if height != width:
        return {
            "quarter_turns": False,
            "reason": f"no quarter turns: the images ({height}x{width}) are not square.",
        }
    words = ("quarter_turns", "turned", "copies turned a quarter", "quarter turns", TURNS_RETAINED)
    return _decide_symmetry(extractor, data, probe, words, tf.image.rot90)


def _decide_symmetry(extractor, data, probe, words: tuple, transform) -> dict:
    """`decide_flip`'s rule for `transform` (a function of a batch of images).

    Two probes are shown the transformed training images: `probe`, on the
    pooled features, and one fitted here on a shallower feature map (the
    backbone's last at a stride of at most 8, whose units see a small part
    of the image) averaged over a 2x2 grid, which keeps left from right and
    top from bottom. Deep features that barely change under the transform
    (ImageNet-trained ones are close to mirror-invariant) cannot tell digits
    from their mirror images; the shallow grid's probe sees where the
    evidence lies and which way it faces. The pooled probe must keep the
    `words` share, the grid's `GRID_RETAINED`. Without such a map (a backbone
    that is not a model of layers, images too small) the pooled probe decides
    alone.

    `words`: the decision's key, the transformed accuracy's key prefix, what
    the transformed images are called, what the augmentation is called, and
    the share of the pooled probe's accuracy above chance they must keep.
    """
    key, prefix, images, augmentation, threshold = words
    chance = 1.0 / data.num_classes
    transformed = data.unaugmented_train().map(lambda x, labels: (transform(x), labels))
    features, labels = _features(extractor, transformed)
    accuracy = probe.train_accuracy
    retained, transformed_accuracy = _share(accuracy, probe.predict(features), labels, chance)
    measured = (
        f"the linear probe's accuracy on the training images is {accuracy:.3f}, on their "
        f"{images} {transformed_accuracy:.3f}"
    )
    shares = [(retained, threshold, "keeping {:.0%} of its accuracy above chance")]
    grid = _grid_extractor(extractor)
    if grid is not None:
        train, train_labels = _features(grid, data.unaugmented_train())
        grid_probe = linear_probe(train, train_labels, num_classes=data.num_classes)
        grid_transformed = grid_probe.predict(_features(grid, transformed)[0])
        grid_retained, grid_accuracy = _share(
            grid_probe.train_accuracy, grid_transformed, labels, chance
        )
        shares.append((grid_retained, GRID_RETAINED, "a probe on a shallower map's grid {:.0%}"))
        measured += (
            f" (on a 2x2 grid of a shallower feature map {grid_probe.train_accuracy:.3f} "
            f"and {grid_accuracy:.3f})"
        )
    informative = all(share is not None for share, _, _ in shares)
    chosen = informative and all(share >= least for share, least, _ in shares)
    if not informative:
        reason = f"no {augmentation}: {measured}, too close to chance to tell."
    else:
        kept = ", ".join(
            f"{text.format(share)} ({'>=' if share >= least else '<'} {least:.0%})"
            for share, least, text in shares
        )
        reason = f"{augmentation if chosen else f'no {augmentation}'}: {measured}, {kept}."
    decision = {
        key: bool(chosen),
        "accuracy": float(accuracy),
        f"{prefix}_accuracy": transformed_accuracy,
        "retained": float(retained) if retained is not None else 0.0,
        "reason": reason,
    }
    if grid is not None:
        decision["retained_grid"] = shares[1][0]
    return decision


def _share(accuracy: float, predicted, labels, chance: float) -> tuple[float | None, float]:
    """(share of `accuracy` above chance kept by `predicted`, or None if `accuracy` is too
    close to chance to tell; the accuracy of `predicted`)."""
    transformed = float(np.mean(predicted == labels))
    if accuracy < chance + (1.0 - chance) / 4:
        return None, transformed
    return float((transformed - chance) / (accuracy - chance)), transformed


def _grid_extractor(extractor: keras.Model) -> keras.Model | None:
    """The backbone's last feature map at a stride of at most 8, averaged over a 2x2 grid
    and flattened (None for an extractor with no backbone model inside, or no such map)."""
    nested = [i for i, layer in enumerate(extractor.layers) if isinstance(layer, keras.Model)]
    if not nested:
        return None
    backbone = extractor.layers[nested[0]]
    height, width = extractor.input.shape[1:3]
    shallow = [
        layer
        for layer in backbone.layers
        if not isinstance(layer, keras.layers.InputLayer)
        and len(layer.output.shape) == 4
        and layer.output.shape[1] >= max(2, math.ceil(height / 8))
        and layer.output.shape[2] >= max(2, math.ceil(width / 8))
    ]
    if not shallow:
        return None
    middle = keras.Model(backbone.input, shallow[-1].output)
    before = extractor.layers[nested[0] - 1]
    feature_map = middle(extractor.input if nested[0] == 1 else before.output)
    size = (math.ceil(feature_map.shape[1] / 2), math.ceil(feature_map.shape[2] / 2))
    cells = keras.layers.AveragePooling2D(size, padding="same", name="symmetry_grid")
    return keras.Model(extractor.input, keras.layers.Flatten()(cells(feature_map)))


DECIDERS = {"flip": decide_flip, "quarter_turns": decide_quarter_turns}


def kept_epoch(rows: list[dict], config: TrainingConfig) -> dict | None:
    """The history row whose weights a phase ended with, given that phase's rows.

    With early stopping, Keras restores the weights of the epoch with the
    lowest validation loss (the first such epoch); otherwise the last epoch's stay.
    """
    if not rows:
        return None
    if config.early_stopping and all("val_loss" in row for row in rows):
        return rows[int(np.argmin([row["val_loss"] for row in rows]))]
    return rows[-1]


def advice(rows: list[dict], config: TrainingConfig, decisions: dict | None = None) -> list[str]:
    """What the history says about the epoch budget and the fine-tuning, in plain sentences.

    Three checks, on the validation split (nothing is said without one):
    a phase stopped early (fewer epochs than its budget); a phase's validation
    loss was still at its best at its last epoch, so more epochs would likely
    help ("+N epochs": half the phase's budget, at least 1); fine-tuning ended
    with a lower validation accuracy than the phase-1 head it started from.

    Args:
        rows: `TrainingHistory.rows` of both phases.
        config: the run's `TrainingConfig`.
        decisions: `TrainingHistory.decisions`; with `fallback_to_head` or
            `fallback_to_probe`, which weights were kept.

    Returns:
        A list of messages (empty when there is nothing to say).
    """
    messages, kept = [], {}
    budgets = {"head": config.head_epochs, "finetune": config.finetune_epochs}
    names = {"head": "phase 1 (head)", "finetune": "phase 2 (fine-tuning)"}
    for phase in PHASES:
        ran = [row for row in rows if row["phase"] == phase]
        if not ran or "val_loss" not in ran[-1]:
            continue
        kept[phase] = kept_epoch(ran, config)
        losses = [row["val_loss"] for row in ran]
        if len(ran) < budgets[phase]:
            messages.append(
                f"{names[phase]} stopped early at epoch {ran[-1]['epoch']} ({len(ran)} of "
                f"{budgets[phase]} epochs): val_loss did not improve for "
                f"{config.early_stopping} epoch(s); kept the weights of epoch "
                f"{kept[phase]['epoch']}."
            )
        elif len(ran) > 1 and losses[-1] < min(losses[:-1]):
            more = max(1, round(budgets[phase] / 2))
            option = "head_epochs" if phase == "head" else "finetune_epochs"
            messages.append(
                f"{names[phase]}: val_loss was still improving at its last epoch "
                f"({losses[-2]:.4g} -> {losses[-1]:.4g}): train longer: +{more} epochs "
                f"({option}={budgets[phase] + more})."
            )
    head, tuned = kept.get("head"), kept.get("finetune")
    fallback = (decisions or {}).get("fallback", {})
    if fallback.get("kept") == "head":
        messages.append(
            f"fine-tuning did not lower the validation loss of the phase-1 head "
            f"({fallback['head_val_loss']:.4g} -> {fallback['finetune_val_loss']:.4g}): the "
            "head's weights were kept. Try a lower finetune_lr or unfreezing fewer layers."
        )
    elif fallback.get("kept") == "probe":
        messages.append(
            f"a logistic regression on the frozen features had a lower validation loss "
            f"({fallback['probe_val_loss']:.4g}) than fine-tuning "
            f"({fallback['finetune_val_loss']:.4g}): the model is that linear probe. With more "
            "images, or a lower finetune_lr, fine-tuning may do better."
        )
    elif head and tuned and tuned.get("val_accuracy", 1) < head.get("val_accuracy", 0):
        messages.append(
            f"fine-tuning ended below the phase-1 head: val_accuracy "
            f"{tuned['val_accuracy']:.4f} after phase 2 vs {head['val_accuracy']:.4f} after "
            "phase 1. Try a lower finetune_lr, unfreezing fewer layers, or finetune_epochs=0."
        )
    return messages


def _features(extractor: keras.Model, dataset, verbose=0) -> tuple[np.ndarray, np.ndarray]:
    """The frozen backbone's features of every batch, with a progress bar unless `verbose` is 0."""
    progress = None
    if verbose != 0:
        total = int(dataset.cardinality())
        progress = keras.utils.Progbar(  # on a terminal a bar, else one line at the end
            total if total >= 0 else None, verbose=1 if uses_bars(verbose) else 2, unit_name="batch"
        )
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(predict_batch(extractor, images)))
        labels.append(np.asarray(batch_labels))
        if progress is not None:
            progress.add(1)
    return np.concatenate(features), np.concatenate(labels)


def frozen_features(extractor: keras.Model, data, verbose=0) -> tuple:
    """The frozen backbone's features: (train, train labels, validation, validation labels).

    The training split in file order, unaugmented; the validation pair is
    `(None, None)` without a validation split.
    """
    if verbose != 0:
        print("Backbone features of the training and validation images, computed once:")
    train = _features(extractor, data.unaugmented_train(), verbose)
    validation = _features(extractor, data.validation, verbose) if data.validation else None
    return (*train, *(validation or (None, None)))


def start_feature_norm(model: keras.Model, features: np.ndarray) -> None:
    """Start the head's feature BatchNormalization from the training features' statistics.

    Done once, before a fresh phase 1, from the unaugmented training images
    (whether phase 1 then trains on cached features or on augmented images).

    Its moving mean and variance begin at 0 and 1, and the frozen backbone's
    features are nothing like that (VGG16's have a standard deviation of about
    14 and peaks near 400). They move 1 % a step, so with a few hundred
    images, whose phase 1 is a few dozen steps, validation and prediction
    would use statistics that are still mostly the initial ones. Starting
    them at the features' own mean and variance (as the linear probe
    standardises its features) makes them right from the first epoch. A
    model without the layer (`normalize_features=False`) is left as it is.
    """
    norm = feature_norm(model)
    if norm is None:
        return
    norm.moving_mean.assign(features.mean(axis=0).astype(np.float32))
    norm.moving_variance.assign(features.var(axis=0).astype(np.float32))


def feature_batches(
    cached: tuple[np.ndarray, np.ndarray],
    data,
    first: int,
    end: int,
    batch_size: int | None = None,
    replicas: int = 1,
) -> tf.data.Dataset:
    """Phase 1 on features computed once: batches of the frozen backbone's `cached` outputs.

    The training images do not change between epochs, so neither do the
    backbone's features (`cached`: features and labels of the training split
    in file order): computing them once makes every head epoch cost only the
    head. Epochs `first` to `end - 1` are ordered as `data.train_dataset`
    orders them (and trims them for `replicas`), in batches of `batch_size`
    (default: the data's). User callbacks see the head model.
    """
    features, labels = cached

    def gather(indices):
        batch = tf.numpy_function(lambda i: features[i], [indices], tf.float32, stateful=False)
        batch.set_shape([None, *features.shape[1:]])
        return batch, tf.gather(labels, indices)

    dataset = None
    for epoch in range(first, end):
        order = data.epoch_order(epoch).astype(np.int64)
        order = tf.data.Dataset.from_tensor_slices(order[: len(order) - len(order) % replicas])
        batches = order.batch(batch_size or data.config.batch_size).map(gather)
        dataset = batches if dataset is None else dataset.concatenate(batches)
    return dataset.prefetch(tf.data.AUTOTUNE)
