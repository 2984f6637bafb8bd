"""`FineTuner`: the whole recipe behind one object, scikit-learn style."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
import weakref
from datetime import datetime, timezone

import keras
import numpy as np
import tensorflow as tf

from keras_ft.config import (
    CONSTRUCTOR_OPTIONS,
    FIT_OPTIONS,
    ModelConfig,
    TrainingConfig,
    check,
    checked,
    defaults_of,
    document,
    image_size_pair,
    is_count,
    merge_options,
    options_of,
    takes_options,
    to_dict,
)
from keras_ft.config.recipe import apply_recipe
from keras_ft.data.folder import ImageFolder, folder_dataset
from keras_ft.models.backbones import PREPROCESSING, get_backbone
from keras_ft.models.classifier import (
    build_classifier,
    set_probe,
    split_at_features,
    unknown_layer_message,
)
from keras_ft.runs.evaluation import evaluate_model
from keras_ft.runs.reproducibility import (
    check_deterministic_gradients,
    file_hashes,
    seed_everything,
    weights_sha256,
)
from keras_ft.training.checkpoint import read_checkpoint
from keras_ft.training.distribute import LOST_PEER_ERRORS, all_agree, get_distribution, lost_worker
from keras_ft.training.features import frozen_features
from keras_ft.training.history import PHASES, EpochTensorBoard, TrainingHistory, advice
from keras_ft.training.phases import fit_two_phase
from keras_ft.utils.errors import KerasFTError

FOLDERS = ("directory", "test_dir")  # where the data is, not what it is
# ModelConfig fields the constructor takes as keywords (backbone and num_classes come first).
MODEL_OPTIONS = tuple(n for n in defaults_of(ModelConfig) if n != "backbone")
# The constructor's keyword options: the model's, and the training options that act on the
# build (the strategy's scope, the seeding), so they cannot wait for `fit`.
CONSTRUCTOR_GROUPS = ((ModelConfig, MODEL_OPTIONS), (TrainingConfig, CONSTRUCTOR_OPTIONS))
FROM_DATA = {"image_size": None}  # the constructor's default: the data's


def _defaults(*groups) -> dict:
    """`{name: default}` of the groups' fields, with the constructor's `FROM_DATA`."""
    values = {n: defaults_of(config)[n] for config, names in groups for n in names}
    return {**values, **{k: v for k, v in FROM_DATA.items() if k in values}}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class FineTuner:
    """An ImageNet backbone with a new head, fine-tuned in two phases.

    The constructor is the configuration; `fit` does the work. The Keras model
    is built at the first `fit`, when the data's image size and classes are known.

    Args:
        backbone: a registry name (`keras-ft backbones` lists them; add your own
            with `keras_ft.register_backbone`) or a headless `keras.Model` of
            your own mapping `(H, W, 3)` images to features (`reproduce` and
            `tune` need a registered one).
        num_classes: number of classes; `None` takes it from the data.
        {options}
        preprocessing: only for a custom backbone: `"caffe"`, `"tf"`, `"torch"`
            or `"none"`.

    `FineTuner.from_configs(model_config, training_config)` builds one from
    the configs a run records (`run.json`'s `"model"` and `"training"`).

    Example:

    >>> data = ImageFolder("flowers/train", test_dir="flowers/test", image_size=224)
    >>> tuner = FineTuner("vgg16", weights="imagenet", seed=42)
    >>> history = tuner.fit(data, head_epochs=10, finetune_epochs=10, unfreeze="block5_conv1")
    >>> tuner.evaluate(data)["accuracy"]
    """

    @takes_options(*CONSTRUCTOR_GROUPS, defaults=FROM_DATA)
    def __init__(self, backbone="vgg16", num_classes=None, *, preprocessing=None, **options):
        options = merge_options(options, _defaults(*CONSTRUCTOR_GROUPS), "FineTuner")
        declared = options_of(ModelConfig)
        for name in MODEL_OPTIONS:  # checked now: the backbone is built (and seeded) before fit
            if name != "image_size":  # None until the data gives it; checked below
                options[name] = checked(name, declared[name], options[name])
        for name in CONSTRUCTOR_OPTIONS:  # TrainingConfig's, kept for every fit
            setattr(self, name, options.pop(name))
        self.distribution = get_distribution(self.strategy)
        if isinstance(backbone, keras.Model):
            check(
                preprocessing in PREPROCESSING,
                "preprocessing",
                f"one of {PREPROCESSING} for a custom backbone",
                preprocessing,
                "Say how your backbone expects 0-255 RGB pixels to be scaled.",
            )
            self._backbone_model, self.preprocessing, name = backbone, preprocessing, backbone.name
            self.backbone_spec = None
        else:
            self.backbone_spec = get_backbone(backbone)  # kept: a later registration cannot swap it
            self._backbone_model, name = None, self.backbone_spec.name
            self.preprocessing = preprocessing or self.backbone_spec.preprocessing
        if options["weights"] is not None and options["weights"] != "imagenet":
            options["weights"] = os.fspath(options["weights"])
        image_size = options.pop("image_size")
        self._model_kwargs = dict(backbone=name, **options)  # ModelConfig's, less the data's
        self._fit_options = _defaults((TrainingConfig, FIT_OPTIONS))  # from_configs sets them
        self._image_size = None if image_size is None else image_size_pair(image_size)
        self._num_classes = num_classes
        self.seed = options["seed"]
        self.model: keras.Model | None = None
        self.model_config: ModelConfig | None = None
        self.training_config: TrainingConfig | None = None
        self.data_config = None
        self.class_names: tuple[str, ...] | None = None
        self.history = TrainingHistory()
        self.metrics: dict | None = None
        self.record: dict = {}
        self.advice: list[str] = []
        self.file_hashes: dict | None = None
        self.data: ImageFolder | None = None  # what `fit` trained on, where it names files
        self._built_backbone = None  # (image_size, backbone), made once by build_backbone
        self.tensorboard_dir: str | None = None
        self.backbone_weights_sha256: str | None = None  # set by build

    def build_backbone(self, image_size) -> keras.Model:
        """Build the backbone alone, with its weights (done by `build`).

        The command line calls it before reading any data, so that a weights
        file that does not fit, an ImageNet download that fails or an image
        size below the backbone's minimum is reported at once.
        """
        image_size = image_size_pair(image_size)
        if self._backbone_model is not None:
            return self._backbone_model
        if self._built_backbone is None or self._built_backbone[0] != image_size:
            seed_everything(self.seed, self.deterministic)
            with self._building():
                backbone = self.backbone_spec.build(image_size, self._model_kwargs["weights"])
            self._built_backbone = (image_size, backbone)
        return self._built_backbone[1]

    @contextlib.contextmanager
    def _building(self):
        """The mixed-precision policy and strategy scope that layers are created under."""
        previous = keras.mixed_precision.global_policy()
        if self._model_kwargs["mixed_precision"]:  # layers take the policy when created
            keras.mixed_precision.set_global_policy(
                f"mixed_{self._model_kwargs['mixed_precision']}"
            )
        try:
            with self.distribution.strategy.scope():  # variables are created per replica
                yield
        finally:
            keras.mixed_precision.set_global_policy(previous)

    def build(self, image_size, num_classes: int) -> keras.Model:
        """Build the Keras model (done by `fit`; call it yourself to inspect the model)."""
        image_size = image_size_pair(image_size)
        if self._image_size is not None and self._image_size != image_size:
            raise KerasFTError(
                f"The data's image_size {image_size} differs from the FineTuner's "
                f"image_size {self._image_size}. Pass the same size to both, or leave "
                "the FineTuner's image_size out."
            )
        if self._num_classes is not None and self._num_classes != num_classes:
            raise KerasFTError(
                f"The data has {num_classes} classes but num_classes={self._num_classes} "
                "was given. Leave num_classes out to take it from the data."
            )
        self.model_config = ModelConfig(
            num_classes=num_classes, image_size=image_size, **self._model_kwargs
        )
        backbone = self.build_backbone(image_size)
        # What the backbone started from, for run.json (ImageNet, a converted or local file).
        self.backbone_weights_sha256 = weights_sha256(backbone)
        distribution = self.distribution
        if self._backbone_model is not None:
            seed_everything(self.seed, self.deterministic)
            if distribution.replicas > 1:
                _check_in_scope(backbone, distribution)
        with self._building():
            self.model = build_classifier(
                backbone,
                self.model_config,
                self.preprocessing,
                synchronized=distribution.replicas > 1,
            )
        return self.model

    def check_unfreeze(self, image_size, unfreeze) -> None:
        """Refuse an `unfreeze` layer name the backbone does not have, before any training."""
        if isinstance(unfreeze, str) and unfreeze != "all" and not is_count(unfreeze):
            names = [layer.name for layer in self.build_backbone(image_size).layers]
            if unfreeze not in names:
                raise KerasFTError(
                    unknown_layer_message(unfreeze, self._model_kwargs["backbone"], names)
                )

    @classmethod
    def from_configs(cls, model, training=None, preprocessing=None) -> FineTuner:
        """A `FineTuner` built from a `ModelConfig` whose `fit` trains per a `TrainingConfig`.

        `run.json` records these two configs; `keras-ft train`, `tune`'s trials
        and `reproduce` all build their `FineTuner` this way.

        Args:
            model: a `ModelConfig`, or a dict of some of its fields (the others
                take the constructor's defaults; `num_classes` and
                `image_size` left out or `None` are taken from the data).
            training: a `TrainingConfig` (or a dict of its fields, checked at
                once): `deterministic` and `strategy` go to the constructor, the
                other fields become `fit`'s defaults. `None`: the defaults.
            preprocessing: as for the constructor (only for a custom backbone).
        """
        if dataclasses.is_dataclass(model):
            model = to_dict(model)
        if not isinstance(training, TrainingConfig):
            training = TrainingConfig(**(training or {}))
        values = to_dict(training)
        tuner = cls(
            **model,
            **{name: values[name] for name in CONSTRUCTOR_OPTIONS},
            preprocessing=preprocessing,
        )
        tuner._fit_options = {name: values[name] for name in FIT_OPTIONS}
        return tuner

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
            checkpoint_dir: save a checkpoint there after every epoch (only the
                chief does, under a multi-worker strategy).
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

        Returns:
            The `TrainingHistory` of both phases (also kept as `self.history`).
            `self.advice` then lists what the history suggests (a phase stopped
            early, is still improving, or fine-tuning ended below the head; see
            `keras_ft.training.history.advice`); it is printed unless `verbose=0` and
            recorded in `run.json`.
        """
        if isinstance(data, tf.data.Dataset):
            data = ImageFolder.from_dataset(data, seed=self.seed)
        if not isinstance(data, ImageFolder):
            raise KerasFTError(
                f"`fit` expects an ImageFolder or a tf.data.Dataset of (images, labels) "
                f"batches, received {type(data).__name__}. Wrap your folder: "
                "keras_ft.ImageFolder('path/to/train')."
            )
        given = tuple(options)  # named here: the recipe keeps them
        options = merge_options(options, self._fit_options, "FineTuner.fit")
        if self._model_kwargs["head"] == "linear":  # the probe is the model: no phase to adapt
            recipe = None
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
        started, clock = _now(), time.perf_counter()
        self.file_hashes = {
            "train": file_hashes(data.report.files),
            "test": file_hashes(data.test_files),
        }
        seed_everything(self.seed, self.deterministic)
        if self.deterministic:
            check_deterministic_gradients(self.model, self.model_config.backbone)
        distribution = self.distribution
        self.tensorboard_dir = None
        if distribution.is_chief:  # other workers write nothing the user sees
            self.tensorboard_dir = self._log_dir(tensorboard_dir, checkpoint_dir, resume)
        if self.tensorboard_dir is not None:
            callbacks = [*callbacks, EpochTensorBoard(self.tensorboard_dir)]
        signature = self._signature()
        if self.model_config.head == "linear":
            return self._fit_linear(data, started, clock, evaluate, verbose)
        # The probe is scored on the validation split; head_init="probe" and the augmentation
        # decided from the data (flip="auto", quarter_turns="auto") need it even without.
        needs_probe = self.training_config.head_init == "probe" or bool(data.decides)
        if data.validation is not None or needs_probe:
            features, probe, probe_summary = self._linear_probe(data, verbose)
        else:
            features = probe = probe_summary = None
        try:
            with distribution.strategy.scope():  # both phases compile in it
                self._check_same_checkpoint(checkpoint_dir, resume, signature)
                self.history = fit_two_phase(
                    self.model,
                    data,
                    self.training_config,
                    callbacks,
                    verbose,
                    checkpoint_dir=checkpoint_dir,
                    resume=resume,
                    signature=signature,
                    replicas=distribution.replicas,
                    chief=distribution.is_chief,
                    frozen=features,
                    probe=probe,
                )
        except LOST_PEER_ERRORS as error:
            if distribution.workers == 1:
                raise
            raise lost_worker(error, distribution, checkpoint_dir) from None
        self.advice = advice(self.history.rows, self.training_config, self.history.decisions)
        if verbose != 0 and distribution.is_chief:
            for message in self.advice:
                print(f"advice: {message}")
        if evaluate and data.test is not None and distribution.is_chief:
            self.metrics = self.evaluate(data.test)
        self.record = {
            "started": started,
            "finished": _now(),
            "train_seconds": round(time.perf_counter() - clock, 3),
            "command": sys.argv,
            "advice": self.advice,
            "decisions": self.history.decisions.record(),
            "recipe": {"name": recipe, "applied": applied} if recipe else None,
        }
        if probe_summary is not None:
            self.record["linear_probe"] = compare_with_probe(probe_summary, self.history)
        return self.history

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
        `label_smoothing` ...), with the swept rate in place of the phase's.

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
                    **_defaults((TrainingConfig, FIT_OPTIONS)),
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
        seed_everything(self.seed, self.deterministic)
        with self.distribution.strategy.scope():
            return sweep(self.model, data, phase, config, start_lr, end_lr, steps)

    def _fit_linear(self, data: ImageFolder, started, clock, evaluate, verbose):
        """`fit` for `head="linear"`: the probe on the frozen features becomes the Dense layer."""
        _, probe, _ = self._linear_probe(data, verbose)
        set_probe(self.model, probe)
        self.history = TrainingHistory()
        if evaluate and data.test is not None:
            self.metrics = self.evaluate(data.test)
        self.record = {
            "started": started,
            "finished": _now(),
            "train_seconds": round(time.perf_counter() - clock, 3),
            "command": sys.argv,
            "linear_probe": {**probe.summary(), "is_the_model": True},
        }
        return self.history

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

    def _log_dir(self, tensorboard_dir, checkpoint_dir, resume: bool) -> str | None:
        """Where this fit's TensorBoard logs go (see `fit`'s `tensorboard_dir`)."""
        if tensorboard_dir is None:
            return None
        if importlib.util.find_spec("tensorboard") is None:  # tf.summary needs it to write
            warnings.warn(
                "No TensorBoard logs: the tensorboard package is not installed. "
                "pip install tensorboard (or pass tensorboard_dir=None to silence this).",
                stacklevel=3,
            )
            return None
        if tensorboard_dir != "auto":
            return os.fspath(tensorboard_dir)
        if checkpoint_dir is None:
            scratch = tempfile.mkdtemp(prefix="keras_ft_logs_")
            weakref.finalize(self, shutil.rmtree, scratch, ignore_errors=True)
            return scratch
        logs = os.path.join(checkpoint_dir, "logs")
        if not resume:  # a fresh run starts a fresh timeline
            shutil.rmtree(logs, ignore_errors=True)
        return logs

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

    def _signature(self) -> str:
        """A digest of everything that decides the training: configuration and data.

        The data enters by content (the files' hashes), not by where the folders
        are or how their paths were typed.
        """
        data = {k: v for k, v in to_dict(self.data_config).items() if k not in FOLDERS}
        described = {
            "replicas": self.distribution.replicas,
            "data": data,
            "model": to_dict(self.model_config),
            "training": to_dict(self.training_config),
            "files": self.file_hashes,
            "preprocessing": self.preprocessing,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def evaluate(self, data, top_k: int = 5, tta: bool = False) -> dict:
        """Loss, accuracy, top-k accuracy, per-class report and confusion matrix.

        Args:
            data: an `ImageFolder` (its test split), a folder path with the same
                class sub-folders, or a dataset of (images, labels) batches.
            top_k: the k of top-k accuracy.
            tta: test-time augmentation: average the predictions for each
                image, two slightly shifted copies and, if training flipped or
                turned images, its mirror image or its three quarter turns (3 to
                7 times the cost; see `keras_ft.runs.evaluation.predict_views`).
        """
        self._require_model()
        if isinstance(data, ImageFolder):
            if data.test is None:
                raise KerasFTError(
                    "This ImageFolder has no test_dir. Pass "
                    "ImageFolder(..., test_dir='path/to/test') or a folder path."
                )
            data = data.test
        elif isinstance(data, (str, os.PathLike)):
            data, _ = folder_dataset(
                data,
                self.class_names,
                self.model_config.image_size,
                self.data_config.batch_size if self.data_config else 32,
            )
        trained = to_dict(self.data_config) if self.data_config else {}
        symmetries = self.history.decisions.symmetries(trained)
        metrics = evaluate_model(self.model, data, self.class_names, top_k, tta, symmetries)
        return {**metrics, "kept_model": self.kept_model}

    @property
    def kept_model(self) -> str:
        """Which model `fit` ended with: `"fine-tuned"`, `"phase-1 head"` (phase 2 did not
        lower the validation loss), `"linear probe"` (the probe's was lower still, or
        `head="linear"`) or `"weight-space mix"`."""
        if self.model_config is not None and self.model_config.head == "linear":
            return "linear probe"
        kept = (self.history.decisions.fallback or {}).get("kept")
        names = {"head": "phase-1 head", "probe": "linear probe", "mix": "weight-space mix"}
        return names.get(kept, "fine-tuned")

    def save(self, path, overwrite: bool = False, signing_key=None) -> str | None:
        """Write the run directory (see `keras_ft.runs.artifacts.save_run`), signed if a key is set.

        Under a multi-worker strategy only the chief writes; on the other
        workers this writes nothing and returns `None`.
        """
        from keras_ft.runs.artifacts import save_run

        self._require_model()
        if not self.distribution.is_chief:
            return None
        try:
            return save_run(self, path, overwrite=overwrite, signing_key=signing_key)
        except (OSError, tf.errors.OpError) as error:  # nothing half-written stays behind
            reason = getattr(error, "strerror", None) or getattr(error, "message", str(error))
            raise KerasFTError(
                f"Cannot write the run directory '{path}': {reason}. Nothing was written; free "
                "some space or choose another --output, then run again."
            ) from None

    def _require_model(self) -> None:
        if self.model is None or self.class_names is None:
            raise KerasFTError("This FineTuner has not been trained yet. Call `fit(data)` first.")


FineTuner.__doc__ = document(FineTuner.__doc__, *CONSTRUCTOR_GROUPS)


def _check_in_scope(backbone: keras.Model, distribution) -> None:
    """Refuse a custom backbone whose weights were made outside the strategy's scope."""
    extended = distribution.strategy.extended
    if not all(extended.variable_created_in_scope(v.value) for v in backbone.weights):
        raise KerasFTError(
            f"Your backbone '{backbone.name}' was created outside the "
            f"strategy={distribution.requested!r} scope, so its weights live on one device. "
            "Create it inside keras_ft.training.distribute.get_distribution("
            f"{distribution.requested!r}).strategy.scope()."
        )


def compare_with_probe(probe: dict, history: TrainingHistory) -> dict:
    """`probe` with the fine-tuned validation accuracy added; warn when fine-tuning is below it.

    Args:
        probe: `ProbeResult.summary()` of a linear probe on the frozen features.
        history: the finished training's history (its last `val_accuracy`).

    Returns:
        The record's `"linear_probe"` entry: the probe's numbers, plus
        `finetuned_validation_accuracy` and `below_probe`.
    """
    accuracies = history.history.get("val_accuracy") or [None]
    finetuned = accuracies[-1]
    # Keras reports accuracy in float32 and the probe's is float64: compared unrounded, the
    # same number of right validation images would read as fine-tuning being below.
    below = finetuned is not None and bool(
        np.float32(finetuned) < np.float32(probe["validation_accuracy"])
    )
    if (history.decisions.fallback or {}).get("kept") == "probe":  # fallback_to_probe
        return {**probe, "finetuned_validation_accuracy": finetuned, "is_the_model": True}
    if below:
        warnings.warn(
            f"Fine-tuning reached a validation accuracy of {finetuned:.4f}, below the "
            f"{probe['validation_accuracy']:.4f} of a logistic regression on the frozen "
            "backbone's features: the training hurt what the backbone already knew "
            "(negative transfer). Try unfreezing fewer layers (--unfreeze with a later "
            "layer, or --finetune-epochs 0), a lower --finetune-lr, or keep the linear "
            "probe itself as the model (`keras-ft probe`, or FineTuner(..., head='linear')).",
            stacklevel=3,
        )
    return {**probe, "finetuned_validation_accuracy": finetuned, "below_probe": below}
