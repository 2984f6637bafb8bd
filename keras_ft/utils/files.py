"""Names and helpers shared by the layers that read and write files: the cache folder,
the names keras_ft gives what it writes, and the file hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20
TRAINING_STATE = "checkpoints"  # an unfinished run's folder inside its run directory
CHECKPOINT_STATE = "state.json"  # in it: which checkpoint is the last complete one
INTERRUPTED = f"{TRAINING_STATE}/{CHECKPOINT_STATE}"  # an interrupted run's last checkpoint
# Files at the top of a folder that mark it as keras_ft's output, for `scan`: a folder
# inside the data that holds one is left out of the classes. The name alone decides
# there (leaving a folder out loses nothing); it never decides what may be deleted.
MARKERS = ("run.json", INTERRUPTED, "trials.json", "search.json")


def keras_ft_marker(folder: Path) -> str | None:
    """The first of `MARKERS` found in `folder`, or `None` (see `MARKERS`)."""
    return next((m for m in MARKERS if (Path(folder) / m).is_file()), None)


def cache_dir() -> Path:
    """keras_ft's cache folder (scans, converted weights): `$KERAS_FT_CACHE`, else
    `$XDG_CACHE_HOME/keras_ft` or `~/.cache/keras_ft`."""
    if os.environ.get("KERAS_FT_CACHE"):
        return Path(os.environ["KERAS_FT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "keras_ft"


def file_sha256(path) -> str:
    """SHA-256 of the content of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
