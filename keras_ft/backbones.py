"""Registry of `keras.applications` backbones: builder, preprocessing, sizes.

Each `BackboneSpec` carries what must travel with a backbone: how its
ImageNet weights expect pixels to be scaled (`preprocessing`, applied inside
the model), its usual and smallest input size, and the layer a classic
partial fine-tune starts from.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from keras_ft.errors import KerasFTError

if TYPE_CHECKING:  # Keras (and TensorFlow) are imported only to build a backbone
    import keras

# How each family's `preprocess_input` maps 0-255 RGB pixels (see model.Preprocess).
#   caffe: RGB->BGR, minus the ImageNet mean, no scaling (VGG, ResNet v1)
#   tf:    scale to [-1, 1]
#   torch: scale to [0, 1], minus mean, divided by std per channel
#   none:  the model rescales inside itself (EfficientNet, MobileNetV3, ConvNeXt)
PREPROCESSING = ("caffe", "tf", "torch", "none")


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it and what it expects."""

    name: str
    builder: str
    preprocessing: str
    default_size: int = 224
    min_size: int = 32
    finetune_from: str | None = None
    builder_kwargs: tuple[tuple[str, object], ...] = ()

    def build(self, image_size: tuple[int, int], weights: str | None) -> keras.Model:
        """Build the headless backbone for `image_size` with `weights`.

        Args:
                   image_size: `(height, width)`, each at least `min_size`.
                   weights: `"imagenet"`, `None` (random init), or a path to a weights
                       file saved from this backbone built with `include_top=False`.
        """
        too_small = [v for v in image_size if v < self.min_size]
        if too_small:
            raise KerasFTError(
                f"image_size={tuple(image_size)} is below the minimum of {self.min_size} px "
                f"for backbone '{self.name}'. Use image_size >= {self.min_size} "
                f"(its usual size is {self.default_size})."
            )
        import keras

        path = None
        if weights not in ("imagenet", None):
            path = Path(weights)
            if not path.is_file():
                raise KerasFTError(
                    f"Weights file '{weights}' does not exist. Pass weights='imagenet', "
                    "weights=None, or the path of an existing weights file."
                )
            weights = None
        try:
            model = getattr(keras.applications, self.builder)(
                include_top=False,
                weights=weights,
                input_shape=(*image_size, 3),
                **dict(self.builder_kwargs),
            )
        except Exception as error:  # Keras turns a failed download into a bare Exception
            if weights != "imagenet" or "URL fetch failure" not in str(error):
                raise
            raise KerasFTError(download_failure(self.name, error)) from None
        if path is not None:
            load_backbone_weights(model, path, self.name)
        return model


def download_failure(name: str, error: Exception) -> str:
    """The message for ImageNet weights that could not be downloaded (no network, say)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    reason = str(error).split(" -- ")[-1]
    return (
        f"Cannot download the ImageNet weights of backbone '{name}' ({reason}); Keras keeps "
        f"them in '{os.path.join(home, 'models')}' once downloaded. Without network access, "
        "pass a local weights file (--weights PATH, saved from the same backbone built with "
        "include_top=False), or --weights none to start from random weights."
    )


def load_backbone_weights(model: keras.Model, path: Path, name: str) -> None:
    """Load `path` into `model`, refusing a file that does not match it exactly.

    Keras only warns when a file lacks some of the model's layers; here any
    such warning is an error, so a backbone never trains half-initialised.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(path))
            problem = next(
                (
                    str(w.message)
                    for w in caught
                    if "load" in str(w.message).lower() or "skipping" in str(w.message).lower()
                ),
                None,
            )
        except Exception as error:  # Keras raises ValueError, KeyError or OSError here.
            problem = str(error)
    if problem:
        raise KerasFTError(
            f"Weights file '{path}' does not fit backbone '{name}' built with "
            f"include_top=False ({problem.splitlines()[0].split('. ')[0].rstrip(':.')}). "
            "Pass a file saved by "
            "`backbone.save_weights('x.weights.h5')` from the same backbone, or "
            "weights='imagenet' / weights=None."
        )


_NO_PREPROCESSING = (("include_preprocessing", True),)
_SPECS = [
    BackboneSpec("vgg16", "VGG16", "caffe", finetune_from="block5_conv1"),
    BackboneSpec("vgg19", "VGG19", "caffe", finetune_from="block5_conv1"),
    BackboneSpec("resnet50", "ResNet50", "caffe", finetune_from="conv5_block1_1_conv"),
    BackboneSpec("resnet50v2", "ResNet50V2", "tf", finetune_from="conv5_block1_preact_bn"),
    BackboneSpec("mobilenetv2", "MobileNetV2", "tf", finetune_from="block_13_expand"),
    BackboneSpec(
        "mobilenetv3small",
        "MobileNetV3Small",
        "none",
        finetune_from="expanded_conv_9_expand",
        builder_kwargs=_NO_PREPROCESSING,
    ),
    BackboneSpec(
        "mobilenetv3large",
        "MobileNetV3Large",
        "none",
        finetune_from="expanded_conv_12_expand",
        builder_kwargs=_NO_PREPROCESSING,
    ),
    BackboneSpec("efficientnetb0", "EfficientNetB0", "none", finetune_from="block6a_expand_conv"),
    BackboneSpec(
        "efficientnetv2b0",
        "EfficientNetV2B0",
        "none",
        finetune_from="block6a_expand_conv",
        builder_kwargs=_NO_PREPROCESSING,
    ),
    BackboneSpec("densenet121", "DenseNet121", "torch", finetune_from="conv5_block1_0_bn"),
    BackboneSpec(
        "inceptionv3", "InceptionV3", "tf", default_size=299, min_size=75, finetune_from="mixed9"
    ),
    BackboneSpec(
        "xception",
        "Xception",
        "tf",
        default_size=299,
        min_size=71,
        finetune_from="block13_sepconv1_act",
    ),
    BackboneSpec(
        "convnexttiny",
        "ConvNeXtTiny",
        "none",
        finetune_from="convnext_tiny_stage_3_block_0_depthwise_conv",
        builder_kwargs=_NO_PREPROCESSING,
    ),
]
BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def get_backbone(name: str) -> BackboneSpec:
    """Return the spec of backbone `name` (case and '_' / '-' insensitive)."""
    key = str(name).lower().replace("_", "").replace("-", "")
    if key not in BACKBONES:
        raise KerasFTError(
            f"Unknown backbone {name!r}. Known backbones: {', '.join(BACKBONES)}. "
            "Run `keras-ft backbones` to list them with their input sizes."
        )
    return BACKBONES[key]


def describe_backbones() -> str:
    """A table of the registry, for `keras-ft backbones`."""
    header = ("name", "keras.applications", "preprocessing", "size", "min", "--unfreeze suggestion")
    rows = [header] + [
        (
            s.name,
            s.builder,
            s.preprocessing,
            str(s.default_size),
            str(s.min_size),
            s.finetune_from or "all",
        )
        for s in BACKBONES.values()
    ]
    return "\n".join(f"{a:<18}{b:<20}{c:<15}{d:>5}{e:>5}  {f}" for a, b, c, d, e, f in rows)
