"""Walk an image folder: the class list, the file list, and every file that cannot be used.

A folder is `root/<class>/<image>`. A file is an image candidate when its
extension is one of a format Pillow decodes (`image_extensions`: JPEG, PNG,
WebP, TIFF, BMP, GIF, PPM ...). Each candidate is read and decoded before any
model is built, so that one corrupt file is reported by path up front instead
of killing a tf.data epoch hours later.

One decoder: the scan, training, evaluation and prediction all read a file with
`read_regular_file` and decode it with Pillow through `open_image` (which first
checks the file's own checksums: a PNG cut short or with a bad CRC is refused,
not decoded leniently); the readers then convert it with `pil_to_rgb`, which
converts every mode Pillow opens a file in. Whatever the scan accepts, they
read, to the same pixels.

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

Size limit: an image of more than twice Pillow's `Image.MAX_IMAGE_PIXELS`
(about 179 megapixels by default) is a "too_large" problem, as Pillow refuses
to decode it (a decompression bomb). Between one and two times the limit it is
decoded and used, and Pillow's `DecompressionBombWarning` is left as Pillow
shows it.

Decoding verdicts are cached by (path, size, modification time, change time,
inode) in one JSON file per root folder under `$KERAS_FT_CACHE` (default
`~/.cache/keras_ft`), never inside the data folder, so a second scan of an
unchanged folder only lists and stats it. The change time moves on every write
and no program can set it back (`cp -p` and `rsync -a` keep size and
modification time, not it), so a rewritten file is decoded again. What never
goes through the file system (bit rot on the disk) leaves every stamp as it
was: `cache=False` (`--no-cache`) decodes every file again.

Only verdicts that are properties of the file's bytes are cached: a usable
image, an empty file, content no Pillow format recognises, a truncated or
damaged file, a decoder error only bad content causes. A failure to read the
file, a lack of memory, a decoder that is not available, the size limit (a
setting) or any other error may pass without the file changing, and is
checked again at the next scan.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import json
import os
import re
import struct
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError
from PIL.ImageFile import StubImageFile

from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.files import cache_dir, keras_ft_marker
from keras_ft.utils.text import printable

IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
# How many names of files that are not images the summary shows.
NOT_IMAGES_SHOWN = 5
DEFAULT_MIN_SIZE = 8
# Progress is shown for folders of at least this many files: on a terminal as
# one line redrawn in place, otherwise as one line every PROGRESS_EVERY files.
PROGRESS_MIN_FILES = 1000
PROGRESS_EVERY = 5000
# 2: only verdicts that are properties of the bytes (version 1 cached every decoder failure).
# 3: decoded as training decodes (PNG checksums and end marker checked; no "mode").
# 4: stamps hold the change time and inode, which every write changes.
CACHE_VERSION = 4
WARNING_KINDS = frozenset({"leakage"})
# Decoder errors only the bytes can cause; any other (an OSError such as "decoder
# jpeg2k not available", MemoryError, a bug) may pass without the file changing.
_CONTENT_ERRORS = (SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError)
# Formats that are a kind of what their extension says (a camera's multi-picture JPEG).
_SAME_FORMAT = {"MPO": "JPEG"}
# Formats Pillow identifies but cannot decode (MPEG: video).
_NOT_DECODED = frozenset({"MPEG"})


@functools.cache
def image_extensions() -> dict[str, str]:
    """The extensions of image candidates (lower case, with the dot) and the format each names.

    Every extension Pillow registers for a format it can open and decode
    (`.jpg`, `.png`, `.webp`, `.tif`, `.tiff`, `.bmp`, `.gif`, `.ppm` ...); not
    the formats it can only write (PDF) or only identify (stubs such as HDF5,
    and MPEG video).
    """

    def decodes(fmt: str) -> bool:
        if fmt in _SAME_FORMAT:
            return True
        factory = Image.OPEN.get(fmt, (None,))[0]
        stub = isinstance(factory, type) and issubclass(factory, StubImageFile)
        return factory is not None and not stub and fmt not in _NOT_DECODED

    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if decodes(fmt)}


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


# ------------------------------------------------ reading and decoding a file


def _not_regular(mode: int) -> str:
    """Why the file of `mode` (not a regular file) is not read."""
    kinds = (
        (S_ISDIR, "a directory"),
        (S_ISFIFO, "a named pipe (FIFO)"),
        (S_ISSOCK, "a socket"),
        (S_ISCHR, "a character device"),
        (S_ISBLK, "a block device"),
    )
    what = next((name for test, name in kinds if test(mode)), "another kind of file")
    return f"not a regular file but {what}, which a read could wait on forever"


def read_regular_file(path) -> bytes:
    """The bytes of the regular file at `path` (a symbolic link to one is followed).

    The file is opened without waiting (opening a named pipe to read otherwise
    waits for a writer, forever) and checked once open, so a named pipe,
    device, socket or directory is refused before any read, even one put in
    place of a file after an earlier check.

    Raises:
        OSError: `path` is not a regular file, or it cannot be opened or read.
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not S_ISREG(mode):
            raise OSError(f"{_not_regular(mode)}; pass the path of an image file")
        with open(descriptor, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(descriptor)


def open_image(data: bytes) -> Image.Image:
    """Open encoded image bytes with Pillow, after checking the file's own checksums.

    Pillow's decoder skips the CRC of a PNG's image data and does not need its
    end marker, so a damaged or cut PNG would decode to whatever the bytes
    give; `Image.verify` reads the whole file for both first (other formats
    have nothing to verify).

    Raises:
        UnidentifiedImageError: saying what the content is instead (text, a web page ...).
        What else Pillow raises for bytes it cannot use (`OSError` "truncated
        PNG file", `SyntaxError` "bad header checksum" ...).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except UnidentifiedImageError:  # its own message names a BytesIO object
        raise UnidentifiedImageError(_not_an_image(data)) from None
    return Image.open(io.BytesIO(data))


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Return a Pillow image as an `(H, W, 3)` uint8 RGB array, whatever its mode.

    16-bit images are scaled to 8 bits (not clipped), CMYK is converted, the
    alpha channel is dropped (not composited on a background), and a GIF
    gives its first frame.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode == "F":
        array = np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# ----------------------------------------------------------------- one file


def _failure(kind: str, reason: str) -> dict:
    return {"error": kind, "reason": reason}


def _decode(data: bytes) -> tuple[str, int, int]:
    """Fully decode encoded image bytes as training does; return (format, width, height)."""
    with open_image(data) as image:
        image.load()
        return image.format, image.width, image.height


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    try:  # an incremental decoder accepts a character cut at the end of `head`
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def _not_an_image(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if not data:
        what = "empty (0 bytes)"
    elif head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        what = "a web page (HTML/XML), e.g. an error page saved under an image name"
    elif _looks_like_text(data):
        what = "text"
    else:
        what = "in no image format Pillow knows"
    return f"not an image: the content is {what}"


def _inspect(path: str) -> tuple[dict, bool]:
    """Read and fully decode one file.

    Returns:
        (record, lasting). The record is JSON-serialisable: `{"error": kind,
        "reason": text}` when the file cannot be used, else its format,
        width, height and SHA-256. `lasting` says whether the record is a
        property of the file's bytes, which only a change to the file can
        change: only then may it be cached.
    """
    try:
        data = read_regular_file(path)
    except PermissionError:
        reason = "cannot be read (permission denied); fix with chmod a+r"
        return _failure("unreadable", reason), False
    except FileNotFoundError:
        reason = "cannot be read: a broken symbolic link or a vanished file"
        return _failure("missing", reason), False
    except OSError as error:
        return _failure("unreadable", f"cannot be read ({error.strerror or error})"), False
    if not data:
        return _failure("empty", "empty file (0 bytes)"), True
    try:
        fmt, width, height = _decode(data)
    except UnidentifiedImageError as error:
        return _failure("not_image", str(error)), True
    except Image.DecompressionBombError as error:  # the limit is a setting: not lasting
        return _failure("too_large", f"too large to decode safely ({error})"), False
    except Exception as error:  # any decoder failure at all means the file cannot be used
        text = str(error) or type(error).__name__
        if "truncated" in text.lower():
            return _failure("truncated", f"truncated, e.g. an interrupted download ({text})"), True
        if "checksum" in text.lower():
            reason = f"damaged: a checksum does not match the content ({text}); replace it"
            return _failure("damaged", reason), True
        reason = f"cannot be decoded ({text})"
        return _failure("undecodable", reason), isinstance(error, _CONTENT_ERRORS)
    digest = hashlib.sha256(data).hexdigest()
    record = {"format": fmt, "width": width, "height": height, "sha256": digest}
    return record, True


def _valid_record(record) -> bool:
    if not isinstance(record, dict):
        return False
    if "error" in record:
        return isinstance(record["error"], str) and isinstance(record.get("reason"), str)
    types = {"format": str, "width": int, "height": int, "sha256": str}
    return all(isinstance(record.get(key), kind) for key, kind in types.items())


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
    if _SAME_FORMAT.get(fmt, fmt) == expected:
        return image, None
    note = f"content is {fmt} but the name says {expected}; read as {fmt}"
    return image, Problem(path, note, fatal=False, kind="extension_mismatch")


# ------------------------------------------------------------------ walking


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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
    if _within(here, real):
        reason = f"symbolic link loop: points to {real}, which contains it; not followed"
    elif any(_within(real, other) for other in others):
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
        elif _within(real_root, real):
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
    broken = [name for name in names if len(f"{name}x".splitlines()) > 1]
    if broken:
        raise KerasFTError(
            f"Class folder {printable(repr(broken[0]))} in '{printable(str(root))}' holds a line "
            "break: a class name is one line of labels.txt (and of every report), so each "
            "later label would shift. Rename the folder without it."
        )
    return tuple(sorted(names, key=natural_key))


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


# -------------------------------------------------------------------- cache


def _cache_file(root: Path) -> Path | None:
    """The cache file of `root`, or None when the cache folder lies inside `root`."""
    real_root = os.path.realpath(root)
    folder = cache_dir()
    if _within(os.path.realpath(folder), real_root):
        return None
    return folder / f"scan-{hashlib.sha256(real_root.encode()).hexdigest()[:24]}.json"


def _load_cache(path: Path | None) -> dict:
    """Cached entries by relative path; an unreadable, corrupt or outdated file gives {}."""
    if path is None:
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(payload, dict)
        or payload.get("version") != CACHE_VERSION
        or payload.get("pillow") != PIL.__version__
        or not isinstance(payload.get("entries"), dict)
    ):
        return {}
    return payload["entries"]


def _save_cache(path: Path | None, root: Path, entries: dict) -> None:
    if path is None:
        return
    payload = {"version": CACHE_VERSION, "pillow": PIL.__version__, "root": str(root)}
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(payload | {"entries": entries}), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:  # a cache that cannot be written only costs time on the next scan
        temporary.unlink(missing_ok=True)


def _cached_record(entry, stamp: list[int], path: str) -> dict | None:
    if (
        isinstance(entry, dict)
        and entry.get("stamp") == stamp
        and _valid_record(entry.get("record"))
        and os.access(path, os.R_OK)
    ):
        return entry["record"]
    return None


# ----------------------------------------------------------------- progress


class _Progress:
    """A files-done counter on stderr for large folders; silent when `quiet`."""

    def __init__(self, label: str, total: int, quiet: bool):
        self.label, self.total, self.done = label, total, 0
        self.enabled = not quiet and total >= PROGRESS_MIN_FILES
        self.tty = self.enabled and sys.stderr.isatty()
        self.started = self.drawn = time.monotonic()

    def _line(self) -> str:
        return f"scanning {self.label}: {self.done}/{self.total} files"

    def advance(self, count: int = 1) -> None:
        before, self.done = self.done, self.done + count
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self.drawn >= 0.1:
                self.drawn = now
                sys.stderr.write("\r" + self._line())
                sys.stderr.flush()
        elif self.done // PROGRESS_EVERY > before // PROGRESS_EVERY:
            print(self._line(), file=sys.stderr, flush=True)

    def finish(self, from_cache: int) -> None:
        if self.enabled:
            seconds = time.monotonic() - self.started
            line = f"scanned {self.label}: {self.total} files in {seconds:.1f} s"
            line += f" ({from_cache} from the cache)"
            print(("\r" + line.ljust(len(self._line()))) if self.tty else line, file=sys.stderr)


def _inspect_all(root: Path, candidates, workers: int, use_cache: bool, quiet: bool):
    """Decoding records of `candidates` ((path, relpath) pairs), from the cache where fresh.

    Returns:
        (records in candidate order, how many came from the cache).
    """
    cache_path = _cache_file(root) if use_cache else None
    cached = _load_cache(cache_path)
    records, todo, entries = [None] * len(candidates), [], {}
    for i, (path, relpath) in enumerate(candidates):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            records[i], _ = _inspect(path)
            continue
        except OSError:
            records[i] = _failure("unreadable", "cannot be read (cannot stat it)")
            continue
        if not S_ISREG(stat.st_mode):  # a FIFO or device named .jpg: reading could block
            records[i] = _failure("not_image", f"{_not_regular(stat.st_mode)}; remove it")
            continue
        # The change time moves on any write, and nothing sets it back (as `cp -p` does mtime).
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        records[i] = _cached_record(cached.get(relpath), stamp, path)
        if records[i] is None:
            todo.append((i, relpath, stamp))
        else:
            entries[relpath] = cached[relpath]
    progress = _Progress(str(root), len(candidates), quiet)
    progress.advance(len(candidates) - len(todo))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        paths = [candidates[i][0] for i, _, _ in todo]
        for (i, relpath, stamp), (record, lasting) in zip(
            todo, pool.map(_inspect, paths), strict=True
        ):
            records[i] = record
            if lasting:
                entries[relpath] = {"stamp": stamp, "record": record}
            progress.advance()
    from_cache = len(candidates) - len(todo)
    progress.finish(from_cache)
    if use_cache and (todo or len(entries) != len(cached)):
        _save_cache(cache_path, root, entries)
    return records, from_cache


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
            `PROGRESS_MIN_FILES` files).

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
    records, from_cache = _inspect_all(root, candidates, workers, cache, quiet)
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
