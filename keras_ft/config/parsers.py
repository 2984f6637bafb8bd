"""The command-line forms of option values: each turns a flag's text into a value."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from keras_ft.config.checks import is_count


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


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: str) -> float:
    """A duration in seconds: a number of seconds, or one with a unit (`90s`, `5m`, `1.5h`)."""
    text = value.strip().lower()
    unit = DURATION_UNITS.get(text[-1:])
    try:
        return float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds or a duration such as 90s, 5m or 1.5h, received {value!r}"
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
