"""`DataConfig`: how images are read, split, augmented and batched."""

from __future__ import annotations

import re
from dataclasses import dataclass

from keras_ft.config.checks import SEED, Range, check, image_size_pair
from keras_ft.config.options import option, validate

# The augmentation options that `"auto"` decides from the data before phase 1
# (`keras_ft.training.symmetry.DECIDERS` holds the decider of each).
DECIDED_FROM_DATA = ("flip", "quarter_turns")


def _is_pattern(value) -> bool:
    """True for None or a non-empty regular expression that compiles."""
    if value is None:
        return True
    if not isinstance(value, str) or not value:
        return False
    try:
        re.compile(value)
    except re.error:
        return False
    return True


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
        "hash of (seed, relative path), or per group (see `validation_groups`).",
        cli_help="fraction of DATA_DIR held out for validation, chosen per file (per group with "
        "--validation-groups) from a hash of the seed and its path",
        valid=Range(0.0, 1.0, closed="left"),
        fix="Use 0 to train on every image, e.g. 0.2 to hold out a fifth.",
    )
    validation_groups: str | None = option(
        None,
        help="a regular expression that names each image's group (a patient, a video, a "
        "recording) from its path `<class>/<file>` under `directory`: the match, or its first "
        "parenthesised group if it has one. The split then holds out whole groups, so that no "
        "group both trains and validates. Every image must match. `None`: each image is held "
        "out on its own.",
        cli_help="hold out whole groups: a regular expression whose match in each image's "
        "'<class>/<file>' path (or its first parenthesised group) names its group, e.g. "
        "'patient\\d+'",
        valid=_is_pattern,
        expected="a regular expression (Python `re` syntax) or None",
        fix=r"For files named like 'patient12_scan3.png', 'patient\d+' groups by patient.",
        metavar="REGEX",
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
        "`keras_ft.training.symmetry.decide_flip`), so digits and text are not mirrored; `True` "
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
        "`keras_ft.training.symmetry.decide_quarter_turns`), so digits and text are not turned; "
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
