"""The two-phase fit: head on a frozen backbone, then fine-tuning with SGD momentum.

`fit_two_phase` resolves what the data decides (`keras_ft.training.resolve`),
then runs a short plan: `HeadPhase` (phase 1) and `FinetunePhase` (phase 2,
with the fallback as a step after it). Each phase prepares its model, data and
callbacks and fits once; the epochs are numbered continuously across both.
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import tensorflow as tf

from keras_ft.config import TrainingConfig
from keras_ft.models.classifier import (
    freeze_backbone,
    set_probe,
    split_at_features,
    unfreeze_backbone,
)
from keras_ft.training.checkpoint import (
    Checkpoint,
    EarlyStopping,
    read_checkpoint,
    restore_model,
    restore_optimizer,
)
from keras_ft.training.decisions import Decisions
from keras_ft.training.distribute import evenly_batched, scale_learning_rate, shard_by_data
from keras_ft.training.fallback import fall_back, phase2_start
from keras_ft.training.features import (
    augmented_copies,
    extract_features,
    feature_batches,
    features_cached,
    head_copies,
    start_feature_norm,
)
from keras_ft.training.history import TrainingHistory
from keras_ft.training.optimizers import (
    class_weights,
    compile_for_phase,
    gradual_plan,
    trainable_backbone_layers,
    unfreeze_groups,
)
from keras_ft.training.resolve import (
    resolve_augmentation,
    resolve_learning_rate,
    resolve_time_budget,
)
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.progress import Progress, phase_line


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
    decisions=None,
    deadline: float | None = None,
) -> TrainingHistory:
    """Train `model` on `data` (an `ImageFolder`) in two phases, after resolving what the
    data decides (`resolve_before_training`).

    Phase 1 freezes the backbone and trains the head for `config.head_epochs`;
    phase 2 unfreezes it per `config.unfreeze` (BatchNormalization stays
    frozen unless `config.train_batchnorm`) and fine-tunes with SGD momentum
    for `config.finetune_epochs`, continuing the epoch count; with a fallback
    option, the model kept is then chosen
    (`keras_ft.training.fallback.fall_back`). A phase's `"auto"` learning rate
    is found just before it.

    Args:
        callbacks: Keras callbacks, for both phases.
        verbose: as `FineTuner.fit`'s.
        decisions: `Decisions` already taken (a run record's): replayed, not
            measured again. A checkpoint resumed from brings its own.
        deadline: for `config.time_budget`, the `time.perf_counter()` by which the
            whole fit should end (default: `time_budget` seconds from now).
        The other arguments are `Run`'s fields.

    Returns:
        A `TrainingHistory` covering both phases, its `decisions` included.
    """
    run = start_run(model, data, config, checkpoint_dir, resume, signature, replicas, probe)
    run.chief, run.frozen, run.probe, run.verbose = chief, frozen, probe, verbose
    resolve_before_training(run, decisions, deadline)
    phases = (HeadPhase(run), FinetunePhase(run))
    progress = Progress([(p.name, p.start, p.epochs) for p in phases], verbose)
    for phase in phases:
        if phase.pending():
            run.config = resolve_learning_rate(run, phase.name)
            phase.train([*callbacks], progress)
    return run.history


def resolve_before_training(run, decisions=None, deadline: float | None = None) -> None:
    """Take the decisions due before phase 1 (`keras_ft.training.resolve`): replay those
    given, decide the augmentation, plan the epochs of a time budget."""
    if decisions is not None and not run.state:
        run.history.decisions = Decisions.from_record(  # a copy; the fallback is taken anew
            {**decisions.record(), "fallback": None}
        )
    decided = run.history.decisions
    run.data = resolve_augmentation(run.model, run.data, run.probe, decided, run.verbose)
    if deadline is None and run.config.time_budget:
        deadline = time.perf_counter() + run.config.time_budget
    run.config = resolve_time_budget(run, deadline, run.verbose)


@dataclasses.dataclass
class Run:
    """What both phases of one `fit_two_phase` share.

    Attributes:
        checkpoint_dir: where to checkpoint (`Checkpoint`; None: nowhere);
            with `resume`, the checkpoint there is continued from. Every
            epoch's data and randomness follow from the seed and the epoch
            number, so a resumed run ends bitwise where an uninterrupted one does.
        signature: identifies the configuration and data; a checkpoint with
            another signature is refused.
        replicas: model replicas of the `tf.distribute` strategy this runs
            under (in its scope): each step takes `data.config.batch_size`
            images per replica, and `config.lr_scaling` applies.
        chief: whether this process writes checkpoints (under a multi-worker
            strategy only the chief does; every worker reads them to resume).
        frozen: the frozen backbone's `(train, train labels, validation,
            validation labels)` features if already computed
            (`keras_ft.training.features.frozen_features`); phase 1 uses them.
        probe: the `keras_ft.models.probe.ProbeResult` of a linear probe on those
            features: a candidate of `config.fallback_to_probe`, and what
            `flip="auto"` decides on (`keras_ft.training.symmetry.decide_flip`).
    """

    model: keras.Model
    data: object  # the ImageFolder, its augmentation decided once resolved
    config: TrainingConfig  # learning rates scaled for the replicas, "auto" once resolved
    history: TrainingHistory
    state: dict | None  # the checkpoint resumed from, until its phase takes it
    done: int  # epochs the checkpoint had trained
    steps: int  # per epoch
    batch_size: int  # global
    replicas: int
    class_weight: dict | None
    checkpoint_dir: object = None
    signature: str = ""
    chief: bool = True
    frozen: tuple | None = None
    probe: object = None
    verbose: object = "auto"


def start_run(model, data, config, checkpoint_dir, resume, signature, replicas, probe) -> Run:
    """Check the options against the data, read the checkpoint to resume from (its weights
    put back), or start phase 1's head as the probe (`head_init="probe"`)."""
    check_options(model, data, config, resume, probe)
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
    state = read_checkpoint(checkpoint_dir, signature) if resume and checkpoint_dir else None
    history = TrainingHistory(state["history"], state["decisions"]) if state else TrainingHistory()
    # Weights first: decisions are measured on them, and when every epoch was done
    # (only the save after them failed) they are the final weights.
    if state:
        restore_model(state, model)
    elif config.head_init == "probe":
        set_probe(model, probe, standardise=True)
    steps = math.ceil(used / batch_size)
    done = state["epoch"] if state else 0
    return Run(
        model, data, config, history, state, done, steps, batch_size, replicas, weights,
        checkpoint_dir, signature,
    )  # fmt: skip


def check_options(model, data, config, resume, probe) -> None:
    """Refuse options that cannot work with this data, model or probe, before anything runs."""
    if config.early_stopping and data.validation is None:
        raise KerasFTError(
            "Invalid `early_stopping`: it watches the validation loss, and "
            "validation_split is 0. Set validation_split > 0 (e.g. 0.2)."
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


class Phase:
    """One phase of the plan: which epochs it trains, and how it prepares and fits.

    A subclass sets `name` and the epochs, and `prepare` returns the model it
    trains, its training batches (None when it has no epoch left) and its
    validation data.
    """

    name = ""
    copies = 0  # phase 1: the augmented copies whose features it trains on (`head_copies`)

    def __init__(self, run: Run, start: int, epochs: int):
        self.run, self.start, self.epochs = run, start, epochs
        self.end = start + epochs
        self.first = max(start, run.done)  # a resumed run starts where it stopped

    def pending(self) -> bool:
        """Whether anything of the phase is left to do."""
        return bool(self.epochs) and self.run.done < self.end

    def prepare(self) -> keras.Model:
        """Freeze or unfreeze; return the model the phase trains."""
        raise NotImplementedError

    def datasets(self, trained) -> tuple:
        """The phase's training batches (None with no epoch left) and validation data."""
        raise NotImplementedError

    def train(self, callbacks: list, progress: Progress) -> None:
        """Prepare, compile, say what trains, and fit the phase's remaining epochs."""
        run = self.run
        trained = self.prepare()
        compile_for_phase(trained, self.name, run.config, run.data.num_classes, run.steps)
        progress.start_phase(self.name)
        self.announce(trained)
        resumed = None  # the checkpoint, when it resumes this phase
        if run.state:  # resuming: the optimizer state only carries over within its phase
            if run.state["phase"] == self.name and self.first > self.start:
                resumed = run.state
                restore_optimizer(resumed, trained)
            run.state = None
        dataset, validation = self.datasets(trained)
        if validation is not None and run.replicas > 1:
            count = len(run.data.validation_files)
            validation = evenly_batched(validation, count, run.batch_size, run.replicas)
        if isinstance(validation, tf.data.Dataset):
            validation = shard_by_data(validation)
        callbacks = [*callbacks, *self.callbacks(resumed)]
        self.before_fit(trained, validation)
        if self.first < self.end:
            trained.fit(
                shard_by_data(dataset),
                epochs=self.end,
                initial_epoch=self.first,
                steps_per_epoch=run.steps,
                validation_data=validation,
                callbacks=[*callbacks, *progress.callbacks()],
                class_weight=run.class_weight,
                shuffle=False,  # each epoch is already shuffled from the seed
                verbose=progress.keras_verbose,  # a bar on a terminal, else Progress's lines
            )
        self.after_fit(trained, validation)

    def announce(self, trained) -> None:
        """Print the line that starts the phase (`keras_ft.utils.progress.phase_line`)."""
        run = self.run
        if self.first < self.end and run.verbose != 0:
            layers = len(trainable_backbone_layers(run.model)) if self.name != "head" else 0
            cached = trained is not run.model
            done = self.first - self.start
            print(phase_line(self.name, run.config, self.epochs, done, layers, cached, self.copies))

    def callbacks(self, resumed: dict | None = None) -> list:
        """The history's recorder, early stopping (its state taken from `resumed`, the
        checkpoint of this phase resumed from) and the checkpoint, as configured."""
        run, stopping = self.run, None
        added = [run.history.recorder(self.name)]
        if run.config.early_stopping:
            stopping = EarlyStopping.resume(run.config.early_stopping, resumed)
            added.append(stopping)
        if run.checkpoint_dir and run.chief:
            added.append(
                Checkpoint(
                    run.checkpoint_dir, run.model, self.name, run.history, run.signature, stopping
                )
            )
        return added

    def before_fit(self, trained, validation) -> None:
        """A step before the fit (the fallback keeps the weights phase 2 starts from)."""

    def after_fit(self, trained, validation) -> None:
        """A step after the fit (the fallback)."""


class HeadPhase(Phase):
    """Phase 1: the head on the frozen backbone, on cached features where nothing augments
    them (`config.feature_cache`), else on the images through the frozen backbone."""

    name = "head"

    def __init__(self, run: Run):
        super().__init__(run, 0, run.config.head_epochs)

    def prepare(self) -> keras.Model:
        run, model, data, config = self.run, self.run.model, self.run.data, self.run.config
        freeze_backbone(model)
        self.extractor, head = split_at_features(model)
        self.cached = features_cached(config, data)
        self.copies = head_copies(config, data)
        self.features = None
        if run.frozen is not None:  # computed by the caller (FineTuner, for its linear probe)
            self.features = run.frozen[:2]
        elif self.cached or self.first == 0:
            if run.verbose != 0:
                print("Backbone features of the training images, computed once:")
            self.features = extract_features(self.extractor, data.unaugmented_train(), run.verbose)
        if self.first == 0 and config.head_init != "probe":  # a fresh phase 1 (a resumed
            start_feature_norm(model, self.features[0])  # one has its statistics back)
        if not (self.cached or self.copies) and config.feature_cache and run.verbose != 0:
            print(
                "Phase 1 runs the frozen backbone on every batch: augmentation is on, so "
                "its features change each epoch. (head_copies=N, --head-copies N, computes "
                "those of N augmented copies of the training images once instead, and "
                "head_augment=False, --no-head-augment, those of the unaugmented images; "
                "phase 2 still augments.)"
            )
        return head if self.cached or self.copies else model

    def datasets(self, trained) -> tuple:
        run, data = self.run, self.run.data
        batching = (run.batch_size, run.replicas)
        if not (self.cached or self.copies):
            dataset = data.train_dataset(self.first, self.end - self.first, *batching)
            return dataset, data.validation
        if self.copies:
            cached = augmented_copies(self.extractor, data, self.copies, run.verbose)
        else:
            cached = (self.features[0][None], self.features[1])
        batches = feature_batches(cached, data, self.first, self.end, *batching)
        # Arrays: Keras batches them itself, and shards them by DATA under a strategy.
        if run.frozen is not None:
            return batches, (run.frozen[2:] if data.validation else None)
        if not data.validation:
            return batches, None
        return batches, extract_features(self.extractor, data.validation, run.verbose)


class FinetunePhase(Phase):
    """Phase 2: the backbone unfrozen per `config.unfreeze`, SGD momentum; then, with a
    fallback option, the model kept of the fine-tuned one and the candidates."""

    name = "finetune"

    def __init__(self, run: Run):
        super().__init__(run, run.config.head_epochs, run.config.finetune_epochs)
        config = run.config
        self.candidates = {
            "head": config.fallback_to_head,
            "probe": config.fallback_to_probe,
            "mixes": config.fallback_to_mixes,
        }
        self.fallback = any(bool(value) for value in self.candidates.values())
        self.head = None

    def pending(self) -> bool:
        # A run killed after its last epoch's checkpoint still has the fallback to take.
        return bool(self.epochs) and (self.run.done < self.end or self.fallback)

    def prepare(self) -> keras.Model:
        config = self.run.config
        unfreeze_backbone(self.run.model, config.unfreeze, config.train_batchnorm)
        return self.run.model

    def datasets(self, trained) -> tuple:
        run, dataset = self.run, None
        if self.first < self.end:
            dataset = run.data.train_dataset(
                self.first, self.end - self.first, run.batch_size, run.replicas
            )
        return dataset, run.data.validation

    def announce(self, trained) -> None:
        super().announce(trained)
        groups = self.run.config.gradual_unfreeze
        if groups > 1 and self.first < self.end and self.run.verbose != 0:
            print(gradual_plan(unfreeze_groups(self.run.model, groups)))

    def before_fit(self, trained, validation) -> None:
        if self.fallback:
            run, resumed = self.run, self.first > self.start
            self.head = phase2_start(
                run.model, trained, validation, run.checkpoint_dir, run.chief, resumed
            )

    def after_fit(self, trained, validation) -> None:
        if not self.fallback:
            return
        run = self.run
        refit = run.frozen if run.config.refit_probe else None
        decision = fall_back(
            run.model, trained, validation, *self.head, self.candidates, run.probe, refit
        )
        run.history.decisions.fallback = decision
        if run.verbose != 0:
            print(f"fallback: {decision['reason']}")
