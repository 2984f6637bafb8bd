"""Scan throughput on a generated folder: cold (empty cache) and warm (unchanged folder).

Writes N small images (32-64 px, half JPEG, half PNG) in 10 classes into a
temporary folder, with a temporary scan cache, then times `scan_folder`:

* cold: every file is read, hashed and fully decoded with Pillow;
* warm: the folder is unchanged, so every file is judged from the cache
  (one stat per file, no read).

The files were just written, so "cold" means an empty scan cache, not an empty
OS page cache: on a real disk the first scan is also bounded by reading.

Usage:
    python bench/scan_bench.py [--files 20000] [--workers 4 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image


def generate(root: Path, files: int, classes: int, seed: int = 0) -> None:
    """Write `files` small images into `root/class_<k>/`."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True)
    for i in range(files):
        height, width = rng.integers(32, 65, size=2)
        base = rng.integers(0, 256, size=3)
        pixels = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
        image, folder = Image.fromarray(pixels), root / f"class_{i % classes}"
        if i % 2:
            image.save(folder / f"{i:06d}.jpg", quality=90)
        else:
            image.save(folder / f"{i:06d}.png")


def timed_scan(root: Path, workers: int | None, cache: bool) -> tuple[float, object]:
    from keras_ft.data.scan import scan_folder

    started = time.perf_counter()
    report = scan_folder(root, workers=workers, cache=cache, quiet=True)
    return time.perf_counter() - started, report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0], help="thread counts (0: the default)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="best of N per measurement")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="keras_ft_scan_bench_") as temp,
        mock.patch.dict(os.environ),  # the caller's KERAS_FT_CACHE is back afterwards
    ):
        temp = Path(temp)
        os.environ["KERAS_FT_CACHE"] = str(temp / "cache")
        started = time.perf_counter()
        generate(temp / "data", args.files, args.classes)
        print(f"generated {args.files} images in {time.perf_counter() - started:.1f} s")
        import keras_ft.data.scan as scan  # noqa: F401 - import (and TensorFlow) outside the timings

        rows = []
        for workers in args.workers:
            threads = workers or min(32, 4 * (os.cpu_count() or 1))
            cold, warm = [], []
            for _ in range(args.repeats):
                for cache_file in (temp / "cache").glob("*.json"):
                    cache_file.unlink()
                seconds, report = timed_scan(temp / "data", workers or None, cache=True)
                assert len(report.files) == args.files and report.from_cache == 0
                cold.append(seconds)
                seconds, report = timed_scan(temp / "data", workers or None, cache=True)
                assert len(report.files) == args.files and report.from_cache == args.files
                warm.append(seconds)
            rows.append((threads, min(cold), min(warm)))

    print()
    print(f"{args.files} files, {args.classes} classes, 32-64 px, half JPEG, half PNG; ", end="")
    print(f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, ", end="")
    print(f"best of {args.repeats}")
    print()
    print("| threads | cold scan (s) | cold files/s | warm scan (s) | warm files/s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for threads, cold, warm in rows:
        print(
            f"| {threads} | {cold:.2f} | {args.files / cold:,.0f} "
            f"| {warm:.2f} | {args.files / warm:,.0f} |"
        )


if __name__ == "__main__":
    main()
