"""Reading and decoding one image file with Pillow, as the scan and training both do.

One decoder: the scan, training, evaluation and prediction all read a file with
`read_regular_file` and decode it with Pillow through `open_image` (which first
checks the file's own checksums: a PNG cut short or with a bad CRC is refused,
not decoded leniently); the readers then convert it with `pil_to_rgb`, which
converts every mode Pillow opens a file in. Whatever the scan accepts, they
read, to the same pixels.

Size limit: an image of more than twice Pillow's `Image.MAX_IMAGE_PIXELS`
(about 179 megapixels by default) is a "too_large" problem, as Pillow refuses
to decode it (a decompression bomb). Between one and two times the limit it is
decoded and used, and Pillow's `DecompressionBombWarning` is left as Pillow
shows it.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import os
import struct
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.ImageFile import StubImageFile

# Decoder errors only the bytes can cause; any other (an OSError such as "decoder
# jpeg2k not available", MemoryError, a bug) may pass without the file changing.
_CONTENT_ERRORS = (SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError)
# Formats that are a kind of what their extension says (a camera's multi-picture JPEG).
SAME_FORMAT = {"MPO": "JPEG"}
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
        if fmt in SAME_FORMAT:
            return True
        factory = Image.OPEN.get(fmt, (None,))[0]
        stub = isinstance(factory, type) and issubclass(factory, StubImageFile)
        return factory is not None and not stub and fmt not in _NOT_DECODED

    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if decodes(fmt)}


def not_regular(mode: int) -> str:
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
            raise OSError(f"{not_regular(mode)}; pass the path of an image file")
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


def failure(kind: str, reason: str) -> dict:
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


def inspect_file(path: str) -> tuple[dict, bool]:
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
        return failure("unreadable", reason), False
    except FileNotFoundError:
        reason = "cannot be read: a broken symbolic link or a vanished file"
        return failure("missing", reason), False
    except OSError as error:
        return failure("unreadable", f"cannot be read ({error.strerror or error})"), False
    if not data:
        return failure("empty", "empty file (0 bytes)"), True
    try:
        fmt, width, height = _decode(data)
    except UnidentifiedImageError as error:
        return failure("not_image", str(error)), True
    except Image.DecompressionBombError as error:  # the limit is a setting: not lasting
        return failure("too_large", f"too large to decode safely ({error})"), False
    except Exception as error:  # any decoder failure at all means the file cannot be used
        text = str(error) or type(error).__name__
        if "truncated" in text.lower():
            return failure("truncated", f"truncated, e.g. an interrupted download ({text})"), True
        if "checksum" in text.lower():
            reason = f"damaged: a checksum does not match the content ({text}); replace it"
            return failure("damaged", reason), True
        reason = f"cannot be decoded ({text})"
        return failure("undecodable", reason), isinstance(error, _CONTENT_ERRORS)
    digest = hashlib.sha256(data).hexdigest()
    record = {"format": fmt, "width": width, "height": height, "sha256": digest}
    return record, True
