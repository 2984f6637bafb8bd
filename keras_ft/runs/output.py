"""Where keras_ft writes: what may be replaced, the lock, writability.

A user's files are never lost. `--overwrite` replaces only a folder keras_ft
provably wrote: its record parses as keras_ft's own (a run's `run.json` with
its format and version keys and manifest, a search's `search.json` or
`trials.json`, an interrupted run's checkpoint state), and every file in it is
one that record lists or a checkpoint keras_ft writes. Every command that
writes refuses an output that is, holds or lies inside the data, or that lies
inside a run directory (it would break the run's manifest). Symbolic links
inside an output are refused by name, never followed. Everything here runs
before the data is read, and nothing here deletes anything.

An `--output` that is a symbolic link to a folder is followed: the run is
written into the link's target, and the link is left as it was.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from keras_ft.runs.manifest import is_hashes
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.files import INTERRUPTED, TRAINING_STATE, file_sha256

# What training writes into `checkpoints/` (see `training.Checkpoint`), partial files
# included, and the TensorBoard event files of `checkpoints/logs/`.
_CHECKPOINT_NAME = r"(state\.json|epoch-\d{4,}\.npz|phase2-start\.npz)"
_CHECKPOINT_FILE = re.compile(rf"{_CHECKPOINT_NAME}|\.{_CHECKPOINT_NAME}\.partial")
_EVENTS_FILE = re.compile(r"events\.out\.tfevents\..+")
_CHECKPOINT_KEYS = ("phase", "epoch", "file", "signature")
# What `tune` writes at the top of a search directory; its best run is `best/`.
_SEARCH_FILES = ("search.json", "trials.json", "trials.csv")
_SEARCH_KEYS = ("objective", "search", "trials_run", "best")
_TRIAL_KEYS = ("trial", "status")
_LIST_LIMIT = 5


def _read_json(path: Path):
    """`path` parsed, or None where it is not a regular file holding JSON."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def run_record(folder) -> dict | None:
    """`folder/run.json` if it is keras_ft's (format and version keys, a manifest), else None."""
    record = _read_json(Path(folder) / "run.json")
    if not isinstance(record, dict) or not isinstance(record.get("keras_ft_version"), str):
        return None
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return None
    return record if is_hashes(record.get("manifest")) else None


def _has_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds the state file of a checkpoint keras_ft wrote."""
    state = _read_json(folder / INTERRUPTED)
    return isinstance(state, dict) and all(key in state for key in _CHECKPOINT_KEYS)


def _is_search(folder: Path) -> bool:
    """Whether `folder` holds a search's `search.json`, or the `trials.json` of one under way."""
    summary = _read_json(folder / "search.json")
    if isinstance(summary, dict) and all(key in summary for key in _SEARCH_KEYS):
        return True
    rows = _read_json(folder / "trials.json")
    return (
        isinstance(rows, list)
        and len(rows) > 0
        and all(isinstance(row, dict) and all(k in row for k in _TRIAL_KEYS) for row in rows)
    )


def _written_files(folder: Path) -> tuple[str | None, set[str]]:
    """What keras_ft wrote `folder` as (or None), and the files its record lists there."""
    record = run_record(folder)
    if record is not None:
        return "run", _listed(folder, record, "")
    if _is_search(folder):
        files = {*_SEARCH_FILES, *(f".{name}.partial" for name in _SEARCH_FILES)}
        best = run_record(folder / "best")
        if best is not None and not (folder / "best").is_symlink():
            files |= _listed(folder / "best", best, "best/")
        return "search", files
    if _has_checkpoint(folder):
        return "interrupted run", set()
    return None, set()


def _listed(folder: Path, record: dict, prefix: str) -> set[str]:
    """`run.json` and the files of `record`'s manifest whose content is still the one it
    hashed (a file edited since, or put in its place, is not keras_ft's)."""
    files = {prefix + "run.json"}
    for relpath, digest in record["manifest"].items():
        path = folder / relpath
        try:
            if stat.S_ISREG(os.lstat(path).st_mode) and file_sha256(path) == digest:
                files.add(prefix + relpath)
        except OSError:
            pass
    return files


def keras_ft_contents(folder) -> tuple[str | None, list[str]]:
    """What keras_ft wrote `folder` as, and the entries in it that keras_ft did not write.

    Args:
        folder: an existing folder.

    Returns:
        `(kind, foreign)`: kind is `"run"`, `"search"`, `"interrupted run"`
        or `None` (not keras_ft's); foreign lists the relative paths, sorted,
        of every file, folder or symbolic link that keras_ft did not write
        (folders end in `/`; a folder's contents are not listed).
    """
    folder = Path(folder)
    kind, files = _written_files(folder)
    folders = {path.rsplit("/", n)[0] for path in files for n in range(1, path.count("/") + 1)}
    folders |= {TRAINING_STATE, "saved_model/assets", "best/saved_model/assets"}
    foreign = []
    for parent, dirs, names in os.walk(folder):  # never descends into a linked folder
        base = Path(parent).relative_to(folder).as_posix() + "/"
        base = "" if base == "./" else base
        kept = []
        for name in sorted(dirs + names):
            relpath, path = base + name, Path(parent) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                foreign.append(f"{relpath} (a symbolic link)")
            elif stat.S_ISDIR(mode):
                if relpath in folders or relpath.startswith(f"{TRAINING_STATE}/logs"):
                    kept.append(name)
                else:
                    foreign.append(relpath + "/")
            elif not stat.S_ISREG(mode) or not _written(relpath, files):
                foreign.append(relpath)
        dirs[:] = kept
    return kind, sorted(foreign)


def _written(relpath: str, files: set[str]) -> bool:
    """Whether keras_ft writes the file at `relpath` (`files`: what the record lists)."""
    parts = relpath.split("/")
    if parts[0] != TRAINING_STATE:
        return relpath in files
    if len(parts) == 2:
        return _CHECKPOINT_FILE.fullmatch(parts[1]) is not None
    return parts[1] == "logs" and _EVENTS_FILE.fullmatch(parts[-1]) is not None


def _names(paths: list[str], limit: int = _LIST_LIMIT) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def _listing(folder: Path) -> str:
    return _names(sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()))


def _related(output: Path, other: Path) -> str | None:
    """How `output` overlaps `other` ('is', 'lies inside', 'contains'), or `None`."""
    if output == other:
        return "is"
    if other in output.parents:
        return "lies inside"
    if output in other.parents:
        return "contains"
    return None


def _check_writable(output: Path, flag: str) -> None:
    """Refuse an output whose nearest existing folder cannot take a new file."""
    ancestor = output
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor == output and not output.is_dir():  # an existing file: replaced in its folder
        ancestor = output.parent
    elif ancestor != output and not ancestor.is_dir():
        raise KerasFTError(
            f"Cannot write {flag} '{output}': '{ancestor}' is a file, not a folder. "
            f"Choose {_article(flag)} in a folder you can write."
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".keras_ft_probe_", dir=ancestor)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise KerasFTError(
            f"Cannot write {flag} '{output}': creating a file in '{ancestor}' failed "
            f"({error.strerror or error}). Choose {_article(flag)} on a writable filesystem."
        ) from None


def _article(flag: str) -> str:
    return f"an {flag}" if flag.lstrip("-")[:1].lower() in "aeiou" else f"a {flag}"


def write_failed(output, flag: str, error: OSError) -> KerasFTError:
    """The error for a write into `output` that failed part-way: a full disk, a read-only one.

    Args:
        output: the output as the user named it.
        flag: how the user named it (`"--output"`, `"OUTPUT"`).
        error: the failure.
    """
    return KerasFTError(
        f"Cannot write {flag} '{output}': {error.strerror or error}. Free some space, or choose "
        f"{_article(flag)} on a writable filesystem."
    )


def check_destination(
    output, flag: str = "--output", data_dirs=(), run_dirs=(), replaces: bool = False
) -> Path:
    """Refuse, before any work, an output that would write onto the data or into a run.

    Every command that writes calls this first. The output may not be or lie
    inside a data folder or a run directory (a run's files would no longer
    match its manifest), and its nearest existing folder must be writable.
    Paths are compared resolved.

    Args:
        output: the file or folder the command will write.
        flag: how the user named it, for messages (`"--output"`, `"OUTPUT"`).
        data_dirs: the folders of images the command reads (None entries skipped).
        run_dirs: the run directories the command reads.
        replaces: the command replaces `output` as a whole (`train`, `tune`):
            it may then not contain a data folder either, and may itself be a
            run; `check_output` checks that it is writable.

    Returns:
        The resolved path.
    """
    given = Path(output)
    path = Path(os.path.realpath(given))
    refused = ("is", "lies inside", "contains") if replaces else ("is", "lies inside")
    for folder in data_dirs:
        relation = folder is not None and _related(path, Path(os.path.realpath(folder)))
        if relation in refused:
            raise KerasFTError(
                f"{flag} '{given}' {relation} the data folder '{folder}': keras_ft would "
                f"write into (or replace) your images. Choose {_article(flag)} outside the data."
            )
    runs = [Path(os.path.realpath(folder)) for folder in run_dirs]
    around = path.parents if replaces else (path, *path.parents)
    runs += [p for p in around if run_record(p) is not None]
    for run in runs:
        relation = _related(path, run)
        if relation in ("is", "lies inside"):
            raise KerasFTError(
                f"{flag} '{given}' {relation} the run directory '{run}': writing there would "
                "change the run, which would then fail its own verification. Choose "
                f"{_article(flag)} outside it."
            )
    if not replaces:  # `check_output` checks last, once it knows the folder may be written
        _check_writable(path, flag)
    return path


def check_output_file(output, suffix: str, data_dirs=(), overwrite: bool = False) -> Path:
    """Check a file output (`lr-find --output PLOT.png`) before any work; return it resolved.

    Args:
        output: the file to write.
        suffix: the file type it must have (`".png"`).
        data_dirs: as for `check_destination`.
        overwrite: an existing file of that type may be replaced.
    """
    given = Path(output)
    path = check_destination(given, "--output", data_dirs)
    if path.is_dir():
        raise KerasFTError(
            f"--output '{given}' is a folder; it takes the path of a {suffix} file to write. "
            f"Pass e.g. --output '{given / ('lr_find' + suffix)}'."
        )
    if path.suffix.lower() != suffix:
        raise KerasFTError(
            f"Invalid --output '{given}': expected a file name ending in {suffix}, received "
            f"'{path.suffix or 'no extension'}'. Pass e.g. --output lr_find{suffix}."
        )
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        raise KerasFTError(f"--output '{given}' is not a regular file. Choose another --output.")
    if path.exists() and not overwrite:
        raise KerasFTError(
            f"'{given}' already exists. Choose another --output, or pass --overwrite."
        )
    return path


def check_output(
    output, data_dirs=(), overwrite: bool = False, resume: bool = False
) -> tuple[Path, str]:
    """Check the `--output` folder of `train` or `tune`; return it resolved, and its state.

    Args:
        output: the `--output` folder.
        data_dirs: the training and test folders (see `check_destination`).
        overwrite: replacing is allowed, but only for a folder keras_ft wrote
            that holds nothing else (see `keras_ft_contents`).
        resume: the output must hold an interrupted run (a checkpoint, no
            `run.json`) and nothing else.

    Returns:
        `(resolved path, state)`, the state one of `"new"` (absent or an empty
        folder), `"replace"` (a keras_ft folder, `overwrite` given) or
        `"resume"`.
    """
    given = Path(output)
    path = check_destination(given, "--output", data_dirs, replaces=True)
    if path.exists() and not path.is_dir():
        raise KerasFTError(
            f"--output '{given}' is an existing file, not a folder. Choose another --output."
        )
    if os.path.ismount(path):
        raise KerasFTError(
            f"--output '{given}' is a mount point. keras_ft writes a run beside its folder and "
            "renames it into place when training ends, which cannot be done to a mount point. "
            f"Choose a folder inside it, e.g. --output '{given / 'run'}'."
        )
    empty = not path.is_dir() or not any(path.iterdir())
    kind, foreign = (None, []) if empty else keras_ft_contents(path)
    if kind is None and not empty:
        raise KerasFTError(
            f"--output '{given}' is a folder keras_ft did not write (it holds {_listing(path)}); "
            "--overwrite only replaces a keras_ft run or search directory. Choose a new or "
            "empty --output."
        )
    if foreign:
        raise KerasFTError(
            f"--output '{given}' holds files keras_ft did not write beside its {kind}: "
            f"{_names(foreign)}. keras_ft never replaces them: move them out of the folder, "
            "or choose another --output."
        )
    if resume:
        if kind != "interrupted run":
            state = f"is a finished {kind}" if kind else "holds no checkpoint"
            raise KerasFTError(f"Cannot --resume: '{given}' {state}. Run without --resume.")
        _check_writable(path, "--output")
        return path, "resume"
    if kind is None:
        _check_writable(path, "--output")
        return path, "new"
    if not overwrite:
        hint = (
            " It holds an interrupted run: pass --resume to finish it."
            if kind == ("interrupted run")
            else ""
        )
        raise KerasFTError(
            f"Run directory '{given}' already exists.{hint} Choose another "
            "--output, or pass --overwrite to replace it."
        )
    _check_writable(path, "--output")
    return path, "replace"


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
            handle = self._open()
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

    def _open(self):
        """Open (or create) the lock file, never through a symbolic link."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise KerasFTError(
                f"The lock file '{self.path}' of --output '{self.output}' is a symbolic link; "
                "keras_ft never writes through a link. Remove the link, or choose another "
                "--output."
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise KerasFTError(
                f"The lock file '{self.path}' of --output '{self.output}' is not a regular file. "
                "Remove it, or choose another --output."
            )
        return os.fdopen(fd, "r+")

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
