"""Registry of backbones: builder, preprocessing, sizes.

Each `BackboneSpec` carries what must travel with a backbone: how its
ImageNet weights expect pixels to be scaled (`preprocessing`, applied inside
the model), its usual and smallest input size, and the layer a classic
partial fine-tune starts from. The registry holds the built-in backbones
(`keras_ft.models.presets`, registered when `keras_ft.models` is imported);
`register_backbone` adds one of your own (as a call or a decorator, as timm's
`register_model` does), which `FineTuner`, `tune` and `reproduce` then use
by name like the built-in ones, and `list_backbones` lists them. An installed
package can declare its backbones under the entry-point group
`keras_ft.backbones`, so that the `keras-ft` command (a process of its own)
knows them too.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from keras_ft.config import check, is_int
from keras_ft.models.weights import load_backbone_weights
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.text import did_you_mean

if TYPE_CHECKING:  # Keras (and TensorFlow) are imported only to build a backbone
    import keras

# How each family's `preprocess_input` maps 0-255 RGB pixels (see classifier.Preprocess).
#   caffe: RGB->BGR, minus the ImageNet mean, no scaling (VGG, ResNet v1)
#   tf:    scale to [-1, 1]
#   torch: scale to [0, 1], minus mean, divided by std per channel
#   none:  the model rescales inside itself (EfficientNet, MobileNetV3, ConvNeXt)
PREPROCESSING = ("caffe", "tf", "torch", "none")


def _key(name: str) -> str:
    """How names are looked up: case and '_' / '-' insensitive."""
    return name.lower().replace("_", "").replace("-", "")


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it and what it expects.

    Args:
        name: the registry name: lower case, without `_` or `-` (names are
            looked up that way: `"ResNet50_V2"` finds `"resnet50v2"`).
        builder: the name of a `keras.applications` constructor (`"VGG16"`),
            or a callable taking the same arguments: `include_top=False`,
            `weights` (`"imagenet"` or `None`), `input_shape=(H, W, 3)` and
            `builder_kwargs`, and returning a headless `keras.Model`.
        preprocessing: how the weights expect 0-255 RGB pixels to be scaled:
            `"caffe"`, `"tf"`, `"torch"` or `"none"` (see `PREPROCESSING`).
        default_size: the usual input size in px.
        min_size: the smallest input size in px the backbone builds at.
        finetune_from: the layer a partial fine-tune starts from (`unfreeze`'s
            suggestion); `None`: the whole backbone.
        builder_kwargs: further `(name, value)` arguments of the builder.
    """

    name: str
    builder: str | Callable[..., keras.Model]
    preprocessing: str
    default_size: int = 224
    min_size: int = 32
    finetune_from: str | None = None
    builder_kwargs: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        key = _key(self.name) if isinstance(self.name, str) else None
        check(
            key == self.name and key != "",
            "name",
            "a lower-case name without '_' or '-' (names are looked up that way)",
            self.name,
            f"Use {key!r}." if key else "",
        )
        check(
            callable(self.builder) or (isinstance(self.builder, str) and self.builder != ""),
            "builder",
            "a keras.applications constructor name (e.g. 'VGG16') or a callable taking "
            "include_top, weights and input_shape",
            self.builder,
        )
        check(
            self.preprocessing in PREPROCESSING,
            "preprocessing",
            f"one of {PREPROCESSING}",
            self.preprocessing,
            "Say how the backbone's weights expect 0-255 RGB pixels to be scaled.",
        )
        check(
            is_int(self.min_size) and self.min_size >= 1, "min_size", "an int >= 1", self.min_size
        )
        check(
            is_int(self.default_size) and self.default_size >= self.min_size,
            "default_size",
            f"an int >= min_size ({self.min_size})",
            self.default_size,
        )
        check(
            self.finetune_from is None
            or (isinstance(self.finetune_from, str) and self.finetune_from != ""),
            "finetune_from",
            "a layer name or None (the whole backbone)",
            self.finetune_from,
        )

    def describe(self) -> dict:
        """A JSON-ready description, for `run.json` (a callable builder by its import path)."""
        builder = self.builder
        if callable(builder):
            builder = f"{builder.__module__}.{getattr(builder, '__qualname__', builder)}"
        return {
            "name": self.name,
            "builder": builder,
            "preprocessing": self.preprocessing,
            "default_size": self.default_size,
            "min_size": self.min_size,
            "finetune_from": self.finetune_from,
        }

    def check_build(self, image_size: tuple[int, int], weights: str | None) -> None:
        """Refuse what `build` would refuse before building: an image size below
        `min_size`, a weights file that does not exist. Needs no TensorFlow."""
        too_small = [v for v in image_size if v < self.min_size]
        if too_small:
            raise KerasFTError(
                f"image_size={tuple(image_size)} is below the minimum of {self.min_size} px "
                f"for backbone '{self.name}'. Use image_size >= {self.min_size} "
                f"(its usual size is {self.default_size})."
            )
        if weights not in ("imagenet", None) and not Path(weights).is_file():
            raise KerasFTError(
                f"Weights file '{weights}' does not exist. Pass weights='imagenet', "
                "weights=None, or the path of an existing weights file."
            )

    def build(self, image_size: tuple[int, int], weights: str | None) -> keras.Model:
        """Build the headless backbone for `image_size` with `weights`.

        Args:
                   image_size: `(height, width)`, each at least `min_size`.
                   weights: `"imagenet"`, `None` (random init), or a path to a weights
                       file saved from this backbone built with `include_top=False`.
        """
        self.check_build(image_size, weights)
        import keras

        path = None
        if weights not in ("imagenet", None):
            path = Path(weights)
            weights = None
        builder = self.builder
        if not callable(builder):
            builder = getattr(keras.applications, builder)
        try:
            with warnings.catch_warnings():  # MobileNets' note that the size is not 224: chosen
                warnings.filterwarnings("ignore", "`input_shape` is undefined or non-square")
                model = builder(
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


_REGISTRY: dict[str, BackboneSpec] = {}  # the built-in ones: keras_ft.models.presets


class _Registry(Mapping):
    """The registry, read-only (`register_backbone` is the one way in), plugins included.

    Every read loads the installed plugins first, and iteration walks a snapshot:
    a loop over `BACKBONES` that builds each backbone sees the plugins from its
    first step, and is not broken by a registration made inside the loop.
    """

    def __getitem__(self, name: str) -> BackboneSpec:
        load_plugins()
        return _REGISTRY[name]

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(list(_REGISTRY))

    def __len__(self) -> int:
        load_plugins()
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"BACKBONES({list(self)})"


BACKBONES: Mapping[str, BackboneSpec] = _Registry()


def register_backbone(
    spec: BackboneSpec | str | None = None,
    overwrite: bool = False,
    *,
    preprocessing: str | None = None,
    default_size: int | None = None,
    min_size: int | None = None,
    finetune_from: str | None = None,
    builder_kwargs: Mapping | tuple | None = None,
):
    """Add a backbone to the registry, so that it is used by name like the built-in ones.

    `FineTuner(name)`, `tune(..., backbone=name)`, `keras-ft backbones`,
    `list_backbones` and `reproduce` then take it, with its preprocessing,
    minimum size and unfreeze suggestion. A run records the name: to
    `reproduce` it in another process, register the backbone there too
    (import the module that calls `register_backbone`) first.

    Called with a `BackboneSpec`, it registers that spec. Called with a name (or
    none) and the spec's fields, it returns a decorator that registers the function
    it decorates as the builder, as timm's `register_model` does; the name defaults
    to the function's, as names are looked up (`small_cnn`: `"smallcnn"`).

    Args:
        spec: a `BackboneSpec`, usually with a callable `builder`; or, to
            decorate a builder, its registry name or `None`.
        overwrite: replace a backbone already registered under the same name.
        preprocessing: (decorator) how the builder's weights expect 0-255 RGB
            pixels to be scaled: `"caffe"`, `"tf"`, `"torch"` or `"none"`.
        default_size: (decorator) the usual input size in px (default 224).
        min_size: (decorator) the smallest input size in px (default 32).
        finetune_from: (decorator) the layer a partial fine-tune starts from.
        builder_kwargs: (decorator) further arguments of the builder, as a dict.

    Returns:
        `spec`; or, to decorate a builder, a decorator returning it unchanged.

    Example:

    >>> @keras_ft.register_backbone(preprocessing="tf", default_size=64)
    ... def small_cnn(include_top=False, weights=None, input_shape=(64, 64, 3)):
    ...     inputs = keras.Input(input_shape)
    ...     x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv")(inputs)
    ...     return keras.Model(inputs, x, name="smallcnn")
    >>> keras_ft.FineTuner("smallcnn", weights=None).fit(data)

    or, the same registration as a call:

    >>> keras_ft.register_backbone(keras_ft.BackboneSpec("smallcnn", small_cnn, "tf", 64))
    """
    fields = {
        "preprocessing": preprocessing,
        "default_size": default_size,
        "min_size": min_size,
        "finetune_from": finetune_from,
        "builder_kwargs": None if builder_kwargs is None else tuple(dict(builder_kwargs).items()),
    }
    fields = {field: value for field, value in fields.items() if value is not None}
    if spec is None or isinstance(spec, str):
        return _registering_decorator(spec, overwrite, fields)
    return _register_spec(spec, overwrite, fields)


def _register_spec(spec: BackboneSpec, overwrite: bool, fields: dict) -> BackboneSpec:
    """`register_backbone(spec)`: refuses what is not a spec, extra fields and a taken name."""
    if not isinstance(spec, BackboneSpec):
        raise KerasFTError(
            f"`register_backbone` expects a keras_ft.BackboneSpec, received "
            f"{type(spec).__name__}. Pass BackboneSpec(name, builder, preprocessing, ...), "
            "or decorate a builder with @register_backbone(preprocessing=...)."
        )
    if fields:
        raise KerasFTError(
            f"`register_backbone(spec)` takes the backbone's fields from the spec, received "
            f"{', '.join(fields)} as well: set them in the BackboneSpec (they are arguments "
            "of the decorator form only, @register_backbone(name, preprocessing=...))."
        )
    if spec.name in _REGISTRY and not overwrite:
        raise KerasFTError(
            f"A backbone named '{spec.name}' is already registered. Choose another name, "
            "or pass overwrite=True to replace it."
        )
    _REGISTRY[spec.name] = spec
    return spec


def _registering_decorator(name: str | None, overwrite: bool, fields: dict) -> Callable:
    """The decorator of `@register_backbone(name, **fields)`: registers the builder it decorates."""

    def register(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        key = name if name is not None else _key(getattr(builder, "__name__", ""))
        spec = BackboneSpec(key, builder, **{"preprocessing": None, **fields})  # None: refused
        register_backbone(spec, overwrite)
        return builder

    return register


def list_backbones(pattern: str | None = None) -> list[str]:
    """The names of the registered backbones (installed plugins included).

    Args:
        pattern: keep only the names matching this shell-style pattern
            (`fnmatch`), e.g. `"resnet*"` or `"mobilenetv[23]*"`. It is matched
            as names are looked up, case and `_` / `-` insensitive:
            `"EfficientNet_Lite*"` finds `"efficientnetlite0"`.

    Returns:
        The names, in the order `keras-ft backbones` lists them.
    """
    check(
        pattern is None or isinstance(pattern, str),
        "pattern",
        "a shell-style pattern such as 'resnet*', or None",
        pattern,
    )
    names = list(BACKBONES)
    if pattern is None:
        return names
    key = _pattern_key(pattern)
    return [name for name in names if fnmatch.fnmatchcase(name, key)]


def _pattern_key(pattern: str) -> str:
    """`pattern` as names are looked up: lower case, '_' and '-' dropped outside `[...]`."""
    parts = re.split(r"(\[[^\]]*\])", pattern)
    return "".join(part.lower() if part.startswith("[") else _key(part) for part in parts)


PLUGIN_GROUP = "keras_ft.backbones"
_plugins = {"loaded": False}


def load_plugins() -> None:
    """Register the backbones that installed packages declare, once per process.

    A package declares one in its `pyproject.toml`, under the entry-point
    group `keras_ft.backbones`: `mynet = "mypackage.backbones:MYNET_SPEC"`,
    the value being a `BackboneSpec` (or a module that calls
    `register_backbone` when imported). A plugin that fails to import is
    skipped with a warning naming it.
    """
    if _plugins["loaded"]:
        return
    _plugins["loaded"] = True
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            value = entry.load()
        except Exception as error:  # a broken plugin must not break every command
            warnings.warn(
                f"Skipped the backbone plugin '{entry.name}' ({entry.value}): importing it "
                f"failed with {type(error).__name__}: {error}. Fix or uninstall the package "
                "that declares it.",
                stacklevel=2,
            )
            continue
        if isinstance(value, BackboneSpec) and value.name not in _REGISTRY:
            _REGISTRY[value.name] = value


def is_registered(name: str) -> bool:
    """Whether backbone `name` is registered (installed plugins included)."""
    return _key(str(name)) in BACKBONES


def get_backbone(name: str) -> BackboneSpec:
    """Return the spec of backbone `name` (case and '_' / '-' insensitive)."""
    key = _key(str(name))
    if not is_registered(key):
        raise KerasFTError(
            f"Unknown backbone {name!r}.{did_you_mean(key, BACKBONES)} "
            f"Known backbones: {', '.join(BACKBONES)}. "
            "Run `keras-ft backbones` to list them with their input sizes; register one of "
            "your own with keras_ft.register_backbone."
        )
    return BACKBONES[key]


def not_registered(name: str, recorded: dict | None) -> str:
    """The message for a run whose registered backbone `name` is not registered now.

    Args:
        name: the backbone's name, as the run recorded it.
        recorded: the run's `BackboneSpec.describe()`, if it has one.
    """
    builder = (recorded or {}).get("builder")
    module = builder.rsplit(".", 1)[0] if builder and "." in builder else None
    where = f" (its builder is {builder})" if builder else ""
    first = f"import {module}, or the module that" if module else "import the module that"
    return (
        f"Backbone '{name}' is not registered in this process{where}. It was registered "
        f"with keras_ft.register_backbone when the run was trained: {first} registers it, "
        "before this call (for the keras-ft command: declare it in your package's "
        f"'{PLUGIN_GROUP}' entry points)."
    )


def describe_backbones() -> str:
    """A table of the registry (installed plugins included), for `keras-ft backbones`."""
    header = ("name", "builder", "preprocessing", "size", "min", "--unfreeze suggestion")
    rows = [header] + [
        (
            s.name,
            s.builder if isinstance(s.builder, str) else s.describe()["builder"],
            s.preprocessing,
            str(s.default_size),
            str(s.min_size),
            s.finetune_from or "all",
        )
        for s in BACKBONES.values()
    ]
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(3)]
    return "\n".join(
        f"{a:<{widths[0]}}{b:<{widths[1]}}{c:<{widths[2]}}{d:>5}{e:>5}  {f}"
        for a, b, c, d, e, f in rows
    )
