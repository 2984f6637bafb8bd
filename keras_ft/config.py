"""Flat, typed, frozen configuration for each stage, validated once, stored as JSON.

The public classes (`ImageFolder`, `FineTuner`) take these values as plain
keyword arguments and keep them here, so a run record can be written and read
back without loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from keras_ft.errors import KerasFTError

POOLINGS = ("avg", "max", "avgmax", "flatten")
HEADS = ("dense", "linear")
MIXED_PRECISION = (None, "float16", "bfloat16")
SCHEDULES = ("constant", "cosine")
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


def image_size_pair(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return `image_size` as a `(height, width)` tuple of positive ints."""
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
    return (int(image_size[0]), int(image_size[1]))


@dataclass(frozen=True)
class DataConfig:
    """How images are read, split, augmented and batched."""

    directory: str
    test_dir: str | None = None
    image_size: tuple[int, int] = (224, 224)
    batch_size: int = 32
    validation_split: float = 0.2
    seed: int = 42
    augment: bool = True
    flip: bool | str = True
    rotation: float = 0.05
    zoom: float = 0.1
    contrast: float = 0.1
    translation: float = 0.0
    skip_bad: bool = False

    def __post_init__(self):
        object.__setattr__(self, "image_size", image_size_pair(self.image_size))
        check(
            is_int(self.batch_size) and self.batch_size >= 1,
            "batch_size",
            "an int >= 1",
            self.batch_size,
        )
        check(
            is_number(self.validation_split) and 0.0 <= self.validation_split < 1.0,
            "validation_split",
            "a float in [0, 1)",
            self.validation_split,
            "Use 0 to train on every image, e.g. 0.2 to hold out a fifth.",
        )
        check(is_int(self.seed), "seed", "an int", self.seed)
        check(
            is_number(self.rotation) and 0.0 <= self.rotation <= 0.5,
            "rotation",
            "a fraction of a full turn in [0, 0.5]",
            self.rotation,
            "0.05 rotates by up to 18 degrees either way.",
        )
        check(
            is_number(self.zoom) and 0.0 <= self.zoom < 1.0,
            "zoom",
            "a fraction in [0, 1)",
            self.zoom,
        )
        check(
            self.flip in (True, False, "auto"),
            "flip",
            "True, False or 'auto' (decide after phase 1 from mirrored validation images)",
            self.flip,
        )
        check(
            is_number(self.translation) and 0.0 <= self.translation <= 0.25,
            "translation",
            "a fraction of the image size in [0, 0.25]",
            self.translation,
            "0.1 shifts by up to a tenth of the width and height either way.",
        )
        check(
            is_number(self.contrast) and 0.0 <= self.contrast < 1.0,
            "contrast",
            "a fraction in [0, 1)",
            self.contrast,
        )


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone, which weights, and what head."""

    num_classes: int
    backbone: str = "vgg16"
    weights: str | None = "imagenet"
    image_size: tuple[int, int] = (224, 224)
    pooling: str = "avg"
    dense_units: tuple[int, ...] = ()
    dropout: float = 0.2
    normalize_features: bool = True
    mixed_precision: str | None = None
    seed: int = 42
    head: str = "dense"

    def __post_init__(self):
        object.__setattr__(self, "image_size", image_size_pair(self.image_size))
        check(self.head in HEADS, "head", f"one of {HEADS}", self.head)
        object.__setattr__(self, "dense_units", tuple(self.dense_units))
        check(
            is_int(self.num_classes) and self.num_classes >= 2,
            "num_classes",
            "an int >= 2 (a classifier needs at least two classes)",
            self.num_classes,
        )
        check(self.pooling in POOLINGS, "pooling", f"one of {POOLINGS}", self.pooling)
        check(
            all(is_int(u) and u > 0 for u in self.dense_units),
            "dense_units",
            "a sequence of positive ints",
            self.dense_units,
        )
        check(
            is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            "dropout",
            "a float in [0, 1)",
            self.dropout,
        )
        check(
            self.mixed_precision in MIXED_PRECISION,
            "mixed_precision",
            f"one of {MIXED_PRECISION} (float16 for NVIDIA GPUs, bfloat16 for TPUs and new CPUs)",
            self.mixed_precision,
        )
        check(is_int(self.seed), "seed", "an int", self.seed)


@dataclass(frozen=True)
class TrainingConfig:
    """The two phases: head on a frozen backbone, then fine-tuning with SGD."""

    head_epochs: int = 10
    finetune_epochs: int = 10
    head_lr: float | str = 1e-3
    finetune_lr: float | str = 1e-4
    momentum: float = 0.9
    unfreeze: str | int = "all"
    deterministic: bool = True
    feature_cache: bool = True
    jit_compile: bool = False
    class_weight: str | dict[str, float] | None = None
    label_smoothing: float = 0.0
    finetune_schedule: str = "constant"
    warmup_epochs: int = 0
    early_stopping: int | None = None
    discriminative_lr: float = 1.0
    head_augment: bool = True
    fallback_to_head: bool = False
    strategy: str = "auto"
    lr_scaling: str = "none"

    def __post_init__(self):
        for name in ("head_epochs", "finetune_epochs"):
            value = getattr(self, name)
            check(is_int(value) and value >= 0, name, "an int >= 0", value)
        check(
            self.head_epochs + self.finetune_epochs > 0,
            "head_epochs/finetune_epochs",
            "at least one epoch in total",
            0,
        )
        for name in ("head_lr", "finetune_lr"):
            value = getattr(self, name)
            check(
                (is_number(value) and value > 0) or value == "auto",
                name,
                "a float > 0, or 'auto' (a learning-rate range test picks it)",
                value,
            )
        check(
            is_number(self.momentum) and 0.0 <= self.momentum < 1.0,
            "momentum",
            "a float in [0, 1)",
            self.momentum,
        )
        check(
            (is_int(self.unfreeze) and self.unfreeze >= 1)
            or (isinstance(self.unfreeze, str) and self.unfreeze != ""),
            "unfreeze",
            "'all', a layer name such as 'block5_conv1', or a number of top layers >= 1",
            self.unfreeze,
        )
        check(
            self.class_weight is None
            or self.class_weight == "balanced"
            or (
                isinstance(self.class_weight, dict)
                and all(is_number(w) and w > 0 for w in self.class_weight.values())
            ),
            "class_weight",
            "None, 'balanced', or a dict mapping class names to positive weights",
            self.class_weight,
        )
        check(
            is_number(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0,
            "label_smoothing",
            "a float in [0, 1), e.g. 0.1",
            self.label_smoothing,
        )
        check(
            self.finetune_schedule in SCHEDULES,
            "finetune_schedule",
            f"one of {SCHEDULES}",
            self.finetune_schedule,
        )
        check(
            is_int(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.finetune_epochs,
            "warmup_epochs",
            f"an int from 0 to finetune_epochs ({self.finetune_epochs})",
            self.warmup_epochs,
        )
        check(
            self.warmup_epochs == 0 or self.finetune_schedule == "cosine",
            "warmup_epochs",
            "0 unless finetune_schedule='cosine' (warm-up leads into the cosine decay)",
            self.warmup_epochs,
        )
        check(
            self.early_stopping is None
            or (is_int(self.early_stopping) and self.early_stopping >= 1),
            "early_stopping",
            "None or a patience in epochs >= 1",
            self.early_stopping,
        )
        check(
            is_number(self.discriminative_lr) and self.discriminative_lr >= 1.0,
            "discriminative_lr",
            "a float >= 1: how many times lower the lowest unfrozen layer's rate is than "
            "finetune_lr (1: one rate for all)",
            self.discriminative_lr,
            "fastai's slice(lr / 100, lr) is 100.",
        )
        for name in ("head_augment", "fallback_to_head"):
            check(isinstance(getattr(self, name), bool), name, "True or False", getattr(self, name))
        check(
            self.head_augment or self.feature_cache,
            "head_augment",
            "True unless feature_cache=True (phase 1 then trains on the features of the "
            "unaugmented images, computed once)",
            self.head_augment,
        )
        check(
            self.strategy in STRATEGIES,
            "strategy",
            f"one of {STRATEGIES}",
            self.strategy,
            "'auto' uses all local GPUs when there are several.",
        )
        check(
            self.lr_scaling in LR_SCALINGS,
            "lr_scaling",
            f"one of {LR_SCALINGS} ('linear' multiplies the learning rates by the replicas)",
            self.lr_scaling,
        )
        if self.jit_compile and self.deterministic:
            raise KerasFTError(
                "`jit_compile=True` conflicts with op determinism: XLA has no deterministic "
                "kernels for some ops and fails mid-training. Pass deterministic=False "
                "(--no-determinism) to use XLA, or leave jit_compile off for bitwise replay."
            )


def to_dict(config) -> dict:
    """Return a JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    """Build config `cls` from `to_dict` output, ignoring unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    for key in ("image_size", "dense_units"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = tuple(kwargs[key])
    return cls(**kwargs)
