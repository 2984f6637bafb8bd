"""Shared by the examples: download, unpack, a seeded held-out split, the common flags.

This is example plumbing, not part of keras_ft: each example trains with the
public API only (`keras_ft.ImageFolder`, `keras_ft.FineTuner`, `keras_ft.load`).
Every dataset is written once as an image folder,

    DATA_DIR/train/<class>/<image>
    DATA_DIR/test/<class>/<image>

atomically (into a hidden sibling, renamed into place), so an interrupted
download or unpacking never leaves a half-written folder, and a second run
finds the folder and skips the download. A `DATA_DIR` of class folders,
`DATA_DIR/<class>/<image>` (a local copy, say), is trained on as it is.

Offline, a download fails: the example then says in one line what it needs
and how to point it at local copies, and exits with code 2, as it does for
any input keras_ft refuses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

import numpy as np


def as_url(source: str) -> str:
    """A URL as given, or a local archive path as a `file://` URL."""
    return source if "://" in source else Path(source).resolve().as_uri()


def fetch(url: str, cache_dir=None) -> Path:
    """Download `url` once with `keras.utils.get_file` and return the local file.

    Args:
        url: an `https://` or `file://` URL, or a local path.
        cache_dir: where downloads are kept (`CACHE_DIR/datasets/`); `None`:
            Keras's default, `~/.keras`.
    """
    import keras

    url = as_url(url)
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if cache_dir is not None:  # get_file falls back to /tmp/.keras for a missing folder
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_dir = str(cache_dir)
    return Path(keras.utils.get_file(name, origin=url, cache_dir=cache_dir))


def unpack(archive, destination) -> Path:
    """Extract a `.tgz`/`.tar.gz`/`.tar` or `.zip` archive into `destination`.

    Members that would land outside `destination` (absolute paths, `..`,
    links pointing out) are refused.
    """
    archive, destination = Path(archive), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            root = destination.resolve()
            for member in bundle.namelist():
                if not (destination / member).resolve().is_relative_to(root):
                    raise ValueError(f"'{archive}' holds a path outside the folder: {member}")
            bundle.extractall(destination)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            if hasattr(tarfile, "data_filter"):
                bundle.extractall(destination, filter="data")
            else:  # Python < 3.11.4: check the member paths ourselves
                root = destination.resolve()
                for member in bundle.getmembers():
                    inside = (destination / member.name).resolve().is_relative_to(root)
                    if not inside or member.issym() or member.islnk():
                        raise ValueError(f"'{archive}' holds an unsafe member: {member.name}")
                bundle.extractall(destination)
    else:
        raise ValueError(f"'{archive}' is neither a zip nor a tar archive.")
    return destination


def find_folder(root, name: str) -> Path:
    """The folder called `name` at or below `root` (archives differ in their top level)."""
    root = Path(root)
    if root.name == name:
        return root
    found = sorted(p for p in root.rglob(name) if p.is_dir())
    if not found:
        raise FileNotFoundError(
            f"No '{name}' folder in the unpacked archive at '{root}': is it the right archive?"
        )
    return found[0]


def is_prepared(data_dir) -> bool:
    """Whether `data_dir` already holds `train/` and `test/` (written by `staged`)."""
    return (Path(data_dir) / "train").is_dir() and (Path(data_dir) / "test").is_dir()


def image_folders(data_dir, prepare) -> tuple[Path, Path | None]:
    """The training folder and the test folder (or `None`) to train on.

    A `data_dir` that holds class folders of its own (`<class>/<image>`, a
    local copy of the data set) is the training folder, with no test folder;
    otherwise `prepare()` returns a folder with `train/` and `test/`,
    downloading the data set into it unless they are there already.
    """
    data_dir = Path(data_dir)
    if (
        not is_prepared(data_dir)
        and data_dir.is_dir()
        and any(p.is_dir() for p in data_dir.iterdir())
    ):
        return data_dir, None
    prepared = Path(prepare())
    return prepared / "train", prepared / "test"


@contextlib.contextmanager
def staged(data_dir):
    """Yield a hidden sibling of `data_dir` to write into; rename it into place on success."""
    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = data_dir.parent / f".{data_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if data_dir.exists():  # e.g. an empty folder the user made for it
            if any(data_dir.iterdir()):
                raise FileExistsError(f"'{data_dir}' exists and is not a prepared dataset.")
            data_dir.rmdir()
        os.replace(staging, data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def holdout(files_by_class: dict[str, list[Path]], test_fraction: float, seed: int) -> dict:
    """Split each class's files into train and test with a seeded permutation.

    Each class keeps `round(test_fraction * n)` files for testing (at least one
    when it has two or more), so the test set is stratified. The same files and
    seed always give the same split.

    Returns:
        `{"train": {class: [paths]}, "test": {class: [paths]}}`.
    """
    splits = {"train": {}, "test": {}}
    for index, (name, files) in enumerate(sorted(files_by_class.items())):
        files = sorted(files)
        order = np.random.default_rng([seed, index]).permutation(len(files))
        count = round(test_fraction * len(files))
        count = max(count, 1) if len(files) >= 2 else 0
        test = set(order[:count].tolist())
        splits["test"][name] = [f for i, f in enumerate(files) if i in test]
        splits["train"][name] = [f for i, f in enumerate(files) if i not in test]
    return splits


def move_into(splits: dict, root) -> dict[str, int]:
    """Move `{split: {class: [paths]}}` into `root/<split>/<class>/`; return counts per split."""
    counts = {}
    for split, classes in splits.items():
        counts[split] = 0
        for name, files in classes.items():
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.move(path, folder / Path(path).name)
                counts[split] += 1
    return counts


def write_readme(root, text: str) -> None:
    """Say in `root/SOURCE.txt` where the data came from and how it was split."""
    (Path(root) / "SOURCE.txt").write_text(text.strip() + "\n")


def example_parser(
    description: str,
    data_dir: str,
    backbone: str = "vgg16",
    head_epochs: int = 10,
    finetune_epochs: int = 10,
    batch_size: int = 32,
) -> argparse.ArgumentParser:
    """The flags every example has; each adds its own (`--url` ...)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(data_dir),
        help="a folder of <class>/<image> folders (a local copy: trained on as it is, "
        "without a test split), or where the train/ and test/ folders are, or are "
        f"written once (default {data_dir}); either skips the download",
    )
    parser.add_argument("--output", type=Path, required=True, help="run directory to write")
    parser.add_argument("--backbone", default=backbone, help=f"default {backbone}")
    parser.add_argument(
        "--weights", default="imagenet", help="imagenet (default), none, or a weights file"
    )
    parser.add_argument("--image-size", type=int, help="default: the backbone's input size")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--head-epochs", type=int, default=head_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=finetune_epochs)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def add_download_flags(parser, *downloads: tuple[str, str, str]) -> None:
    """Add one flag per `(flag, default URL, file name)` download, and `--cache-dir`."""
    for flag, url, what in downloads:
        parser.add_argument(flag, default=url, help=f"{what}: a URL or a local file ({url})")
    parser.add_argument("--cache-dir", type=Path, help="where downloads are kept (~/.keras)")


@contextlib.contextmanager
def exits_2_when_refused(args, dataset: str | None = None):
    """Run an example's work; what stops it for want of input is one line on stderr, exit 2.

    keras_ft's refusals (`KerasFTError`) are printed as they are. A failed
    download (no network, say) is described: the example needs `dataset`,
    and ImageNet weights with `--weights imagenet`, and can be pointed at
    local copies. TensorFlow loads first, without the lines its C++ side
    writes while it loads (as the `keras-ft` command loads it).
    """
    _import_tensorflow_quietly()
    from keras_ft import KerasFTError

    try:
        yield
    except KerasFTError as error:
        _exit_2(str(error))
    except Exception as error:  # keras.utils.get_file turns a failed download into Exception
        if dataset is None or "URL fetch failure" not in str(error):
            raise
        needs = dataset
        local = "--data-dir DIR (a folder of <class>/<image> folders, or of train/ and test/ ones)"
        if args.weights == "imagenet":
            needs += f" and ImageNet weights for {args.backbone}"
            local += (
                " and --weights PATH (a weights file of the backbone without its top) "
                "or --weights none (random weights)"
            )
        reason = str(error).split(" -- ")[-1]
        _exit_2(
            f"This example needs {needs}, which it downloads once; the download failed "
            f"({reason}). Offline, pass {local}."
        )


def _exit_2(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _import_tensorflow_quietly() -> None:
    """Import Keras and TensorFlow with standard error pointed at /dev/null meanwhile."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # and no C++ log lines afterwards
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras  # noqa: F401  (it imports TensorFlow)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def fine_tune(args, train_dir, test_dir, skip_bad: bool = False) -> None:
    """The examples' run: backbone first (weights that cannot be had stop it before the scan),
    then the folders, both phases from the backbone's suggested layer, the run saved.

    With `skip_bad`, files that do not decode are left out (run.json lists them) and the
    first few are printed.
    """
    import keras_ft

    spec = keras_ft.get_backbone(args.backbone)
    image_size = args.image_size or spec.default_size
    tuner = keras_ft.FineTuner(
        args.backbone, weights=None if args.weights == "none" else args.weights, seed=args.seed
    )
    tuner.build_backbone(image_size)
    data = keras_ft.ImageFolder(
        train_dir,
        test_dir=test_dir,
        image_size=image_size,
        batch_size=args.batch_size,
        validation_split=0.1,
        seed=args.seed,
        skip_bad=skip_bad,
        quiet=args.quiet,
    )
    if data.skipped:
        print(f"left out {len(data.skipped)} unusable file(s) (run.json lists them), for example:")
        for problem in data.skipped[:5]:
            print(f"  {problem['path']}: {problem['reason']}")
    tuner.fit(
        data,
        head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs,
        unfreeze=spec.finetune_from or "all",
        verbose=0 if args.quiet else "auto",
    )
    print_result(tuner, tuner.save(args.output, overwrite=True))


def print_result(tuner, run_dir) -> None:
    """The test accuracy and where to look at the run."""
    if tuner.metrics is not None:
        print(f"test accuracy: {tuner.metrics['accuracy']:.3f}")
    print(f"run directory: {run_dir}")
    print(f"report:        {Path(run_dir) / 'report' / 'report.html'}")
    print(f"TensorBoard:   tensorboard --logdir {Path(run_dir) / 'logs'}")
