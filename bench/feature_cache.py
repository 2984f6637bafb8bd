"""Phase 1 with the feature cache vs recomputing the frozen backbone every epoch.

`FineTuner("vgg16").fit(data, head_epochs=5, finetune_epochs=0, recipe=None)` on the
same data (no augmentation, op determinism on; `recipe=None`: phase 1 exactly as given,
without the default recipe's epochs, probe and fallbacks), with `feature_cache=True` (the
backbone runs once over the training and validation images, the head trains on the
stored features) and `feature_cache=False` (the backbone runs in every epoch).
Timed: the two-phase fit itself, after the images are decoded into memory on both
sides; the test accuracy is measured afterwards, untimed.

With E head epochs the recomputing side runs the backbone E times and the cached
side once, so the speed-up approaches but cannot reach E.

    python -m bench.feature_cache [--quick | --tiny]
"""

from __future__ import annotations

import sys
import time

from bench import common

SETTINGS = {
    "tiny": {"image_size": 32, "batch_size": 4, "head_epochs": 2},
    "quick": {"image_size": 64, "batch_size": 32, "head_epochs": 5},
    "full": {"image_size": 64, "batch_size": 32, "head_epochs": 5, "repeats": 2},
}
SIDES = [("feature cache on (default)", True), ("feature cache off (backbone every epoch)", False)]


def configs(work: common.Workspace) -> list[dict]:
    train_dir, test_dir = work.dataset("small")
    return [
        {"module": "feature_cache", "name": name, "feature_cache": cache, "deterministic": True,
         "train_dir": train_dir, "test_dir": test_dir, "weights": work.weights,
         **SETTINGS[work.mode]}
        for name, cache in SIDES
    ]  # fmt: skip


def measure(config: dict) -> dict:
    import keras_ft.task.fitting as fitting
    from keras_ft import FineTuner, ImageFolder
    from keras_ft.runs.reproducibility import weights_sha256

    timing = {}
    fit_two_phase = fitting.fit_two_phase

    def timed_fit(*args, **kwargs):
        started = time.perf_counter()
        result = fit_two_phase(*args, **kwargs)
        timing["phase1_s"] = time.perf_counter() - started
        return result

    fitting.fit_two_phase = timed_fit  # measure phase 1 alone, not the checks around it
    data = ImageFolder(
        config["train_dir"], test_dir=config["test_dir"], image_size=config["image_size"],
        batch_size=config["batch_size"], validation_split=0.2, augment=False, seed=42,
    )  # fmt: skip
    started = time.perf_counter()
    for split in (data.unaugmented_train(), data.validation):  # decode both before timing
        for _ in split:
            pass
    decode_s = time.perf_counter() - started
    backbone = config.get("backbone", "vgg16")  # the tests' testnet: quick's sizes, in seconds
    tuner = FineTuner(backbone, weights=config["weights"], seed=42, deterministic=True)
    started = time.perf_counter()
    tuner.fit(
        data, head_epochs=config["head_epochs"], finetune_epochs=0, recipe=None,
        feature_cache=config["feature_cache"], verbose=0, evaluate=False,
    )  # fmt: skip
    fit_s = time.perf_counter() - started
    return {
        **timing,
        "fit_s": fit_s,
        "decode_s": decode_s,
        "val_accuracy": tuner.history.history["val_accuracy"][-1],
        "test_accuracy": tuner.evaluate(data.test)["accuracy"],
        "weights_sha256": weights_sha256(tuner.model),
    }


def report(results: list[dict], work: common.Workspace) -> str:
    settings = SETTINGS[work.mode]
    phase1, fit = common.grouped(results, "phase1_s"), common.grouped(results, "fit_s")
    rows = []
    for name, _ in SIDES:
        runs = [r for r in results if r["name"] == name]
        hashes = sorted({r["weights_sha256"][:12] for r in runs})
        rows.append([
            name, common.spread(phase1[name]), common.spread(fit[name]),
            common.spread([r["val_accuracy"] for r in runs], 3),
            common.spread([r["test_accuracy"] for r in runs], 3), ", ".join(hashes),
        ])  # fmt: skip
    (cached, _), (recomputed, _) = SIDES
    speedup = common.best(phase1[recomputed], False) / common.best(phase1[cached], False)
    fit_speedup = common.best(fit[recomputed], False) / common.best(fit[cached], False)
    epochs = settings["head_epochs"]
    lines = [
        "### Feature cache for phase 1",
        "",
        f"VGG16, {common.weights_label(work.weights)}; {work.describe('small')} (20 % of the "
        f"training folder held out for validation); {settings['image_size']} px, batch "
        f"{settings['batch_size']}, {epochs} head epochs, no augmentation, op determinism on; "
        f"mean (min-max) of {len(phase1[cached])} round(s), each side in a fresh process, "
        "sides alternating; ratios from each side's best round.",
        "",
        common.table(
            [
                "phase 1",
                "phase-1 time (s)",
                "whole fit (s)",
                "val accuracy",
                "test accuracy",
                "weights SHA-256",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"- phase 1, recomputing / cached: **{speedup:.2f}x**: {common.verdict(speedup, 5.0)} "
        f"(over the means: {common.mean(phase1[recomputed]) / common.mean(phase1[cached]):.2f}x); "
        f"whole `fit` (with its checks and data hashing): {fit_speedup:.2f}x.",
        f"- why about {epochs}x: the recomputing side runs the backbone over the training and "
        f"validation images in each of the {epochs} epochs, the cached side once; the head's "
        "own epochs cost little beside it.",
    ]
    lines.append(common.load_note(results))
    return "\n".join(lines)


if __name__ == "__main__":
    common.main_for(sys.modules[__name__])
