"""The output folder of `train` and `tune`: what may be replaced, the lock, writability.

A user's files are never lost to `--overwrite`: only a folder that keras_ft
wrote (a run or a search directory) may be replaced, and an output that is,
holds or lies inside the data is refused outright. Everything here runs before
the data is read, and nothing here deletes anything.

An `--output` that is a symbolic link to a folder is followed: the run is
written into the link's target, and the link is left as it was.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path

from keras_ft.errors import KerasFTError
from keras_ft.manifest import CHECKPOINT_STATE, TRAINING_STATE

INTERRUPTED = f"{TRAINING_STATE}/{CHECKPOINT_STATE}"  # an interrupted run's last checkpoint
# Files at the top of a folder that mark it as keras_ft's own output.
MARKERS = ("run.json", INTERRUPTED, "trials.json", "search.json")


def keras_ft_marker(folder: Path) -> str | None:
    """The first of `MARKERS` found in `folder`, or `None` for any other folder."""
    return next((m for m in MARKERS if (folder / m).is_file()), None)


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _related(output: Path, data: Path) -> str | None:
    """How `output` overlaps `data` ('is', 'lies inside', 'contains'), or `None`."""
    if output == data:
        return "is"
    if data in output.parents:
        return "lies inside"
    if output in data.parents:
        return "contains"
    return None


def _check_writable(output: Path) -> None:
    """Refuse an output whose nearest existing folder cannot take a new file."""
    ancestor = output
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor != output and not ancestor.is_dir():
        raise KerasFTError(
            f"Cannot write --output '{output}': '{ancestor}' is a file, not a folder. "
            "Choose an --output in a folder you can write."
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".keras_ft_probe_", dir=ancestor)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise KerasFTError(
            f"Cannot write --output '{output}': creating a file in '{ancestor}' failed "
            f"({error.strerror or error}). Choose an --output on a writable filesystem."
        ) from None


def check_output(
    output, data_dirs=(), overwrite: bool = False, resume: bool = False
) -> tuple[Path, str]:
    """Check `output` before anything is read or written; return it resolved, and its state.

    Args:
        output: the `--output` folder of `train` or `tune`.
        data_dirs: the training and test folders; an output that is, contains
            or lies inside one of them is refused, whatever `overwrite` says.
        overwrite: replacing is allowed, but only for a folder keras_ft wrote
            (it holds one of `MARKERS`).
        resume: the output must hold an interrupted run (`checkpoints/state.json`
            and no `run.json`).

    Returns:
        `(resolved path, state)`, the state one of `"new"` (absent or an empty
        folder), `"replace"` (a keras_ft folder, `overwrite` given) or
        `"resume"`.
    """
    given = Path(output)
    path = Path(os.path.realpath(given))
    for folder in data_dirs:
        if folder is None:
            continue
        relation = _related(path, Path(os.path.realpath(folder)))
        if relation:
            raise KerasFTError(
                f"--output '{given}' {relation} the data folder '{folder}': keras_ft would "
                "write into (or replace) your images. Choose an --output outside the data."
            )
    if path.exists() and not path.is_dir():
        raise KerasFTError(
            f"--output '{given}' is an existing file, not a folder. Choose another --output."
        )
    marker = keras_ft_marker(path) if path.is_dir() else None
    interrupted = marker == INTERRUPTED
    if resume:
        if not interrupted:
            state = "is a finished run" if marker == "run.json" else "holds no checkpoint"
            raise KerasFTError(f"Cannot --resume: '{given}' {state}. Run without --resume.")
        _check_writable(path)
        return path, "resume"
    if path.is_dir() and any(path.iterdir()):
        if marker is None:
            raise KerasFTError(
                f"--output '{given}' is a folder keras_ft did not write (it holds "
                f"{_listing(path)}); --overwrite only replaces a keras_ft run or search "
                "directory. Choose a new or empty --output."
            )
        if not overwrite:
            hint = (
                " It holds an interrupted run: pass --resume to finish it." if interrupted else ""
            )
            raise KerasFTError(
                f"Run directory '{given}' already exists.{hint} Choose another "
                "--output, or pass --overwrite to replace it."
            )
        _check_writable(path)
        return path, "replace"
    _check_writable(path)
    return path, "new"


class OutputLock:
    """An exclusive lock on an output folder, held for a whole `train` or `tune`.

    The lock is `fcntl.flock` on a hidden sibling file `.NAME.lock` holding
    the owner's process id. The kernel drops it when the process ends, however
    it ends, so a run killed with SIGKILL never blocks the next one (or its
    `--resume`). The file is removed when the lock is released.

    Example:

    >>> with OutputLock("runs/flowers"):
    ...     ...  # train and save
    """

    def __init__(self, output):
        output = Path(os.path.realpath(output))
        self.path = output.parent / f".{output.name}.lock"
        self.output = output
        self._handle = None
        self._made: list[Path] = []  # parent folders the lock created, removed with it

    def acquire(self) -> None:
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise KerasFTError(
                    f"--output '{self.output}' is in use by another keras-ft run (process "
                    f"{owner}, lock file '{self.path}'). Wait for it to finish, or choose "
                    "another --output."
                ) from None
            # The holder before us may have removed the file after we opened it: lock again.
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self._handle.close()  # closing drops the flock
        self._handle = None
        for folder in self._made:  # deepest first; a folder the run wrote into stays
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
