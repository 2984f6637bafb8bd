"""Early stopping, simulated on the committed histories: what would it have saved and kept?

    python -m bench.early_stopping                  # patience 5, 10 and 20
    python -m bench.early_stopping --patience 10

Reads the quality benchmark's rows of today's recipe (`auto` and `lite0-auto` below 500
training images, `c22-warmup3` and `lite0-c22-warmup3` from 500, whose three warm-up
epochs `auto` took in round 15; Ising and Cahn-Hilliard split by simulation). Each row
holds its per-epoch validation losses. Keras's `EarlyStopping(patience=P,
restore_best_weights=True)` on phase 2 would have stopped at the first epoch P epochs
after the lowest loss so far and kept that epoch's weights. The validation losses up to
the stop are the ones the full run saw, so the simulation is exact up to that epoch. What
the kept weights score on the selection folder is not known: the rows hold its losses,
not its weights.
"""

from __future__ import annotations

import argparse
import json

from bench import common

FILES = ("quality.jsonl", "quality-lite0.jsonl")
LARGE = {("mnist", 100), ("digits", 70)}  # 500 training images and more


def todays_recipe(record: dict) -> bool:
    """Whether a row ran the recipe `auto` is today, at its task size."""
    if record["task"] in ("ising", "cahn_hilliard") and record.get("split") != "by-simulation":
        return False
    prefix = "lite0-" if record.get("backbone") == "efficientnet_lite0" else ""
    large = (record["task"], record["per_class"]) in LARGE
    return record["method"] == prefix + ("c22-warmup3" if large else "auto")


def stop(losses: list[float], patience: int) -> tuple[int, int]:
    """(the epoch index early stopping ends at, the index of the weights it keeps)."""
    best, kept = float("inf"), 0
    for epoch, loss in enumerate(losses):
        if loss < best:
            best, kept = loss, epoch
        elif epoch - kept >= patience:
            return epoch, kept
    return len(losses) - 1, kept


def simulate(rows: list[dict], patience: int) -> dict:
    """The phase-2 epochs saved, and the kept epoch's validation loss against the last's."""
    runs = epochs = saved = lower = higher = later = 0
    worst = 0.0
    for record in rows:
        losses = [float(row["val_loss"]) for row in record["history"] if row["phase"] == "finetune"]
        if not losses:
            continue
        end, kept = stop(losses, patience)
        runs, epochs, saved = runs + 1, epochs + len(losses), saved + len(losses) - 1 - end
        lower += losses[kept] < losses[-1]
        higher += losses[kept] > losses[-1]
        later += end < len(losses) - 1 and min(losses[end + 1 :]) < losses[kept]
        worst = max(worst, losses[kept] - losses[-1])
    return {
        "patience": patience,
        "runs": runs,
        "saved": saved,
        "epochs": epochs,
        "lower": lower,
        "higher": higher,
        "later": later,
        "worst": worst,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patience", type=int, nargs="+", default=[5, 10, 20])
    args = parser.parse_args(argv)
    rows = [
        record
        for name in FILES
        for line in (common.ROOT / "bench" / "results" / name).read_text().splitlines()
        if todays_recipe(record := json.loads(line)) and record.get("history")
    ]
    print(
        "| patience | phase-2 runs | epochs saved | kept loss below the last epoch's | above "
        "| a lower loss after the stop | worst rise |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for patience in args.patience:
        s = simulate(rows, patience)
        share = 100 * s["saved"] / s["epochs"]
        print(
            f"| {patience} | {s['runs']} | {s['saved']} of {s['epochs']} ({share:.0f} %) "
            f"| {s['lower']} | {s['higher']} | {s['later']} | {s['worst']:+.3f} |"
        )


if __name__ == "__main__":
    main()
