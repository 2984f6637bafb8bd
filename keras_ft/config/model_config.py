"""`ModelConfig`: which backbone, which weights, and what head."""

from __future__ import annotations

from dataclasses import dataclass

from keras_ft.config.checks import SEED, Range, image_size_pair, is_int
from keras_ft.config.options import option, validate
from keras_ft.config.parsers import parse_list, parse_weights

POOLINGS = ("avg", "max", "avgmax", "flatten")
HEADS = ("dense", "linear")
PREPROCESSING_LAYERS = ("keras", "keras_ft")
MIXED_PRECISION = (None, "float16", "bfloat16")


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
