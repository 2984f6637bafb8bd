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
import tensorflow as tf

from keras_ft.backbones import PREPROCESSING, get_backbone
from keras_ft.config import ModelConfig, TrainingConfig, check, image_size_pair, to_dict
from keras_ft.data import ImageFolder, folder_dataset
from keras_ft.distribute import LOST_PEER_ERRORS, all_agree, get_distribution, lost_worker
from keras_ft.errors import KerasFTError
from keras_ft.evaluation import evaluate_model, trained_with_flips
from keras_ft.model import build_classifier, split_at_features, unknown_layer_message
from keras_ft.recipe import apply_recipe
from keras_ft.report import EpochTensorBoard
from keras_ft.reproducibility import check_deterministic_gradients, file_hashes, seed_everything
from keras_ft.training import (
    PHASES,
    TrainingHistory,
    advice,
    fit_two_phase,
    frozen_features,
    read_checkpoint,
)

FOLDERS = ("directory", "test_dir")  # where the data is, not what it is


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class FineTuner:
    """An ImageNet backbone with a new head, fine-tuned in two phases.

    The constructor is the configuration; `fit` does the work. The Keras model
    is built at the first `fit`, when the data's image size and classes are known.

    Args:
        backbone: a registry name (`keras-ft backbones` lists them) or a headless
            `keras.Model` of your own mapping `(H, W, 3)` images to features.
        num_classes: number of classes; `None` takes it from the data.
        weights: `"imagenet"`, `None` (random init, for tests), or the path of a
            weights file saved from the same backbone with `include_top=False`.
        image_size: input size; `None` takes the data's.
        pooling: `"avg"`, `"max"`, `"avgmax"` (both, concatenated) or
            `"flatten"` (the classic VGG recipe).
        dense_units: sizes of optional hidden Dense layers in the head.
        dropout: dropout rate before the classifier layer.
        normalize_features: batch-normalise the pooled features, so that one
            learning rate suits backbones whose features have any scale.
        preprocessing: only for a custom backbone: `"caffe"`, `"tf"`, `"torch"`
            or `"none"`.
        seed: seeds every initializer, the dropout and the training.
        deterministic: turn on TensorFlow op determinism (bitwise replay).
        mixed_precision: `None`, `"float16"` (NVIDIA GPUs) or `"bfloat16"`
            (TPUs, recent CPUs): compute in half precision, keep variables and
            the output probabilities in float32.
        head: `"dense"` (the trained head: normalisation, optional hidden
            layers, dropout, softmax) or `"linear"`: keep the linear probe
            as the model. `fit` then trains nothing by gradient: it fits a
            logistic regression on the frozen features (see
            `keras_ft.transfer.linear_probe`) and folds it, standardisation
            included, into one Dense softmax layer; the epoch and learning
            rate options are ignored. Often the best choice with tens of
            images per class.
        strategy: how to spread training over devices, with `tf.distribute`:
            `"auto"` (all local GPUs when there are several, else one device),
            `"none"`, `"mirrored"` (all local GPUs), `"multiworker"` (the
            cluster in `TF_CONFIG`; create the FineTuner before any other
            TensorFlow work) or `"tpu"`. See `keras_ft.distribute`. The data's
            `batch_size` is then per replica.

    Example:

    >>> data = ImageFolder("flowers/train", test_dir="flowers/test", image_size=224)
    >>> tuner = FineTuner("vgg16", weights="imagenet", seed=42)
    >>> history = tuner.fit(data, head_epochs=10, finetune_epochs=10, unfreeze="block5_conv1")
    >>> tuner.evaluate(data)["accuracy"]
    """

    def __init__(
        self,
        backbone="vgg16",
        num_classes=None,
        weights="imagenet",
        image_size=None,
        pooling="avg",
        dense_units=(),
        dropout=0.2,
        normalize_features=True,
        preprocessing=None,
        seed=42,
        deterministic=True,
        mixed_precision=None,
        strategy="auto",
        head="dense",
    ):
        self.distribution = get_distribution(strategy)
        self.strategy = strategy
        if isinstance(backbone, keras.Model):
            check(
                preprocessing in PREPROCESSING,
                "preprocessing",
                f"one of {PREPROCESSING} for a custom backbone",
                preprocessing,
                "Say how your backbone expects 0-255 RGB pixels to be scaled.",
            )
            self._backbone_model, self.preprocessing, name = backbone, preprocessing, backbone.name
        else:
            spec = get_backbone(backbone)
            self._backbone_model, name = None, spec.name
            self.preprocessing = preprocessing or spec.preprocessing
        if weights is not None and weights != "imagenet":
            weights = os.fspath(weights)
        self._model_kwargs = dict(
            backbone=name,
            weights=weights,
            pooling=pooling,
            dense_units=tuple(dense_units),
            dropout=dropout,
            normalize_features=normalize_features,
            mixed_precision=mixed_precision,
            seed=seed,
            head=head,
        )
        self._image_size = None if image_size is None else image_size_pair(image_size)
        self._num_classes = num_classes
        self.deterministic = deterministic
        self.seed = seed
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
        self._data = None
        self._built_backbone = None  # (image_size, backbone), made once by build_backbone
        self.tensorboard_dir: str | None = None

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
            spec = get_backbone(self._model_kwargs["backbone"])
            with self._building():
                backbone = spec.build(image_size, self._model_kwargs["weights"])
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
        if isinstance(unfreeze, str) and unfreeze != "all" and not unfreeze.isdigit():
            names = [layer.name for layer in self.build_backbone(image_size).layers]
            if unfreeze not in names:
                raise KerasFTError(
                    unknown_layer_message(unfreeze, self._model_kwargs["backbone"], names)
                )

    def fit(
        self,
        data: ImageFolder,
        head_epochs=10,
        finetune_epochs=10,
        head_lr=1e-3,
        finetune_lr=1e-4,
        momentum=0.9,
        unfreeze="all",
        feature_cache=True,
        jit_compile=False,
        class_weight=None,
        label_smoothing=0.0,
        finetune_schedule="constant",
        warmup_epochs=0,
        early_stopping=None,
        discriminative_lr=1.0,
        head_augment=True,
        fallback_to_head=False,
        lr_scaling="none",
        recipe=None,
        callbacks=(),
        verbose="auto",
        evaluate=True,
        checkpoint_dir=None,
        resume=False,
        tensorboard_dir="auto",
    ) -> TrainingHistory:
        """Train on `data` in two phases, then evaluate on its test split if it has one.

        Args:
            data: an `ImageFolder`.
            head_epochs: phase 1 epochs (frozen backbone, Adam at `head_lr`).
            finetune_epochs: phase 2 epochs (SGD at `finetune_lr` with `momentum`).
            head_lr: phase 1 learning rate, or `"auto"`: a learning-rate range
                test (`lr_find`) before phase 1 picks it.
            finetune_lr: phase 2 learning rate, or `"auto"`: a range test after
                phase 1 picks it. Found rates are printed and kept in
                `run.json` under `"decisions"`; `reproduce` replays them.
            momentum: phase 2 SGD momentum.
            unfreeze: `"all"`, a backbone layer name to unfreeze from (e.g.
                `"block5_conv1"`), or the number of top backbone layers.
            feature_cache: without augmentation, compute the frozen backbone's
                features once and train phase 1's head on them (much faster,
                same result up to float rounding).
            jit_compile: compile training steps with XLA (faster on GPUs); needs
                `deterministic=False`.
            class_weight: `None`, `"balanced"` (scikit-learn's rule: rarer classes
                weigh more), or `{class name: weight}` (unnamed classes weigh 1).
            label_smoothing: e.g. 0.1: targets of 0.9 and 0.1 / (classes - 1)
                rather than 1 and 0.
            finetune_schedule: phase 2 learning rate: `"constant"`, or `"cosine"`
                decay to 0 over the phase.
            warmup_epochs: with `"cosine"`, epochs of linear warm-up from 0 to
                `finetune_lr` first.
            early_stopping: patience in epochs: stop a phase when the validation
                loss has not improved for that long, and keep the best weights.
            discriminative_lr: phase 2's rate for the lowest unfrozen backbone
                layer is `finetune_lr / discriminative_lr`, rising geometrically
                layer by layer to `finetune_lr` at the top and in the head
                (`keras_ft.training.layer_multipliers`). 1: one rate for all.
            head_augment: False trains phase 1 on the features of the
                unaugmented training images, computed once (`feature_cache`),
                even when the data augments; phase 2 still sees augmented images.
            fallback_to_head: after phase 2, restore the phase-1 head's weights
                if fine-tuning did not lower the validation loss (needs a
                validation split; recorded in `run.json` under `decisions`).
            lr_scaling: under a strategy with N replicas the global batch is N
                times the data's `batch_size`: `"none"` keeps `head_lr` and
                `finetune_lr`, `"linear"` multiplies both by N.
            recipe: `None`, or `"auto"`: settings that adapt to the data for
                every option left at its default (`keras_ft.recipe.AutoRecipe`:
                phase 2 runs until the validation loss stalls, within a budget
                of epochs, keeping the best weights; `flip="auto"`; small
                translations; discriminative learning rates). What it changed
                is printed and kept in `run.json` under `"recipe"`.
            callbacks: Keras callbacks, passed to both phases.
            checkpoint_dir: save a checkpoint there after every epoch (only the
                chief does, under a multi-worker strategy).
            resume: continue from the checkpoint in `checkpoint_dir`; the
                result is bitwise the one an uninterrupted run gives. Every
                worker reads it: share `checkpoint_dir` between machines.
            verbose: Keras verbosity.
            evaluate: evaluate on `data.test` at the end, when there is one.
            tensorboard_dir: TensorBoard logs of both phases on one epoch axis.
                `"auto"`: in `checkpoint_dir/logs` (kept on resume), else in a
                temporary folder; `save` copies them into the run directory's
                `logs/`. A path: written there. `None`: no logs.

        Returns:
            The `TrainingHistory` of both phases (also kept as `self.history`).
            `self.advice` then lists what the history suggests (a phase stopped
            early, is still improving, or fine-tuning ended below the head; see
            `keras_ft.training.advice`); it is printed unless `verbose=0` and
            recorded in `run.json`.
        """
        if not isinstance(data, ImageFolder):
            raise KerasFTError(
                f"`fit` expects an ImageFolder, received {type(data).__name__}. "
                "Wrap your folder: keras_ft.ImageFolder('path/to/train')."
            )
        options = dict(
            head_epochs=head_epochs,
            finetune_epochs=finetune_epochs,
            head_lr=head_lr,
            finetune_lr=finetune_lr,
            momentum=momentum,
            unfreeze=unfreeze,
            feature_cache=feature_cache,
            jit_compile=jit_compile,
            class_weight=class_weight,
            label_smoothing=label_smoothing,
            finetune_schedule=finetune_schedule,
            warmup_epochs=warmup_epochs,
            early_stopping=early_stopping,
            discriminative_lr=discriminative_lr,
            head_augment=head_augment,
            fallback_to_head=fallback_to_head,
            lr_scaling=lr_scaling,
        )
        options, data, applied = apply_recipe(recipe, options, data)
        if applied and resume and options["early_stopping"]:
            raise KerasFTError(
                f"recipe={recipe!r} stops phases early (early_stopping="
                f"{options['early_stopping']}), which `resume` cannot replay exactly. "
                "Start again without resume, or train without the recipe."
            )
        if applied and verbose != 0:
            settings = ", ".join(f"{key}={value!r}" for key, value in applied.items())
            print(f"recipe={recipe!r}: {settings}")
        self.training_config = TrainingConfig(
            **options, deterministic=self.deterministic, strategy=self.strategy
        )
        if self.model is None:
            self.build(data.image_size, data.num_classes)
        self._data, self.data_config, self.class_names = data, data.config, data.class_names
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
        features, probe = self._linear_probe(data, verbose)
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
            "decisions": self.history.decisions,
            "recipe": {"name": recipe, "applied": applied} if recipe else None,
        }
        if probe is not None:
            self.record["linear_probe"] = compare_with_probe(probe, self.history)
        return self.history

    def lr_find(
        self,
        data: ImageFolder,
        phase="head",
        head_epochs=10,
        head_lr=1e-3,
        momentum=0.9,
        unfreeze="all",
        discriminative_lr=1.0,
        steps=200,
        start_lr=1e-7,
        end_lr=10.0,
        verbose="auto",
    ):
        """Learning-rate range test (Smith 2015, fastai's `lr_find`) for one phase.

        Trains for up to `steps` batches while the learning rate grows
        exponentially from `start_lr` to `end_lr`, then restores the weights.
        For `phase="finetune"` the head is trained first (phase 1: `head_epochs`
        at `head_lr`), as `fit` would, and the backbone unfrozen per `unfreeze`.

        Returns:
            A `keras_ft.lr_find.LRFinderResult`: the losses, the `suggestion`
            (a tenth of the rate at the lowest smoothed loss), the `steepest`
            point, and `plot(path)`.
        """
        from keras_ft.lr_find import sweep

        check(phase in PHASES, "phase", f"one of {PHASES}", phase)
        if phase == "finetune" and head_epochs:
            self.fit(
                data,
                head_epochs=head_epochs,
                finetune_epochs=0,
                head_lr=head_lr,
                verbose=verbose,
                evaluate=False,
                tensorboard_dir=None,
            )
        elif self.model is None:
            self.build(data.image_size, data.num_classes)
        config = TrainingConfig(
            momentum=momentum,
            unfreeze=unfreeze,
            discriminative_lr=discriminative_lr,
            deterministic=self.deterministic,
        )
        seed_everything(self.seed, self.deterministic)
        with self.distribution.strategy.scope():
            return sweep(self.model, data, phase, config, start_lr, end_lr, steps)

    def _fit_linear(self, data: ImageFolder, started, clock, evaluate, verbose):
        """`fit` for `head="linear"`: the probe on the frozen features becomes the Dense layer."""
        from keras_ft.transfer import linear_probe

        extractor, _ = split_at_features(self.model)
        features = frozen_features(extractor, data, verbose)
        probe = linear_probe(*features, num_classes=data.num_classes)
        kernel, bias = probe.folded()
        self.model.get_layer("predictions").set_weights(
            [kernel.astype("float32"), bias.astype("float32")]
        )
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
            `(features, probe summary)`, or `(None, None)` without a validation
            split (the probe is scored on it).
        """
        if data.validation is None:
            return None, None
        from keras_ft.transfer import linear_probe

        clock = time.perf_counter()
        extractor, _ = split_at_features(self.model)
        features = frozen_features(extractor, data, verbose)
        probe = linear_probe(*features, num_classes=data.num_classes).summary()
        probe["seconds"] = round(time.perf_counter() - clock, 3)
        return features, probe

    def check_fit_options(self, **options) -> TrainingConfig:
        """Check `fit`'s training options without training: the command line does it first.

        Args:
            **options: keyword arguments of `fit`; those that are not training
                settings (`callbacks`, `verbose`, `checkpoint_dir`, ...) are ignored.

        Returns:
            The `TrainingConfig` they make.
        """
        own = {"deterministic": self.deterministic, "strategy": self.strategy}
        names = {f.name for f in dataclasses.fields(TrainingConfig)} - set(own)
        return TrainingConfig(**{k: v for k, v in options.items() if k in names}, **own)

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
                image, two slightly shifted copies and, if training flipped
                images, its mirror image (3 or 4 times the cost; see
                `keras_ft.evaluation.predict_views`).
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
        flip = trained_with_flips(trained, self.history.decisions)
        return evaluate_model(self.model, data, self.class_names, top_k, tta, flip)

    def save(self, path, overwrite: bool = False, signing_key=None) -> str | None:
        """Write the run directory (see `keras_ft.artifacts.save_run`), signed if a key is set.

        Under a multi-worker strategy only the chief writes; on the other
        workers this writes nothing and returns `None`.
        """
        from keras_ft.artifacts import save_run

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


def _check_in_scope(backbone: keras.Model, distribution) -> None:
    """Refuse a custom backbone whose weights were made outside the strategy's scope."""
    extended = distribution.strategy.extended
    if not all(extended.variable_created_in_scope(v.value) for v in backbone.weights):
        raise KerasFTError(
            f"Your backbone '{backbone.name}' was created outside the "
            f"strategy={distribution.requested!r} scope, so its weights live on one device. "
            "Create it inside keras_ft.distribute.get_distribution("
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
    below = finetuned is not None and finetuned < probe["validation_accuracy"]
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
