"""Shared fixtures: the shipped digits sample, tiny generated folders, a tiny backbone."""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Scan caches of test folders go to a throw-away place, not the user's ~/.cache;
# subprocesses inherit it, and the process that made it removes it at exit.
if "KERAS_FT_TEST_CACHE" not in os.environ:
    os.environ["KERAS_FT_TEST_CACHE"] = tempfile.mkdtemp(prefix="keras_ft_test_cache_")
    atexit.register(shutil.rmtree, os.environ["KERAS_FT_TEST_CACHE"], True)
os.environ["KERAS_FT_CACHE"] = os.environ["KERAS_FT_TEST_CACHE"]
# The test-only backbone plugin `testnet` (tests/plugins), found by this process and its children.
PLUGINS = str(Path(__file__).resolve().parent / "plugins")
if PLUGINS not in sys.path:  # pytest-xdist workers inherit it through PYTHONPATH
    sys.path.insert(0, PLUGINS)
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [PLUGINS, inherited]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "data_samples" / "digits"
# The test plugin's untrained backbone at 32 px: the cheapest real `keras-ft train`.
TINY_TRAIN = "--backbone testnet --weights none --image-size 32 --quiet".split()

# The slowest test files, slowest first (their summed test times on 2 cores): `make test`
# spreads whole files over two workers (pytest-xdist, --dist loadfile, --no-loadscope-reorder
# to keep this order), so these go first, and the short ones fill in at the end instead of
# one long file running alone.
SLOWEST_FILES = (
    "test_bench.py", "test_training.py", "test_deploy.py", "test_artifacts.py",
    "test_distribute.py", "test_resume.py", "test_cli.py", "test_docs.py", "test_output.py",
    "test_reproducibility.py", "test_determinism.py", "test_explain.py", "test_backbones.py",
    "test_examples.py", "test_lr_find.py", "test_report.py", "test_budget.py",
    "test_transfer.py", "test_search.py", "test_ranking.py", "test_finetuner.py",
    "test_efficientnet_lite.py", "test_recipe.py", "test_data.py", "test_scan.py",
)  # fmt: skip


def pytest_collection_modifyitems(items):
    """Collect the slowest files first, each file's tests in their own order."""
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600):
    """Run `python -m keras_ft.cli.main ARGS` in a fresh process; return the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "keras_ft.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def main_cli(capsys, *args) -> tuple[int, str, str]:
    """Run `keras-ft ARGS` in this process; return (exit code, stdout, stderr)."""
    from keras_ft.cli.main import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_run(run_dir: Path, destination: Path, edit=None) -> Path:
    """Copy a run directory; `edit(record)` may change its run.json in place first."""
    import json
    import shutil

    shutil.copytree(run_dir, destination)
    if edit is not None:
        record = json.loads((destination / "run.json").read_text())
        edit(record)
        (destination / "run.json").write_text(json.dumps(record))
    return destination


def reseal(run_dir: Path, edit=None) -> None:
    """Rewrite run.json as someone without the signing key could: edit, recompute the manifest."""
    import json

    from keras_ft.runs.manifest import file_manifest

    record = json.loads((run_dir / "run.json").read_text())
    if edit is not None:
        edit(record)
    record["manifest"] = file_manifest(run_dir)
    (run_dir / "run.json").write_text(json.dumps(record))


def fail_writes(monkeypatch, folder: Path, code: int) -> None:
    """Make every file that pathlib opens for writing under `folder` fail with OSError `code`:
    ENOSPC for a full disk, EROFS for a read-only one (tests run as root, which permission
    bits do not stop)."""
    real_open = Path.open

    def open_(path, mode="r", *args, **kwargs):
        if set(mode) & set("wxa+") and Path(folder) in Path(path).absolute().parents:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)


def write_folder(
    root: Path, classes=("cat", "dog"), per_class: int = 12, size: int = 40, seed: int = 0
) -> Path:
    """Write `root/<class>/<i>.png`: each class a distinct colour with noise, so it is learnable."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3)) + 255.0 * (np.arange(3) == c % 3)
            pixels = np.clip(base * 0.7 + rng.uniform(0, 80, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def write_noise_folder(root: Path) -> Path:
    """Three classes of 16 images of pure noise: labels that carry nothing, so at a large
    rate the validation loss rises after its best epoch (early stopping's tests)."""
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for i in range(16):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def tiny_backbone(image_size: int = 32) -> keras.Model:
    """A small seeded conv backbone (with BatchNorm) for fast tests of the whole flow."""
    from testnet_pkg import testnet

    return testnet(input_shape=(image_size, image_size, 3))


@pytest.fixture
def digits() -> Path:
    return DIGITS


@pytest.fixture
def folder(tmp_path) -> Path:
    """A two-class training folder of 12 images per class at 40 px."""
    return write_folder(tmp_path / "train")


@pytest.fixture
def split_folders(tmp_path) -> tuple[Path, Path]:
    """(train, test) folders with three classes."""
    classes = ("red", "green", "blue")
    return (
        write_folder(tmp_path / "train", classes, per_class=16, seed=1),
        write_folder(tmp_path / "test", classes, per_class=4, seed=2),
    )


def bomb_png(path, side: int = 20000):
    """A PNG of a few KB whose header claims `side` x `side` grey pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = zlib.compress(bytes((side + 1) * 64), 9)  # 64 rows of zeros; all of it would be 400 MB
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )
    return path
