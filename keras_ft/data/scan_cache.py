"""The decoding records of a scan's image files: from the cache where fresh, else decoded.

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

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from stat import S_ISREG

import PIL

from keras_ft.data.decode import failure, inspect_file, not_regular
from keras_ft.utils.files import cache_dir

# Progress is shown for folders of at least this many files: on a terminal as
# one line redrawn in place, otherwise as one line every PROGRESS_EVERY files.
PROGRESS_MIN_FILES = 1000
PROGRESS_EVERY = 5000
# 2: only verdicts that are properties of the bytes (version 1 cached every decoder failure).
# 3: decoded as training decodes (PNG checksums and end marker checked; no "mode").
# 4: stamps hold the change time and inode, which every write changes.
CACHE_VERSION = 4


def within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies inside it (compare real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _valid_record(record) -> bool:
    if not isinstance(record, dict):
        return False
    if "error" in record:
        return isinstance(record["error"], str) and isinstance(record.get("reason"), str)
    types = {"format": str, "width": int, "height": int, "sha256": str}
    return all(isinstance(record.get(key), kind) for key, kind in types.items())


def _cache_file(root: Path) -> Path | None:
    """The cache file of `root`, or None when the cache folder lies inside `root`."""
    real_root = os.path.realpath(root)
    folder = cache_dir()
    if within(os.path.realpath(folder), real_root):
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


def inspect_all(root: Path, candidates, workers: int, use_cache: bool, quiet: bool):
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
            records[i], _ = inspect_file(path)
            continue
        except OSError:
            records[i] = failure("unreadable", "cannot be read (cannot stat it)")
            continue
        if not S_ISREG(stat.st_mode):  # a FIFO or device named .jpg: reading could block
            records[i] = failure("not_image", f"{not_regular(stat.st_mode)}; remove it")
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
            todo, pool.map(inspect_file, paths), strict=True
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
