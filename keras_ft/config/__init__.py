"""Flat, typed, frozen configuration for each stage, validated once, stored as JSON.

Every option is declared once, here, as a dataclass field with an `Option`
in its metadata: its help text, its check and its command-line flag, as
scikit-learn declares parameter constraints in one table. Validation
(`__post_init__`), the `keras-ft` flags (`keras_ft.cli.main`), and the documented
keyword arguments of `FineTuner` and `FineTuner.fit` are all made from it, so
adding an option means adding a field (and the code that uses it).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from keras_ft.utils.errors import KerasFTError

POOLINGS = ("avg", "max", "avgmax", "flatten")
HEADS = ("dense", "linear")
PREPROCESSING_LAYERS = ("keras", "keras_ft")
MIXED_PRECISION = (None, "float16", "bfloat16")
SCHEDULES = ("constant", "cosine")
HEAD_INITS = ("random", "probe")
STRATEGIES = ("auto", "none", "mirrored", "multiworker", "tpu")
LR_SCALINGS = ("none", "linear")


def check(condition: bool, argument: str, expected: str, received: object, fix: str = "") -> None:
    """Raise a `KerasFTError` naming `argument` unless `condition` holds."""
    if not condition:
        message = f"Invalid `{argument}`: expected {expected}, received {received!r}."
        raise KerasFTError(f"{message} {fix}".strip())


def is_number(value) -> bool:
    """True for an int or float (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value) -> bool:
    """True for an int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(text) -> bool:
    """True for a str of ASCII digits ("12"); `str.isdigit` also takes "²", which `int` refuses."""
    return isinstance(text, str) and text.isascii() and text.isdigit()


# The largest image side keras_ft trains on: 4096 px is 0.2 GB of float32 pixels per image,
# and a backbone's first feature maps take tens of times that.
MAX_IMAGE_SIDE = 4096


def image_size_pair(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return `image_size` as a `(height, width)` tuple of ints in [1, `MAX_IMAGE_SIDE`]."""
    if is_int(image_size):
        image_size = (image_size, image_size)
    check(
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(is_int(v) and v > 0 for v in image_size),
        "image_size",
        "a positive int or a (height, width) pair of positive ints",
        image_size,
    )
    height, width = int(image_size[0]), int(image_size[1])
    check(
        max(height, width) <= MAX_IMAGE_SIDE,
        "image_size",
        f"sides of at most {MAX_IMAGE_SIDE} px",
        (height, width),
        f"Each image of a batch would take {height * width * 3 * 4 / 1e9:.1f} GB as float32 "
        "pixels, before any layer. Pass a smaller size, e.g. 224 (most backbones' default).",
    )
    return (height, width)


# ------------------------------------------------------------------ constraints


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (`None`: unbounded), like scikit-learn's `Interval`.

    Calling it checks a value; `str()` says what it allows, for error messages.

    Args:
        low: the lower bound, or `None`.
        high: the upper bound, or `None`.
        integer: only ints (never bools) are allowed; otherwise ints and floats.
        closed: which bounds are allowed values: `"both"`, `"left"`, `"right"`
            or `"neither"`.
    """

    low: float | None = None
    high: float | None = None
    integer: bool = False
    closed: str = "both"

    def __call__(self, value) -> bool:
        if not (is_int(value) if self.integer else is_number(value)):
            return False
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        above = self.low is None or (value >= self.low if left else value > self.low)
        below = self.high is None or (value <= self.high if right else value < self.high)
        return above and below

    def __str__(self) -> str:
        kind = "an int" if self.integer else "a float"
        if self.low is None and self.high is None:
            return kind
        if self.high is None:
            return f"{kind} {'>=' if self.closed in ('both', 'left') else '>'} {_bound(self.low)}"
        if self.low is None:
            return f"{kind} {'<=' if self.closed in ('both', 'right') else '<'} {_bound(self.high)}"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{kind} in {left}{_bound(self.low)}, {_bound(self.high)}{right}"

    def parse(self, text: str):
        """The command line's text as a number of the right type."""
        return int(text) if self.integer else float(text)


def _bound(value) -> str:
    """A `Range` bound in words: an int in full (2**32 - 1 is not 4.29497e+09)."""
    return str(value) if is_int(value) else f"{value:g}"


# NumPy, TensorFlow and Keras take seeds of 32 bits, unsigned.
SEED = Range(0, 2**32 - 1, integer=True)


def _is_bool(value) -> bool:
    return isinstance(value, bool)


# ------------------------------------------------- command-line forms of values


def parse_unfreeze(value: str):
    """`--unfreeze`: a number of top layers, or `all` / a layer name."""
    return int(value) if is_count(value) else value


def parse_rate(value: str):
    """A learning rate, or `auto` (a learning-rate range test picks it)."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number such as 1e-4 or 'auto', received {value!r}"
        ) from None


def parse_list(cast: Callable[[str], object], example: str) -> Callable[[str], tuple]:
    """A flag parser for comma-separated values, e.g. `parse_list(int, "ints such as 256,128")`."""

    def parse(value: str) -> tuple:
        try:
            return tuple(cast(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {example}, received {value!r}"
            ) from None

    return parse


def parse_class_weight(value: str):
    """`--class-weight balanced` or `cat=2,dog=1`."""
    if value == "balanced":
        return value
    try:
        pairs = [item.rsplit("=", 1) for item in value.split(",") if item.strip()]
        return {name.strip(): float(weight) for name, weight in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'balanced' or CLASS=WEIGHT pairs such as cat=2,dog=1, received {value!r}"
        ) from None


def parse_weights(value: str) -> str | None:
    """`--weights none` means `weights=None` (random initial weights)."""
    return None if value.lower() == "none" else value


# ---------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """Everything about one config field, declared once (see `option`).

    Attributes:
        help: what the option does, in Python terms (docstrings, `--help`).
        valid: the check: true for an allowed value.
        expected: what `valid` allows, in words, for the error message.
        fix: a hint appended to the error message.
        choices: the allowed values, when they are a fixed set.
        convert: normalises a value before the check (e.g. a list to a tuple).
        flag: the command-line flag; `""` for none (the command sets it).
        parse: turns the flag's text into a value.
        metavar: the flag's placeholder in `--help`.
        cli_help: the flag's help, where the command-line form differs.
        cli_default: the flag's default: `"field"` (the field's), or another
            value (`None`: decided later, e.g. from the backbone).
        switches: `(flag, value, help)` triples, mutually exclusive flags
            that each set the option to one value (`--no-flip`, `--auto-flip`).
        constructor: a `TrainingConfig` option that `FineTuner` takes rather
            than `fit`, because it acts before training (on the build).
    """

    help: str
    valid: Callable[[object], bool] | None = None
    expected: str = ""
    fix: str = ""
    choices: tuple | None = None
    convert: Callable | None = None
    flag: str | None = None
    parse: Callable[[str], object] | None = None
    metavar: str | None = None
    cli_help: str | None = None
    cli_default: object = "field"
    switches: tuple = ()
    constructor: bool = False


def option(default=dataclasses.MISSING, **declared):
    """A dataclass field whose metadata is an `Option` (see there for the arguments).

    `valid` may be a `Range` (then `expected` defaults to its words and the
    flag parses a number), `choices` a tuple (the check and the flag's choices
    follow from it), and a bool default makes the check "True or False" and
    the flag a switch (`--name`, or `--no-name` when the default is True).
    """
    if "choices" in declared:
        choices = declared["choices"]
        declared.setdefault("valid", lambda value: value in choices)
        declared.setdefault("expected", f"one of {choices}")
    if isinstance(default, bool):
        declared.setdefault("valid", _is_bool)
        declared.setdefault("expected", "True or False")
    valid = declared.get("valid")
    if isinstance(valid, Range):
        declared.setdefault("expected", str(valid))
        declared.setdefault("parse", valid.parse)
    return dataclasses.field(default=default, metadata={"option": Option(**declared)})


def options_of(config) -> dict[str, Option]:
    """`{field name: Option}` of a config class or instance, in field order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(config)}


def defaults_of(config) -> dict[str, object]:
    """`{field name: default}` of a config class (fields without a default left out)."""
    return {
        f.name: f.default
        for f in dataclasses.fields(config)
        if f.default is not dataclasses.MISSING
    }


def checked(name: str, declared: Option, value):
    """`value` of the field `name`, converted and checked against its `Option`."""
    if declared.convert is not None:
        value = declared.convert(value)
    if declared.valid is not None:
        check(declared.valid(value), name, declared.expected, value, declared.fix)
    return value


def validate(config) -> None:
    """Check every field of `config` against its `Option`, converting values first."""
    for name, declared in options_of(config).items():
        object.__setattr__(config, name, checked(name, declared, getattr(config, name)))


def describe(groups, indent: int = 8) -> str:
    """Keras-style `Args:` lines for `(config, field names)` groups, for a docstring."""
    first, rest = " " * indent, " " * (indent + 4)
    return "\n".join(
        textwrap.fill(
            f"{name}: {options_of(config)[name].help}",
            88,
            initial_indent=first,
            subsequent_indent=rest,
        )
        for config, names in groups
        for name in names
    )


def document(doc: str, *groups) -> str:
    """`doc` with its `{options}` line replaced by the `Args:` entries of the groups' fields."""
    lines, indent = [], 8
    for line in doc.splitlines():
        if line.strip() == "Args:":  # the entries go one level deeper
            indent = len(line) - len(line.lstrip()) + 4
        if line.strip() == "{options}":
            line = describe(groups, indent)
        lines.append(line)
    return "\n".join(lines)


def merge_options(given: dict, defaults: dict, where: str) -> dict:
    """`defaults` updated with `given`; a name not in `defaults` is a `TypeError`, as in Python."""
    for name in given:
        if name not in defaults:
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}")
    return {**defaults, **given}


def takes_options(*groups, defaults=None):
    """Decorator: a method's `**options` become documented keyword arguments.

    The method keeps one implementation taking `**options` (it checks them
    with `merge_options`); its signature (for `help()`, `inspect` and IDEs)
    lists the fields of each `(config, names)` group as keyword-only arguments
    with their defaults, and a `{options}` line in its docstring becomes their
    `Args:` lines, from the fields' help. No wrapper: warnings and tracebacks
    point at the caller as before.

    Args:
        *groups: `(config dataclass, field names)` pairs.
        defaults: `{name: default}` where the method's default differs from
            the field's (e.g. `None`: taken from the data).
    """
    defaults = defaults or {}
    fields = {(config, f.name): f for config, _ in groups for f in dataclasses.fields(config)}

    def decorate(method):
        signature = inspect.signature(method)
        own = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults.get(name, fields[config, name].default),
            )
            for config, names in groups
            for name in names
        ]
        positional = [p for p in own if p.kind != p.KEYWORD_ONLY]
        keyword = [p for p in own if p.kind == p.KEYWORD_ONLY]
        full = signature.replace(parameters=[*positional, *added, *keyword])

        method.__doc__ = document(method.__doc__ or "", *groups)
        method.__signature__ = full
        return method

    return decorate


# ---------------------------------------------------------------------- configs


@dataclass(frozen=True)
class DataConfig:
    """How images are read, split, augmented and batched."""

    directory: str = option(help="training folder, one sub-folder per class.", flag="")
    test_dir: str | None = option(
        None,
        help="optional held-out folder with the same class sub-folders.",
        metavar="DIR",
    )
    image_size: tuple[int, int] = option(
        (224, 224),
        help="`(height, width)` or one int, the size images are resized to.",
        convert=image_size_pair,
        parse=int,
        cli_default=None,
        cli_help="input size in px (default: the backbone's)",
    )
    batch_size: int = option(
        32,
        help="images per batch and replica: under a `tf.distribute` strategy with N "
        "replicas each training step takes N times as many.",
        valid=Range(1, integer=True),
    )
    validation_split: float = option(
        0.2,
        help="fraction of `directory` held out for validation, chosen per file from a "
        "hash of (seed, relative path).",
        valid=Range(0.0, 1.0, closed="left"),
        fix="Use 0 to train on every image, e.g. 0.2 to hold out a fifth.",
    )
    seed: int = option(
        42,
        help="seeds the split, the shuffling and the augmentation.",
        valid=SEED,
        cli_help="seeds the split, the augmentation, the initializers and the training",
    )
    augment: bool = option(
        True,
        help="whether training images are augmented.",
        cli_help="train without augmentation",
    )
    flip: bool | str = option(
        "auto",
        help='random horizontal flips: `"auto"` (the default) decides from the data: before '
        "phase 1, `FineTuner.fit` flips in both phases only if the linear probe on the frozen "
        "features keeps most of its accuracy on mirrored training images (see "
        "`keras_ft.training.phases.decide_flip`), so digits and text are not mirrored; `True` "
        "(photos) or `False` (no flips).",
        valid=lambda value: value in (True, False, "auto"),
        expected="True, False or 'auto' (decide from mirrored training images)",
        switches=(
            (
                "--auto-flip",
                "auto",
                "the default: flip only if the linear probe keeps most of its accuracy on "
                "mirrored training images",
            ),
            ("--flip", True, "random horizontal flips (photos)"),
            ("--no-flip", False, "no horizontal flips (digits, text)"),
        ),
    )
    quarter_turns: bool | str = option(
        "auto",
        help="random quarter turns (0, 90, 180 or 270 degrees) of square images, for "
        "classes that keep under any turn (textures, micrographs, aerial and microscope "
        'images): `"auto"` (the default) decides from the data as `flip="auto"` does, from '
        "the linear probe on training images turned a quarter (see "
        "`keras_ft.training.phases.decide_quarter_turns`), so digits and text are not turned; "
        "`True` turns always; `False` never.",
        valid=lambda value: value in (True, False, "auto"),
        expected="True, False or 'auto' (decide from quarter-turned training images)",
        switches=(
            (
                "--auto-quarter-turns",
                "auto",
                "the default: turn by quarter turns only if the linear probe keeps most of "
                "its accuracy on training images turned a quarter",
            ),
            ("--quarter-turns", True, "random quarter turns (textures, micrographs)"),
            ("--no-quarter-turns", False, "no quarter turns (digits, text, upright photos)"),
        ),
    )
    rotation: float = option(
        0.05,
        help="maximum rotation as a fraction of a full turn.",
        valid=Range(0.0, 0.5),
        expected="a fraction of a full turn in [0, 0.5]",
        fix="0.05 rotates by up to 18 degrees either way.",
    )
    zoom: float = option(
        0.1,
        help="maximum zoom in or out, as a fraction.",
        valid=Range(0.0, 1.0, closed="left"),
        expected="a fraction in [0, 1)",
    )
    contrast: float = option(
        0.1,
        help="maximum contrast change, as a fraction.",
        valid=Range(0.0, 1.0, closed="left"),
        expected="a fraction in [0, 1)",
    )
    translation: float = option(
        0.0,
        help="maximum shift either way, as a fraction of the width and height (with "
        "`zoom`, a random crop).",
        valid=Range(0.0, 0.25),
        expected="a fraction of the image size in [0, 0.25]",
        fix="0.1 shifts by up to a tenth of the width and height either way.",
    )
    skip_bad: bool = option(
        False,
        help="train on the usable files when some cannot be used (see `keras_ft.data.scan`), "
        "instead of refusing; `ImageFolder.skipped` lists what was left out and why.",
        cli_help="train on the files that decode",
    )

    def __post_init__(self):
        validate(self)
        height, width = self.image_size
        check(
            self.quarter_turns is not True or height == width,
            "quarter_turns",
            f"False or 'auto' for images that are not square (image_size {self.image_size}): "
            "a quarter turn swaps height and width",
            True,
            "Pass a square image_size, e.g. 224.",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone, which weights, and what head."""

    num_classes: int = option(
        help="number of classes; `None` takes it from the data.",
        valid=Range(2, integer=True),
        expected="an int >= 2 (a classifier needs at least two classes)",
        flag="",
    )
    backbone: str = option(
        "vgg16",
        help="a registry name (`keras-ft backbones` lists them); `FineTuner` also takes a "
        "headless `keras.Model` of your own mapping `(H, W, 3)` images to features.",
        valid=lambda value: isinstance(value, str) and value != "",
        expected="a backbone name",
        cli_help="see `keras-ft backbones`",
    )
    weights: str | None = option(
        "imagenet",
        help='`"imagenet"`, `None` (random init, for tests), or the path of a weights file '
        "saved from the same backbone with `include_top=False`.",
        parse=parse_weights,
        cli_help="imagenet, none, or a weights path",
    )
    image_size: tuple[int, int] = option(
        (224, 224),
        help="input size; `None` takes the data's.",
        convert=image_size_pair,
        flag="",  # DataConfig's flag
    )
    pooling: str = option(
        "avg",
        help='`"avg"`, `"max"`, `"avgmax"` (both, concatenated) or `"flatten"` (the '
        "classic VGG recipe).",
        choices=POOLINGS,
    )
    dense_units: tuple[int, ...] = option(
        (),
        help="sizes of optional hidden Dense layers in the head.",
        convert=lambda value: tuple(value) if isinstance(value, (tuple, list)) else value,
        valid=lambda value: isinstance(value, tuple) and all(is_int(u) and u > 0 for u in value),
        expected="a sequence of positive ints",
        parse=parse_list(int, "ints such as 256,128"),
        cli_help="hidden head layers, comma-separated, e.g. 256 or 256,128",
    )
    dropout: float = option(
        0.2,
        help="dropout rate before the classifier layer.",
        valid=Range(0.0, 1.0, closed="left"),
    )
    normalize_features: bool = option(
        True,
        help="batch-normalise the pooled features, so that one learning rate suits backbones "
        "whose features have any scale.",
        cli_help="feed the pooled features to the head without batch normalisation",
    )
    mixed_precision: str | None = option(
        None,
        help='`None`, `"float16"` (NVIDIA GPUs) or `"bfloat16"` (TPUs, recent CPUs): compute '
        "in half precision, keep variables and the output probabilities in float32.",
        choices=MIXED_PRECISION,
        expected=f"one of {MIXED_PRECISION} (float16 for NVIDIA GPUs, bfloat16 for TPUs and "
        "new CPUs)",
        cli_help="half-precision compute (float16 on NVIDIA GPUs)",
    )
    seed: int = option(
        42,
        help="seeds every initializer, the dropout and the training.",
        valid=SEED,
    )
    head: str = option(
        "dense",
        help='`"dense"` (the trained head: normalisation, optional hidden layers, dropout, '
        'softmax) or `"linear"`: keep the linear probe as the model. `fit` then trains '
        "nothing by gradient: it fits a logistic regression on the frozen features (see "
        "`keras_ft.models.probe.linear_probe`) and folds it, standardisation included, into one "
        "Dense softmax layer; the epoch and learning rate options are ignored. Often the "
        "best choice with tens of images per class.",
        choices=HEADS,
        flag="",  # `keras-ft probe` is the linear head
    )
    preprocessing_layers: str = option(
        "keras",
        help='`"keras"`: the backbone\'s preprocessing is built from standard Keras layers, so '
        "`model.keras` loads with `keras.saving.load_model` where keras_ft is not installed; "
        '`"keras_ft"`: keras_ft\'s own `Preprocess` layer, as in runs recorded before this '
        "option (`reproduce` rebuilds it for them).",
        choices=PREPROCESSING_LAYERS,
        flag="",  # no choice to make on the command line: `reproduce` reads it from the record
    )

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class TrainingConfig:
    """The two phases: head on a frozen backbone, then fine-tuning with SGD."""

    head_epochs: int = option(
        10,
        help="phase 1 epochs (frozen backbone, Adam at `head_lr`).",
        valid=Range(0, integer=True),
    )
    finetune_epochs: int = option(
        10,
        help="phase 2 epochs (SGD at `finetune_lr` with `momentum`).",
        valid=Range(0, integer=True),
    )
    head_lr: float | str = option(
        1e-3,
        help='phase 1 learning rate, or `"auto"`: a learning-rate range test (`lr_find`) '
        "before phase 1 picks it.",
        valid=lambda value: Range(0.0, closed="neither")(value) or value == "auto",
        expected="a float > 0, or 'auto' (a learning-rate range test picks it)",
        parse=parse_rate,
        cli_help="a rate, or auto (range test)",
    )
    finetune_lr: float | str = option(
        1e-4,
        help='phase 2 learning rate, or `"auto"`: a range test after phase 1 picks it. '
        'Found rates are printed and kept in `run.json` under `"decisions"`; `reproduce` '
        "replays them.",
        valid=lambda value: Range(0.0, closed="neither")(value) or value == "auto",
        expected="a float > 0, or 'auto' (a learning-rate range test picks it)",
        parse=parse_rate,
        cli_help="a rate, or auto",
    )
    momentum: float = option(
        0.9, help="phase 2 SGD momentum.", valid=Range(0.0, 1.0, closed="left")
    )
    weight_decay: float = option(
        0.0,
        help="phase 2 decoupled weight decay (Keras's SGD `weight_decay`): each step shrinks "
        "every trained weight by `weight_decay` times the step's learning rate (each "
        "layer's own rate with `discriminative_lr`), before the gradient step. About PyTorch's SGD "
        "`weight_decay`, e.g. 1e-4; 0: none.",
        valid=Range(0.0),
        expected="a float >= 0, e.g. 1e-4 (0: no weight decay)",
    )
    unfreeze: str | int = option(
        "all",
        help='`"all"`, a backbone layer name to unfreeze from (e.g. `"block5_conv1"`), or the '
        "number of top backbone layers.",
        valid=lambda value: (
            (is_int(value) and value >= 1) or (isinstance(value, str) and value != "")
        ),
        expected="'all', a layer name such as 'block5_conv1', or a number of top layers >= 1",
        parse=parse_unfreeze,
        cli_help="all, a layer name to unfreeze from, or a number of top layers",
    )
    deterministic: bool = option(
        True,
        help="turn on TensorFlow op determinism (bitwise replay).",
        flag="--no-determinism",
        cli_help="turn op determinism off (faster on some GPUs, no bitwise replay)",
        constructor=True,
    )
    feature_cache: bool = option(
        True,
        help="without augmentation, compute the frozen backbone's features once and train "
        "phase 1's head on them (much faster, same result up to float rounding).",
        cli_help="recompute the frozen backbone every phase-1 epoch (no-augment runs)",
    )
    jit_compile: bool = option(
        False,
        help="compile training steps with XLA (faster on GPUs); needs `deterministic=False`.",
        cli_help="XLA-compile training steps (needs --no-determinism)",
    )
    class_weight: str | dict[str, float] | None = option(
        None,
        help='`None`, `"balanced"` (scikit-learn\'s rule: rarer classes weigh more), or '
        "`{class name: weight}` (unnamed classes weigh 1).",
        valid=lambda value: (
            value is None
            or value == "balanced"
            or (isinstance(value, dict) and all(is_number(w) and w > 0 for w in value.values()))
        ),
        expected="None, 'balanced', or a dict mapping class names to positive weights",
        parse=parse_class_weight,
        cli_help="'balanced' or CLASS=WEIGHT pairs, e.g. cat=2,dog=1",
    )
    label_smoothing: float = option(
        0.0,
        help="e.g. 0.1: targets of 0.9 and 0.1 / (classes - 1) rather than 1 and 0.",
        valid=Range(0.0, 1.0, closed="left"),
        expected="a float in [0, 1), e.g. 0.1",
    )
    finetune_schedule: str = option(
        "constant",
        help='phase 2 learning rate: `"constant"`, or `"cosine"` decay to 0 over the phase.',
        choices=SCHEDULES,
    )
    warmup_epochs: int = option(
        0,
        help='with `"cosine"`, epochs of linear warm-up from 0 to `finetune_lr` first.',
        valid=Range(0, integer=True),
    )
    early_stopping: int | None = option(
        None,
        help="patience in epochs: stop a phase when the validation loss has not improved for "
        "that long, and keep the best weights.",
        valid=lambda value: value is None or Range(1, integer=True)(value),
        expected="None or a patience in epochs >= 1",
        parse=int,
        metavar="PATIENCE",
        cli_help="stop a phase after PATIENCE epochs without a better val_loss",
    )
    discriminative_lr: float = option(
        1.0,
        help="phase 2's rate for the lowest unfrozen backbone layer is `finetune_lr / "
        "discriminative_lr`, rising geometrically layer by layer to `finetune_lr` at the top "
        "and in the head (`keras_ft.training.phases.layer_multipliers`). 1: one rate for all.",
        valid=Range(1.0),
        expected="a float >= 1: how many times lower the lowest unfrozen layer's rate is than "
        "finetune_lr (1: one rate for all)",
        fix="fastai's slice(lr / 100, lr) is 100.",
        metavar="RATIO",
        cli_help="phase 2: the lowest unfrozen layer trains at --finetune-lr / RATIO, rising "
        "layer by layer to --finetune-lr at the top",
    )
    gradual_unfreeze: int = option(
        0,
        help="ULMFiT's gradual unfreezing (Howard and Ruder 2018) in phase 2: the unfrozen "
        "backbone layers that have weights are split, in depth order, into this many groups "
        "of about equal size (`keras_ft.training.phases.unfreeze_groups`); the head and the top "
        "group train from phase 2's first epoch, and at each following epoch the next group "
        "below joins, so that all train from epoch `gradual_unfreeze` of phase 2. A layer "
        "waiting its turn keeps its weights (no step, no weight decay; its gradient is "
        "still computed). 0 or 1: all at once.",
        valid=Range(0, integer=True),
        expected="an int >= 0: how many groups of backbone layers join phase 2, one epoch "
        "apart (0: all at once)",
        fix="ULMFiT adds one layer group per epoch; for VGG16 from block 1, 5 is a group "
        "per block.",
        metavar="GROUPS",
        cli_help="phase 2: unfreeze the backbone in GROUPS groups, the top one first and one "
        "more each epoch (ULMFiT's gradual unfreezing)",
    )
    head_augment: bool = option(
        True,
        help="False trains phase 1 on the features of the unaugmented training images, "
        "computed once (`feature_cache`), even when the data augments; phase 2 still sees "
        "augmented images.",
        cli_help="phase 1 trains on the unaugmented images' features, computed once; phase 2 "
        "still augments",
    )
    head_init: str = option(
        "random",
        help='how the head starts: `"random"` (Keras\'s initialisers), or `"probe"`: as the '
        "linear probe (a logistic regression on the frozen backbone's features of the "
        "training images, C by cross-validation), which phase 1, if any, and phase 2 then "
        "train on: linear probing, then fine-tuning (LP-FT, Kumar et al. 2022). Needs a head "
        "without `dense_units`.",
        cli_help="start the head as the linear probe on the frozen features (LP-FT)",
        choices=HEAD_INITS,
    )
    fallback_to_head: bool = option(
        False,
        help="after phase 2, restore the phase-1 head's weights if fine-tuning did not lower "
        "the validation loss (needs a validation split; recorded in `run.json` under "
        "`decisions`).",
        cli_help="keep the phase-1 head's weights if fine-tuning does not lower the "
        "validation loss",
    )
    fallback_to_probe: bool = option(
        False,
        help="after phase 2, keep as the model the linear probe (a logistic regression on "
        "the frozen backbone's features, folded into the head's last layer, on the backbone "
        "phase 2 started from) if its validation loss is lower than the fine-tuned model's "
        "(and, with `fallback_to_head`, the phase-1 head's). Needs a validation split and a "
        "head without `dense_units`; recorded in `run.json` under `decisions`.",
        cli_help="keep the linear probe on the frozen features as the model if its "
        "validation loss is lower than fine-tuning's",
    )
    fallback_to_mixes: tuple[float, ...] = option(
        (),
        help="after phase 2, also compete in the fallback: for each fraction `a`, the weights "
        "`a * fine-tuned + (1 - a) * those phase 2 started from` (a weight-space ensemble of "
        "the fine-tuned model and the phase-1 head on the frozen backbone: WiSE-FT, Wortsman "
        "et al. 2022), kept if its validation loss is the lowest. Needs a validation split; "
        "recorded in `run.json` under `decisions`.",
        convert=lambda value: tuple(value) if isinstance(value, (tuple, list)) else value,
        valid=lambda value: (
            isinstance(value, tuple) and all(is_number(a) and 0 < a < 1 for a in value)
        ),
        expected="a sequence of fractions strictly between 0 and 1, e.g. (0.25, 0.5, 0.75)",
        parse=parse_list(float, "fractions such as 0.25,0.5,0.75"),
        metavar="FRACTIONS",
        cli_help="also keep a*fine-tuned + (1-a)*phase-2-start weights if its validation loss "
        "is lowest, for each comma-separated a, e.g. 0.25,0.5,0.75",
    )
    refit_probe: bool = option(
        False,
        help="when `fallback_to_probe` keeps the linear probe, fit it again on the training "
        "and validation images together (C again by cross-validation) once validation has "
        "chosen it, as a probe is usually fitted; `run.json` keeps the validation figures "
        "of the probe fitted without them.",
        cli_help="refit a kept linear probe on the training and validation images together",
    )
    strategy: str = option(
        "auto",
        help='how to spread training over devices, with `tf.distribute`: `"auto"` (all local '
        'GPUs when there are several, else one device), `"none"`, `"mirrored"` (all local '
        'GPUs), `"multiworker"` (the cluster in `TF_CONFIG`; create the FineTuner before any '
        'other TensorFlow work) or `"tpu"`. See `keras_ft.training.distribute`. The data\'s '
        "`batch_size` is then per replica.",
        choices=STRATEGIES,
        fix="'auto' uses all local GPUs when there are several.",
        cli_help="tf.distribute strategy: auto (all local GPUs if several), none, mirrored, "
        "multiworker (the cluster in TF_CONFIG) or tpu; --batch-size is then per replica",
        constructor=True,
    )
    lr_scaling: str = option(
        "none",
        help="under a strategy with N replicas the global batch is N times the data's "
        '`batch_size`: `"none"` keeps `head_lr` and `finetune_lr`, `"linear"` multiplies '
        "both by N.",
        choices=LR_SCALINGS,
        expected=f"one of {LR_SCALINGS} ('linear' multiplies the learning rates by the replicas)",
        cli_help="with N replicas: keep the learning rates (none) or multiply them by N (linear)",
    )

    def __post_init__(self):
        validate(self)
        check(
            self.head_epochs + self.finetune_epochs > 0,
            "head_epochs/finetune_epochs",
            "at least one epoch in total",
            0,
        )
        check(
            self.warmup_epochs <= self.finetune_epochs,
            "warmup_epochs",
            f"an int from 0 to finetune_epochs ({self.finetune_epochs})",
            self.warmup_epochs,
        )
        check(
            self.gradual_unfreeze <= max(1, self.finetune_epochs),
            "gradual_unfreeze",
            f"an int from 0 to finetune_epochs ({self.finetune_epochs}): one group joins "
            "phase 2 per epoch, and each must have its turn",
            self.gradual_unfreeze,
        )
        check(
            self.warmup_epochs == 0 or self.finetune_schedule == "cosine",
            "warmup_epochs",
            "0 unless finetune_schedule='cosine' (warm-up leads into the cosine decay)",
            self.warmup_epochs,
        )
        check(
            self.head_augment or self.feature_cache,
            "head_augment",
            "True unless feature_cache=True (phase 1 then trains on the features of the "
            "unaugmented images, computed once)",
            self.head_augment,
        )
        check(
            self.fallback_to_probe or not self.refit_probe,
            "refit_probe",
            "False unless fallback_to_probe=True (it refits the probe that fallback kept)",
            self.refit_probe,
        )
        if self.jit_compile and self.deterministic:
            raise KerasFTError(
                "`jit_compile=True` conflicts with op determinism: XLA has no deterministic "
                "kernels for some ops and fails mid-training. Pass deterministic=False "
                "(--no-determinism) to use XLA, or leave jit_compile off for bitwise replay."
            )


CONSTRUCTOR_OPTIONS = tuple(n for n, o in options_of(TrainingConfig).items() if o.constructor)
FIT_OPTIONS = tuple(n for n in options_of(TrainingConfig) if n not in CONSTRUCTOR_OPTIONS)


def to_dict(config) -> dict:
    """Return a JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


# What a run record written before these options existed trained with: their values then,
# not today's defaults, so that `reproduce` replays an older run as it ran.
RECORDED_BEFORE = {"flip": True, "quarter_turns": False, "preprocessing_layers": "keras_ft"}


def from_dict(cls, values: dict):
    """Build config `cls` from `to_dict` output (a run record), ignoring unknown keys; an
    option the record lacks takes its `RECORDED_BEFORE` value, else its default."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in {**RECORDED_BEFORE, **values}.items() if k in names}
    for key in ("image_size", "dense_units"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = tuple(kwargs[key])
    return cls(**kwargs)
