"""The checks every option is declared with: `check`, the type tests, `Range` and `SEED`.

A failed check is a `KerasFTError` that names the argument, what it allows and
what it received.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_ft.utils.errors import KerasFTError


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
