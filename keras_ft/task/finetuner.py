"""`FineTuner`: the whole recipe behind one object, scikit-learn style."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import keras
import tensorflow as tf

from keras_ft.config import (
    CONSTRUCTOR_OPTIONS,
    FIT_OPTIONS,
    ModelConfig,
    RunConfig,
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
from keras_ft.data.folder import ImageFolder, folder_dataset
from keras_ft.models.backbones import PREPROCESSING, get_backbone
from keras_ft.models.classifier import (
    build_classifier,
    unknown_layer_message,
)
from keras_ft.runs.evaluation import evaluate_model
from keras_ft.runs.reproducibility import (
    seed_everything,
    weights_sha256,
)
from keras_ft.task.fitting import Fitting, fit_defaults
from keras_ft.training.distribute import (
    check_in_scope,
    get_distribution,
)
from keras_ft.training.history import TrainingHistory
from keras_ft.utils.errors import KerasFTError

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


class FineTuner(Fitting):
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
        self._fit_options = fit_defaults()  # from_configs sets them
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
                check_in_scope(backbone, distribution)
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
    def run_config(self) -> RunConfig | None:
        """The configuration `fit` trained with, its recipe included (None before `fit`)."""
        if self.data_config is None or self.training_config is None:
            return None
        recipe = self.record.get("recipe")
        return RunConfig(self.data_config, self.model_config, self.training_config, recipe)

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
