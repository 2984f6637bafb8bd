"""Walk an image folder: the class list, the file list, and every file that will not decode.

A folder is `root/<class>/<image>`. Each candidate file is opened and fully
decoded with Pillow before any model is built, so that one corrupt file is
reported by path up front instead of killing a tf.data epoch hours later.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from keras_ft.errors import KerasFTError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}

# Pillow (format, mode) pairs that tf.io.decode_image reads correctly as RGB.
# Anything else that Pillow can read (CMYK JPEG, 16-bit PNG, palette BMP ...)
# is converted with Pillow in the pipeline instead.
_TF_NATIVE = {
    "JPEG": {"L", "RGB"},
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA"},
    "GIF": {"P", "L", "RGB"},
    "BMP": {"RGB", "RGBA"},
}
_EXTENSION_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}


def natural_key(name: str) -> list:
    """Sort key that orders "2" before "10" and "class2" before "class10"."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower())
        for part in re.split(r"(\d+)", name)
        if part
    ]


@dataclass(frozen=True)
class ImageFile:
    """One image that decodes: its path, its class and how to read it."""

    path: str
    relpath: str
    label: int
    needs_pil: bool = False


@dataclass(frozen=True)
class Problem:
    """A file that cannot be used, or a note about one that can."""

    path: str
    reason: str
    fatal: bool = True


@dataclass(frozen=True)
class ScanReport:
    """The result of `scan_folder`."""

    root: str
    class_names: tuple[str, ...]
    files: tuple[ImageFile, ...]
    problems: tuple[Problem, ...] = field(default=())

    @property
    def bad_files(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.fatal)

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.class_names}
        for f in self.files:
            counts[self.class_names[f.label]] += 1
        return counts

    def summary(self) -> str:
        lines = [f"{self.root}: {len(self.files)} images in {len(self.class_names)} classes"]
        lines += [f"  {name}: {count}" for name, count in self.counts().items()]
        lines += [
            f"  {'problem' if p.fatal else 'note'}: {p.path}: {p.reason}" for p in self.problems
        ]
        return "\n".join(lines)


def _inspect(path: str) -> tuple[bool, str | None, bool]:
    """Decode `path` fully; return (usable, reason, needs_pil)."""
    try:
        if os.path.getsize(path) == 0:
            return False, "empty file (0 bytes)", False
        with Image.open(path) as image:
            fmt, mode = image.format, image.mode
            image.load()
    except UnidentifiedImageError:
        return False, "not an image (Pillow cannot identify its content)", False
    except PermissionError:
        return False, "cannot be read (permission denied)", False
    except (OSError, SyntaxError, ValueError) as error:
        return False, f"cannot be decoded ({error})", False
    expected = _EXTENSION_FORMAT[Path(path).suffix.lower()]
    note = (
        None if fmt == expected else f"content is {fmt} but the name says {expected}; read as {fmt}"
    )
    return True, note, mode not in _TF_NATIVE.get(fmt, ())


def list_classes(root: Path) -> tuple[str, ...]:
    """Return the class folders under `root` in natural order."""
    if not root.is_dir():
        raise KerasFTError(
            f"Data directory '{root}' does not exist or is not a directory. "
            "Pass a folder that holds one sub-folder per class, e.g. flowers/train/<class>/*.jpg."
        )
    names = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not names:
        raise KerasFTError(
            f"Data directory '{root}' has no class sub-folders. Put each class's images "
            "in a sub-folder named after the class: "
            f"{root}/<class>/<image>.jpg."
        )
    return tuple(sorted(names, key=natural_key))


def scan_folder(
    root: str | os.PathLike, class_names: tuple[str, ...] | None = None, workers: int = 8
) -> ScanReport:
    """Scan `root/<class>/<image>` and decode every candidate image.

    Args:
        root: the folder with one sub-folder per class.
        class_names: the class order to use (e.g. the training folder's, when
            scanning a test folder). The folder's classes must be the same set.
            `None` uses the folder's own classes in natural order.
        workers: threads used to decode files.

    Returns:
        A `ScanReport`; files are ordered by class, then by path.
    """
    root = Path(root)
    found = list_classes(root)
    if class_names is None:
        class_names = found
    else:
        unknown = sorted(set(found) - set(class_names), key=natural_key)
        missing = sorted(set(class_names) - set(found), key=natural_key)
        if unknown or missing:
            details = []
            if unknown:
                details.append(f"classes not in training: {unknown}")
            if missing:
                details.append(f"training classes missing here: {missing}")
            raise KerasFTError(
                f"Directory '{root}' has different classes from the training data "
                f"({'; '.join(details)}). The held-out folder must have one sub-folder per "
                f"training class, named the same: {list(class_names)}."
            )
    candidates, problems = [], []
    for label, name in enumerate(class_names):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = os.path.join(dirpath, filename)
                if filename.startswith(".") or filename.lower() in IGNORED_NAMES:
                    continue
                if Path(filename).suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append((path, label))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_inspect, [path for path, _ in candidates]))
    files = []
    for (path, label), (usable, reason, needs_pil) in zip(candidates, results, strict=True):
        relpath = Path(path).relative_to(root).as_posix()
        if usable:
            files.append(ImageFile(path, relpath, label, needs_pil))
        if reason:
            problems.append(Problem(path, reason, fatal=not usable))
    for label, name in enumerate(class_names):
        if not any(f.label == label for f in files):
            problems.append(Problem(str(root / name), "class folder has no usable images"))
    return ScanReport(str(root), tuple(class_names), tuple(files), tuple(problems))
