"""The fitting half of `FineTuner` (as Keras keeps `Model`'s training in `Trainer`):
`fit`, `lr_find`, and the steps of a fit."""

from __future__ import annotations

import sys
import time

import tensorflow as tf

from keras_ft.config import (
    CONSTRUCTOR_OPTIONS,
    FIT_OPTIONS,
    TrainingConfig,
    check,
    defaults_of,
    merge_options,
    takes_options,
)
from keras_ft.config.recipe import apply_recipe
from keras_ft.data.folder import ImageFolder
from keras_ft.models.classifier import set_probe, split_at_features
from keras_ft.runs.reproducibility import (
    check_deterministic_gradients,
    file_hashes,
    seed_everything,
)
from keras_ft.task.logs import tensorboard_dir as tensorboard_dir_for
from keras_ft.task.records import compare_with_probe, now, training_signature
from keras_ft.training.checkpoint import read_checkpoint
from keras_ft.training.decisions import Decisions
from keras_ft.training.distribute import LOST_PEER_ERRORS, all_agree, lost_worker
from keras_ft.training.features import frozen_features
from keras_ft.training.history import PHASES, EpochTensorBoard, TrainingHistory, advice
from keras_ft.training.phases import fit_two_phase
from keras_ft.training.resolve import resolve_augmentation
from keras_ft.utils.errors import KerasFTError


def fit_defaults() -> dict:
    """`{name: default}` of `fit`'s training options (`FIT_OPTIONS`)."""
    return {name: defaults_of(TrainingConfig)[name] for name in FIT_OPTIONS}


class Fitting:
    """`FineTuner`'s `fit` and `lr_find`: a base class, not used alone."""

    @takes_options((TrainingConfig, FIT_OPTIONS))
    def fit(
        self,
        data: ImageFolder,
        *,
        recipe="auto",
        callbacks=(),
        verbose="auto",
        evaluate=True,
        checkpoint_dir=None,
        resume=False,
        tensorboard_dir="auto",
        decisions=None,
        **options,
    ) -> TrainingHistory:
        """Train on `data` in two phases, then evaluate on its test split if it has one.

        The training options (`head_epochs` to `lr_scaling`) are the fields of
        `keras_ft.config.TrainingConfig`; one left out takes its value in the
        `TrainingConfig` given to `from_configs`, else the default shown.

        Args:
            data: an `ImageFolder`, or a `tf.data.Dataset` of (images, labels)
                batches such as `keras.utils.image_dataset_from_directory`
                returns, read with this tuner's seed by `ImageFolder.from_dataset`
                (which says what a dataset cannot give: no validation or test
                split, and no data fingerprint, so no `keras-ft reproduce`).
        {options}
            recipe: `"auto"` (the default) or `None`. `"auto"` gives each option
                not passed here and left at its default a value that adapts to
                the data (`keras_ft.config.recipe.AutoRecipe`: the epochs and phase
                2's learning rate and schedule follow the training split's
                size; the model kept is the one with the lowest validation loss
                of the fine-tuned model, the phase-1 head and the linear
                probe). What it changed is printed and kept in `run.json` under
                `"recipe"`. `None`: the options as given, defaults included.
            callbacks: Keras callbacks, passed to both phases.
            checkpoint_dir: checkpoint there at each phase's end and at most every
                30 s (only the chief does, under a multi-worker strategy).
            resume: continue from the checkpoint in `checkpoint_dir`; the
                result is bitwise the one an uninterrupted run gives. Every
                worker reads it: share `checkpoint_dir` between machines.
            verbose: `"auto"`: on a terminal Keras's progress bar, anywhere else
                (a file, a pipe) one plain line per epoch; either way a line as
                each phase starts and the overall progress with the time left
                (`keras_ft.utils.progress`). 1: the bar; 2: the lines; 0: nothing.
            evaluate: evaluate on `data.test` at the end, when there is one.
            tensorboard_dir: TensorBoard logs of both phases on one epoch axis.
                `"auto"`: in `checkpoint_dir/logs` (kept on resume), else in a
                temporary folder; `save` copies them into the run directory's
                `logs/`. A path: written there. `None`: no logs.
            decisions: `keras_ft.training.decisions.Decisions` already taken (those
                `reproduce` replays from a run record): they are not measured again.

        Returns:
            The `TrainingHistory` of both phases (also kept as `self.history`).
            `self.advice` then lists what the history suggests (a phase stopped
            early, is still improving, or fine-tuning ended below the head; see
            `keras_ft.training.history.advice`); it is printed unless `verbose=0` and
            recorded in `run.json`.
        """
        entered = time.perf_counter()  # a time budget counts from here
        data = self._image_folder(data)
        if self._model_kwargs["head"] == "linear":  # the probe is the model: no phase to adapt
            recipe = None
        applied = self._configure(data, recipe, options, verbose)
        started, clock = now(), time.perf_counter()
        callbacks = self._start(data, callbacks, tensorboard_dir, checkpoint_dir, resume)
        signature = training_signature(self)
        if self.model_config.head == "linear":
            return self._fit_linear(data, started, clock, evaluate, verbose)
        features, probe, probe_summary = self._training_probe(data, verbose)
        training = dict(checkpoint_dir=checkpoint_dir, resume=resume, signature=signature)
        if self.training_config.time_budget:
            training["deadline"] = entered + self.training_config.time_budget
        self._train(data, callbacks, verbose, features, probe, decisions, **training)
        self._finish(data, evaluate, verbose)
        self.record = self._record(started, clock, recipe, applied)
        if probe_summary is not None:  # warns at the caller of fit
            self.record["linear_probe"] = compare_with_probe(probe_summary, self.history, 3)
        return self.history

    def _record(self, started: str, clock: float, recipe, applied: dict) -> dict:
        """The fit's part of `run.json`: when, how long, the advice, decisions and recipe."""
        return {
            "started": started,
            "finished": now(),
            "train_seconds": round(time.perf_counter() - clock, 3),
            "command": sys.argv,
            "advice": self.advice,
            "decisions": self.history.decisions.record(),
            "recipe": {"name": recipe, "applied": applied} if recipe else None,
        }

    def _image_folder(self, data) -> ImageFolder:
        """`fit`'s data as an `ImageFolder` (a dataset is read with the tuner's seed)."""
        if isinstance(data, tf.data.Dataset):
            return ImageFolder.from_dataset(data, seed=self.seed)
        if not isinstance(data, ImageFolder):
            raise KerasFTError(
                f"`fit` expects an ImageFolder or a tf.data.Dataset of (images, labels) "
                f"batches, received {type(data).__name__}. Wrap your folder: "
                "keras_ft.ImageFolder('path/to/train')."
            )
        return data

    def _configure(self, data: ImageFolder, recipe, options: dict, verbose) -> dict:
        """Resolve the recipe into the `TrainingConfig`, build the model, keep the data.

        Returns:
            The recipe's `{option: value}` settings (what it changed).
        """
        given = tuple(options)  # named in `fit`: the recipe keeps them
        options = merge_options(options, self._fit_options, "FineTuner.fit")
        options, applied = apply_recipe(
            recipe, options, data, self._model_kwargs["dense_units"], given
        )
        if applied and verbose != 0:
            settings = ", ".join(f"{key}={value!r}" for key, value in applied.items())
            print(f"recipe={recipe!r}: {settings}")
        self.training_config = self._training_config(options)
        if self.model is None:
            self.build(data.image_size, data.num_classes)
        self.data_config, self.class_names = data.config, data.class_names
        self.data = data if data.has_files else None  # `save` records the files it names
        return applied

    def _start(self, data, callbacks, tensorboard_dir, checkpoint_dir, resume) -> list:
        """Hash the data, seed everything, and add the TensorBoard callback (the chief's).

        Returns:
            The callbacks both phases get.
        """
        self.file_hashes = {
            "train": file_hashes(data.report.files),
            "test": file_hashes(data.test_files),
        }
        seed_everything(self.seed, self.deterministic)
        if self.deterministic:
            check_deterministic_gradients(self.model, self.model_config.backbone)
        self.tensorboard_dir = None
        if self.distribution.is_chief:  # other workers write nothing the user sees
            self.tensorboard_dir = tensorboard_dir_for(
                tensorboard_dir, checkpoint_dir, resume, owner=self, stacklevel=4
            )
        if self.tensorboard_dir is not None:
            return [*callbacks, EpochTensorBoard(self.tensorboard_dir)]
        return list(callbacks)

    def _train(self, data, callbacks, verbose, features, probe, decisions, **training) -> None:
        """Both phases, in the strategy's scope (`keras_ft.training.phases.fit_two_phase`)."""
        distribution = self.distribution
        try:
            with distribution.strategy.scope():  # both phases compile in it
                self._check_same_checkpoint(
                    training["checkpoint_dir"], training["resume"], training["signature"]
                )
                self.history = fit_two_phase(
                    self.model,
                    data,
                    self.training_config,
                    callbacks,
                    verbose,
                    **training,
                    replicas=distribution.replicas,
                    chief=distribution.is_chief,
                    frozen=features,
                    probe=probe,
                    decisions=decisions,
                )
        except LOST_PEER_ERRORS as error:
            if distribution.workers == 1:
                raise
            raise lost_worker(error, distribution, training["checkpoint_dir"]) from None

    def _finish(self, data, evaluate: bool, verbose) -> None:
        """The advice (printed), and the metrics on the test split (the chief's)."""
        self.advice = advice(self.history.rows, self.training_config, self.history.decisions)
        if verbose != 0 and self.distribution.is_chief:
            for message in self.advice:
                print(f"advice: {message}")
        if evaluate and data.test is not None and self.distribution.is_chief:
            self.metrics = self.evaluate(data.test)

    @takes_options((TrainingConfig, FIT_OPTIONS))
    def lr_find(
        self,
        data: ImageFolder,
        phase="head",
        *,
        steps=200,
        start_lr=1e-7,
        end_lr=10.0,
        verbose="auto",
        **options,
    ):
        """Learning-rate range test (Smith 2015, fastai's `lr_find`) for one phase.

        Trains for up to `steps` batches while the learning rate grows
        exponentially from `start_lr` to `end_lr`, then restores the weights.
        For `phase="finetune"` the head is trained first (phase 1: `head_epochs`
        at `head_lr`), as `fit` would, and the backbone unfrozen per `unfreeze`.
        The sweep compiles as `fit` would (`momentum`, `discriminative_lr`,
        `label_smoothing` ...), with the swept rate in place of the phase's, and
        its batches are augmented as `fit`'s: `flip="auto"` and
        `quarter_turns="auto"` are decided first, as `fit` decides them.

        Args:
            data: an `ImageFolder`.
            phase: `"head"` or `"finetune"`.
            steps: at most this many batches.
            start_lr: the first step's learning rate.
            end_lr: the last step's (the sweep stops sooner once the loss diverges).
            verbose: Keras verbosity of phase 1 (`"finetune"`).
        {options}

        Returns:
            A `keras_ft.training.lr_find.LRFinderResult`: the losses, the `suggestion`
            (a tenth of the rate at the lowest smoothed loss), the `steepest`
            point, and `plot(path)`.
        """
        from keras_ft.training.lr_find import sweep

        check(phase in PHASES, "phase", f"one of {PHASES}", phase)
        options = merge_options(options, self._fit_options, "FineTuner.lr_find")
        config = self._training_config(options)  # every option checked before any training
        if phase == "finetune" and config.head_epochs:
            self.fit(
                data,
                **{  # phase 1 alone, with the other options at their defaults
                    **fit_defaults(),
                    "head_epochs": config.head_epochs,
                    "finetune_epochs": 0,
                    "head_lr": config.head_lr,
                },
                recipe=None,
                verbose=verbose,
                evaluate=False,
                tensorboard_dir=None,
            )
        elif self.model is None:
            self.build(data.image_size, data.num_classes)
        data = self._decided_augmentation(data, phase == "finetune" and config.head_epochs, verbose)
        seed_everything(self.seed, self.deterministic)
        with self.distribution.strategy.scope():
            return sweep(self.model, data, phase, config, start_lr, end_lr, steps)

    def _decided_augmentation(self, data: ImageFolder, after_fit: bool, verbose) -> ImageFolder:
        """`data` with its `"auto"` flips and turns decided as `fit` decides them (by the fit
        just run, `after_fit`), so that the range test sweeps on the batches training sees."""
        decisions = self.history.decisions if after_fit else Decisions()
        probe = None
        if any(name not in decisions.augmentation for name in data.decides):
            probe = self._linear_probe(data, verbose)[1]
        return resolve_augmentation(self.model, data, probe, decisions, verbose)

    def _fit_linear(self, data: ImageFolder, started, clock, evaluate, verbose):
        """`fit` for `head="linear"`: the probe on the frozen features becomes the Dense layer."""
        _, probe, _ = self._linear_probe(data, verbose)
        set_probe(self.model, probe)
        self.history = TrainingHistory()
        if evaluate and data.test is not None:
            self.metrics = self.evaluate(data.test)
        self.record = {
            "started": started,
            "finished": now(),
            "train_seconds": round(time.perf_counter() - clock, 3),
            "command": sys.argv,
            "linear_probe": {**probe.summary(), "is_the_model": True},
        }
        return self.history

    def _training_probe(self, data: ImageFolder, verbose):
        """`_linear_probe`'s, where training uses the probe, else `(None, None, None)`.

        The probe is scored on the validation split; `head_init="probe"` and the
        augmentation decided from the data (`flip="auto"`, `quarter_turns="auto"`)
        need it even without one.
        """
        needs_probe = self.training_config.head_init == "probe" or bool(data.decides)
        if data.validation is not None or needs_probe:
            return self._linear_probe(data, verbose)
        return None, None, None

    def _linear_probe(self, data: ImageFolder, verbose):
        """The frozen features (for phase 1's cache) and a linear probe on them.

        Every worker of a multi-worker run computes them, so that all train
        phase 1 on features computed the same way (the chief alone records the
        probe).

        Returns:
            `(features, ProbeResult, its summary with the seconds it took)`; the
            summary is None without a validation split (the probe is scored on it).
        """
        from keras_ft.models.probe import linear_probe

        clock = time.perf_counter()
        extractor, _ = split_at_features(self.model)
        features = frozen_features(extractor, data, verbose)
        probe = linear_probe(*features, num_classes=data.num_classes)
        seconds = round(time.perf_counter() - clock, 3)
        if data.validation is None:
            return features, probe, None
        return features, probe, {**probe.summary(), "seconds": seconds}

    def _training_config(self, options: dict) -> TrainingConfig:
        """The `TrainingConfig` of `fit`'s options and the constructor's training options."""
        return TrainingConfig(**options, **{n: getattr(self, n) for n in CONSTRUCTOR_OPTIONS})

    def _check_same_checkpoint(self, checkpoint_dir, resume: bool, signature: str) -> None:
        """Refuse to resume a multi-worker run unless every worker reads the same checkpoint."""
        if not resume or self.distribution.workers == 1:
            return
        state = read_checkpoint(checkpoint_dir, signature) if checkpoint_dir else None
        if not all_agree(self.distribution, state["epoch"] if state else 0):
            raise KerasFTError(
                f"Cannot resume: the workers see different checkpoints in '{checkpoint_dir}' "
                f"(worker {self.distribution.worker_index} sees epoch "
                f"{state['epoch'] if state else 'none'}). Put --output on a filesystem all "
                "workers share, or copy the chief's checkpoints folder to every worker."
            )
