"""Walk an image folder: the class list, the file list, and every file that cannot be used.

A folder is `root/<class>/<image>`. A file is an image candidate when its
extension is one of a format Pillow decodes (`image_extensions`: JPEG, PNG,
WebP, TIFF, BMP, GIF, PPM ...). Each candidate is read and decoded before any
model is built, so that one corrupt file is reported by path up front instead
of killing a tf.data epoch hours later.

Every finding is a `Problem` at one of three levels:

* **problem** (fatal): the file cannot be used, and training refuses the
  folder unless `skip_bad=True` (`--skip-bad`) leaves it out: an empty file, a
  truncated file, a checksum that does not match, content that is not an
  image, a file that cannot be read (permissions, a broken symbolic link, a
  named pipe or device named like an image), an image smaller than `min_size`
  pixels on either side, the same image content (SHA-256 of the bytes) in two
  classes (a label conflict: every copy is a problem), and a class folder
  with no usable image.
* **warning** (not fatal, reported): the same image in a test folder and in
  its training folder (leakage: the test accuracy will be optimistic).
* **note** (not fatal): content that does not match the extension (read as
  what it is), a symbolic link that loops back or repeats a folder (not
  followed), a keras_ft run or search directory inside the data (one of
  `keras_ft.utils.files.MARKERS` at its top, e.g. `run.json`: an output, not data;
  not scanned, so its report PNGs never become a class).

Every other file (`.txt`, `.csv` ...) is counted and named in the summary as
"not an image, skipped"; hidden files and folders, `Thumbs.db` and
`desktop.ini` are ignored silently.

Reading and decoding a file (one decoder for the scan and training; the size
limit) is `keras_ft.data.decode`'s; the cache of decoding verdicts (what is
cached, and when it is stale), `keras_ft.data.scan_cache`'s.
"""

from __future__ import annotations

import os
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from keras_ft.data.decode import SAME_FORMAT, image_extensions
from keras_ft.data.scan_cache import inspect_all, within
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.files import keras_ft_marker
from keras_ft.utils.text import printable

IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
# How many names of files that are not images the summary shows.
NOT_IMAGES_SHOWN = 5
DEFAULT_MIN_SIZE = 8
WARNING_KINDS = frozenset({"leakage"})
# Folder names of a data set's splits: a folder whose "classes" are all such names, with
# folders inside, is the data set's root rather than one split (`_refuse_split_root`).
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation"})


def natural_key(name: str) -> list:
    """Sort key that orders "2" before "10" and "class2" before "class10"."""
    return [
        (0, int(part), "") if part.isascii() and part.isdigit() else (1, 0, part.lower())
        for part in re.split(r"([0-9]+)", name)
        if part
    ]


@dataclass(frozen=True)
class ImageFile:
    """One usable image: its path, its class and its content hash."""

    path: str
    relpath: str
    label: int
    sha256: str = ""


@dataclass(frozen=True)
class Problem:
    """A file or folder that cannot be used, or a warning or note about one that can.

    Attributes:
        path: the file or folder, as found under the scanned root.
        reason: what is wrong and how to fix it.
        fatal: whether training refuses the folder because of it (unless
            `skip_bad=True`, which leaves the file out).
        kind: a short machine-readable name, e.g. "truncated", "too_small",
            "label_conflict", "leakage".
    """

    path: str
    reason: str
    fatal: bool = True
    kind: str = ""

    @property
    def level(self) -> str:
        """ "problem" (fatal), "warning" (reported, not fatal) or "note"."""
        if self.fatal:
            return "problem"
        return "warning" if self.kind in WARNING_KINDS else "note"


@dataclass(frozen=True)
class ScanReport:
    """The result of `scan_folder`.

    Attributes:
        root: the scanned folder.
        class_names: the class order; label `i` is `class_names[i]`.
        files: the usable images, ordered by class, then by path.
        problems: every problem, warning and note, each naming its path.
        from_cache: how many files were judged from the cache, not decoded.
        not_images: the files left out because their extension is not an image
            format's (`notes.txt`, `labels.csv` ...), as paths relative to `root`.
    """

    root: str
    class_names: tuple[str, ...]
    files: tuple[ImageFile, ...]
    problems: tuple[Problem, ...] = field(default=())
    from_cache: int = 0
    not_images: tuple[str, ...] = field(default=())

    @property
    def bad_files(self) -> tuple[Problem, ...]:
        """The fatal problems: what training refuses, or skips with `skip_bad=True`."""
        return tuple(p for p in self.problems if p.fatal)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """Reported, not fatal: the same image in training and test (leakage)."""
        return tuple(p for p in self.problems if p.level == "warning")

    def leakage_warning(self, training_dir) -> str:
        """What `ImageFolder` warns when this test folder's `warnings` (leakage) are not empty."""
        leaks = self.warnings
        command = f"keras-ft scan {shlex.quote(str(training_dir))} --test-dir "
        return printable(
            f"{len(leaks)} of the {len(self.files)} images in the test folder "
            f"'{self.root}' are also in the training folder '{training_dir}' (the same file "
            f"content; the first: '{leaks[0].path}'): the test accuracy will be "
            f"optimistic. Remove them from one of the two; `{command}"
            f"{shlex.quote(str(self.root))}` lists them all."
        )

    def counts(self) -> dict[str, int]:
        """Usable images per class, in class order."""
        counts = {name: 0 for name in self.class_names}
        for f in self.files:
            counts[self.class_names[f.label]] += 1
        return counts

    def summary(self) -> str:
        """Per-class counts, the class order and every problem with its path and reason.

        Control characters in names are escaped (see `keras_ft.utils.text.printable`).
        """
        lines = [f"{self.root}: {len(self.files)} images in {len(self.class_names)} classes"]
        lines.append(f"class order (label 0 first): {list(self.class_names)}")
        lines += [f"  {name}: {count}" for name, count in self.counts().items()]
        lines += [f"  {p.level}: {p.path}: {p.reason}" for p in self.problems]
        if self.not_images:
            shown = list(self.not_images[:NOT_IMAGES_SHOWN])
            shown += ["..."] if len(self.not_images) > NOT_IMAGES_SHOWN else []
            lines.append(
                f"{len(self.not_images)} file(s) not an image, skipped: {', '.join(shown)}"
            )
        if self.bad_files:
            lines.append(
                f"{len(self.bad_files)} problem(s): training refuses these; fix or remove "
                "them, or pass --skip-bad (skip_bad=True) to train without them."
            )
        if self.warnings:
            lines.append(
                f"{len(self.warnings)} warning(s): reported, not fatal; the files are used."
            )
        return "\n".join(printable(line) for line in lines)


def _judge(path: str, relpath: str, label: int, record: dict, min_size: int):
    """Turn one decoding record into (an ImageFile or None, a Problem or None)."""
    if "error" in record:
        return None, Problem(path, record["reason"], kind=record["error"])
    fmt, width, height = record["format"], record["width"], record["height"]
    if width < min_size or height < min_size:
        reason = (
            f"image is {width}x{height} px, smaller than min_size={min_size} px on a side "
            "(a thumbnail or icon?); remove it or lower min_size"
        )
        return None, Problem(path, reason, kind="too_small")
    image = ImageFile(path, relpath, label, record["sha256"])
    expected = image_extensions()[Path(path).suffix.lower()]
    if SAME_FORMAT.get(fmt, fmt) == expected:
        return image, None
    note = f"content is {fmt} but the name says {expected}; read as {fmt}"
    return image, Problem(path, note, fatal=False, kind="extension_mismatch")


# ------------------------------------------------------------------ walking


def _ignored(name: str) -> bool:
    """Hidden and system files: left out silently."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_extensions()


def _run_note(path: str) -> Problem | None:
    """A note when the folder at `path` is a keras_ft run or search directory, else None."""
    marker = keras_ft_marker(Path(path))
    if marker is None:
        return None
    reason = f"a keras_ft run directory (holds {marker}): an output, not data; not scanned"
    return Problem(path, reason, fatal=False, kind="run_directory")


def _link_note(path: str, here: str, others: list[str], visited: set[str]) -> Problem | None:
    """A note when the folder at `path` must not be walked (a loop, a repeat), else None."""
    real = os.path.realpath(path)
    if within(here, real):
        reason = f"symbolic link loop: points to {real}, which contains it; not followed"
    elif any(within(real, other) for other in others):
        reason = f"points into another class folder ({real}); not followed"
    elif real in visited:
        reason = f"points to {real}, a folder already scanned; not followed again"
    else:
        visited.add(real)
        return None
    return Problem(path, reason, fatal=False, kind="link")


def _walk_class(top: str, others: list[str], visited: set[str]):
    """Candidate image paths under one class folder, following links without looping.

    Returns:
        (image paths in walk order, notes about folders not walked, paths of
        files that are not images).
    """
    paths, notes, not_images = [], [], []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        here = os.path.realpath(dirpath)
        keep = []
        for name in sorted(dirnames):
            if not name.startswith("."):
                path = os.path.join(dirpath, name)
                note = _run_note(path) or _link_note(path, here, others, visited)
                if note is None:
                    keep.append(name)
                else:
                    notes.append(note)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not _ignored(name):
                group = paths if _is_image_name(name) else not_images
                group.append(os.path.join(dirpath, name))
    return paths, notes, not_images


def _class_dirs(root: Path) -> tuple[list[str], list[Problem]]:
    """Non-hidden folders of `root`, without links that loop back to `root` or above it
    and without keras_ft run directories."""
    names, notes, real_root = [], [], os.path.realpath(root)
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        real = os.path.realpath(entry)
        run_note = _run_note(str(entry))
        if run_note is not None:
            notes.append(run_note)
        elif within(real_root, real):
            reason = f"symbolic link loop: points to {real}, which contains it; not a class"
            notes.append(Problem(str(entry), reason, fatal=False, kind="link"))
        else:
            names.append(entry.name)
    return names, notes


def list_classes(root: Path) -> tuple[str, ...]:
    """Return the class folders under `root` in natural order ("2" before "10")."""
    root = Path(root)
    if not root.is_dir():
        raise KerasFTError(
            f"Data directory '{root}' does not exist or is not a directory. "
            "Pass a folder that holds one sub-folder per class, e.g. flowers/train/<class>/*.jpg."
        )
    names, _ = _class_dirs(root)
    if not names:
        raise KerasFTError(
            f"Data directory '{root}' has no class sub-folders. Put each class's images "
            "in a sub-folder named after the class: "
            f"{root}/<class>/<image>.jpg."
        )
    _refuse_split_root(root, names)
    broken = [name for name in names if len(f"{name}x".splitlines()) > 1]
    if broken:
        raise KerasFTError(
            f"Class folder {printable(repr(broken[0]))} in '{printable(str(root))}' holds a line "
            "break: a class name is one line of labels.txt (and of every report), so each "
            "later label would shift. Rename the folder without it."
        )
    return tuple(sorted(names, key=natural_key))


def _refuse_split_root(root: Path, names: list[str]) -> None:
    """Refuse a data set's root (`root/train/<class>/...`) passed where one split belongs."""
    if not all(name.casefold() in SPLIT_NAMES for name in names):
        return
    if not any(_has_folders(root / name) for name in names):
        return  # images right inside: classes that happen to be named like splits
    train = next((name for name in names if name.casefold() in ("train", "training")), names[0])
    held_out = [name for name in names if name != train]
    fix = f"Pass the training split, whose sub-folders are the classes: '{root / train}'"
    if held_out:
        test = root / held_out[0]
        fix += f", and the held-out one as the test folder (--test-dir, test_dir=): '{test}'"
    raise KerasFTError(
        printable(
            f"Data directory '{root}' holds the split folder(s) {names} with sub-folders inside: "
            "a data set's root, not a folder of classes (it would train a classifier of "
            f"{' vs '.join(repr(name) for name in names)}). {fix}."
        )
    )


def _has_folders(path: Path) -> bool:
    """Whether `path` holds a (non-hidden) folder; False when it cannot be listed."""
    try:
        return any(entry.is_dir() and not entry.name.startswith(".") for entry in path.iterdir())
    except OSError:
        return False


def _check_same_classes(root: Path, found, class_names) -> None:
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


# ------------------------------------------------------- across files, classes


def _label_conflicts(files: list[ImageFile], class_names) -> tuple[list[ImageFile], list]:
    """Remove every copy of an image found in more than one class; one problem per copy."""
    groups = defaultdict(list)
    for f in files:
        groups[f.sha256].append(f)
    problems = {}
    for group in groups.values():
        if len({f.label for f in group}) < 2:
            continue
        for f in group:
            others = ", ".join(
                f"{g.path} (class '{class_names[g.label]}')" for g in group if g.label != f.label
            )
            reason = f"same image as {others}: a label conflict; keep one copy, in the right class"
            problems[f.path] = Problem(f.path, reason, kind="label_conflict")
    kept = [f for f in files if f.path not in problems]
    return kept, [problems[f.path] for f in files if f.path in problems]


def _leaks(files: list[ImageFile], training: ScanReport) -> list[Problem]:
    """A warning for each file whose content is also in the training folder."""
    seen = {}
    for f in training.files:
        if f.sha256:
            seen.setdefault(f.sha256, f.path)
    return [
        Problem(
            f.path,
            f"same image as training file {seen[f.sha256]} (leakage: not fatal, but the "
            "test accuracy will be optimistic; remove one copy)",
            fatal=False,
            kind="leakage",
        )
        for f in files
        if f.sha256 in seen
    ]


def scan_folder(
    root: str | os.PathLike,
    class_names: tuple[str, ...] | None = None,
    workers: int | None = None,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    training: ScanReport | None = None,
    cache: bool = True,
    quiet: bool = False,
) -> ScanReport:
    """Scan `root/<class>/<image>`, decode every candidate image and report every problem.

    Args:
        root: the folder with one sub-folder per class.
        class_names: the class order to use (e.g. the training folder's, when
            scanning a test folder). The folder's classes must be the same set.
            `None` uses `training`'s classes when given, else the folder's own
            classes in natural order ("2" before "10").
        workers: threads that read and decode files (default: 4 per CPU, at most 32).
        min_size: images narrower or shorter than this many pixels are fatal
            problems ("too_small"); at or above it they are used as they are.
        training: the training folder's report, when `root` is a test folder:
            every test image whose content is also in training is a warning
            (leakage), reported but not fatal.
        cache: reuse decoding results of files whose path, size, modification
            time, change time and inode have not changed since the last scan;
            see `cache_dir`.
        quiet: no progress on stderr (shown only for folders of at least
            `scan_cache.PROGRESS_MIN_FILES` files).

    Returns:
        A `ScanReport`; files are ordered by class, then by path.

    Example:

    >>> report = scan_folder("flowers/train")
    >>> print(report.summary())
    >>> test = scan_folder("flowers/test", training=report)
    """
    root = Path(root)
    found = list_classes(root)
    if class_names is None:
        class_names = training.class_names if training is not None else found
    _check_same_classes(root, found, class_names)
    _, problems = _class_dirs(root)
    candidates, labels, not_images = [], [], []
    real_classes = [os.path.realpath(root / name) for name in class_names]
    visited = set(real_classes)
    for label, name in enumerate(class_names):
        others = real_classes[:label] + real_classes[label + 1 :]
        paths, notes, others_files = _walk_class(str(root / name), others, visited)
        candidates += [(path, Path(path).relative_to(root).as_posix()) for path in paths]
        labels += [label] * len(paths)
        problems += notes
        not_images += [Path(path).relative_to(root).as_posix() for path in others_files]
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    records, from_cache = inspect_all(root, candidates, workers, cache, quiet)
    files = []
    for (path, relpath), label, record in zip(candidates, labels, records, strict=True):
        image, problem = _judge(path, relpath, label, record, min_size)
        files += [image] if image else []
        problems += [problem] if problem else []
    files, conflicts = _label_conflicts(files, class_names)
    problems += conflicts
    for label, name in enumerate(class_names):
        if not any(f.label == label for f in files):
            reason = "class folder has no usable images; add images or remove the folder"
            problems.append(Problem(str(root / name), reason, kind="empty_class"))
    if training is not None:
        problems += _leaks(files, training)
    return ScanReport(
        str(root), tuple(class_names), tuple(files), tuple(problems), from_cache, tuple(not_images)
    )
