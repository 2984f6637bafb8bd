"""The output folder of `train` and `tune`: what may be replaced.

A user's files are never lost to `--overwrite`: only a folder that keras_ft
wrote (a run or a search directory) may be replaced, and an output that is,
holds or lies inside the data is refused outright. Everything here runs before
the data is read, and nothing here deletes anything.

An `--output` that is a symbolic link to a folder is followed: the run is
written into the link's target, and the link is left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from keras_ft.errors import KerasFTError

# Files at the top of a folder that mark it as keras_ft's own output.
MARKERS = ("run.json", "checkpoints/state.json", "trials.json", "search.json")


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
    interrupted = marker == "checkpoints/state.json"
    if resume:
        if not interrupted:
            state = "is a finished run" if marker == "run.json" else "holds no checkpoint"
            raise KerasFTError(f"Cannot --resume: '{given}' {state}. Run without --resume.")
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
        return path, "replace"
    return path, "new"
