"""Flat, typed, frozen configuration for each stage, validated once, stored as JSON.

Every option is declared once, as a dataclass field with an `Option` in its
metadata: its help text, its check and its command-line flag. Validation
(`__post_init__`), the `keras-ft` flags (`keras_ft.cli.main`), and the documented
keyword arguments of `FineTuner` and `FineTuner.fit` are all made from it, so
adding an option means adding a field (and the code that uses it).

This facade re-exports the package's public names; they live in:

- `checks`: `check`, `is_number`, `is_int`, `is_count`, `image_size_pair`,
  `MAX_IMAGE_SIDE`, `Range` and `SEED`.
- `parsers`: the command-line forms of values (`parse_*`).
- `options`: `Option`, `option`, `options_of`, `defaults_of`, `checked`,
  `validate`, `describe`, `document`, `merge_options` and `takes_options`.
- `data_config`: `DataConfig` and `DECIDED_FROM_DATA`.
- `model_config`: `ModelConfig` and its choices (`POOLINGS`, `HEADS`,
  `PREPROCESSING_LAYERS`, `MIXED_PRECISION`).
- `training_config`: `TrainingConfig`, its choices (`SCHEDULES`, `HEAD_INITS`,
  `STRATEGIES`, `LR_SCALINGS`), `CONSTRUCTOR_OPTIONS` and `FIT_OPTIONS`.
- `records`: `to_dict`, `from_dict` and `RECORDED_BEFORE`.
- `run`: `RunConfig`, a run's whole configuration as `run.json` records it.
- `recipe`: the named recipes (`recipe="auto"`), imported from there.
"""

from __future__ import annotations

from keras_ft.config.checks import (
    MAX_IMAGE_SIDE,
    SEED,
    Range,
    check,
    image_size_pair,
    is_count,
    is_int,
    is_number,
)
from keras_ft.config.data_config import DECIDED_FROM_DATA, DataConfig
from keras_ft.config.model_config import (
    HEADS,
    MIXED_PRECISION,
    POOLINGS,
    PREPROCESSING_LAYERS,
    ModelConfig,
)
from keras_ft.config.options import (
    Option,
    checked,
    defaults_of,
    describe,
    document,
    merge_options,
    option,
    options_of,
    takes_options,
    validate,
)
from keras_ft.config.parsers import (
    parse_class_weight,
    parse_duration,
    parse_list,
    parse_rate,
    parse_unfreeze,
    parse_weights,
)
from keras_ft.config.records import RECORDED_BEFORE, from_dict, to_dict
from keras_ft.config.run import RunConfig
from keras_ft.config.training_config import (
    CONSTRUCTOR_OPTIONS,
    FIT_OPTIONS,
    HEAD_INITS,
    LR_SCALINGS,
    SCHEDULES,
    STRATEGIES,
    TrainingConfig,
)

__all__ = [
    "CONSTRUCTOR_OPTIONS",
    "FIT_OPTIONS",
    "HEADS",
    "HEAD_INITS",
    "LR_SCALINGS",
    "MAX_IMAGE_SIDE",
    "MIXED_PRECISION",
    "POOLINGS",
    "PREPROCESSING_LAYERS",
    "RECORDED_BEFORE",
    "SCHEDULES",
    "SEED",
    "STRATEGIES",
    "DECIDED_FROM_DATA",
    "DataConfig",
    "ModelConfig",
    "Option",
    "Range",
    "RunConfig",
    "TrainingConfig",
    "check",
    "checked",
    "defaults_of",
    "describe",
    "document",
    "from_dict",
    "image_size_pair",
    "is_count",
    "is_int",
    "is_number",
    "merge_options",
    "option",
    "options_of",
    "parse_class_weight",
    "parse_duration",
    "parse_list",
    "parse_rate",
    "parse_unfreeze",
    "parse_weights",
    "takes_options",
    "to_dict",
    "validate",
]
