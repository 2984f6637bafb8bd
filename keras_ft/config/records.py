"""Configs as JSON-ready dicts, and back from a run record (`to_dict`, `from_dict`)."""

from __future__ import annotations

import dataclasses


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
