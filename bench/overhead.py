"""The whole two-phase run: keras_ft against a hand-written Keras script, and determinism's cost.

Same backbone (VGG16), data, image size, batch size, epochs, augmentation and
optimizers on every side:

* keras_ft: `ImageFolder` + `FineTuner("vgg16").fit(...)` with its defaults
  (folder scan, augmentation, held-out evaluation), op determinism on and off;
* hand-written: `bench/guide_script.py`, the Keras transfer-learning guide's recipe.

Timed: from reading the folder to the test accuracy, after the imports; each side in
a fresh process with an empty scan cache (a first run), sides alternating.

    python -m bench.overhead [--quick | --tiny]
"""

from __future__ import annotations

import sys
import time

from bench import common

SETTINGS = {
    "tiny": {"image_size": 32, "batch_size": 4, "head_epochs": 1, "finetune_epochs": 1},
    "quick": {"image_size": 64, "batch_size": 32, "head_epochs": 1, "finetune_epochs": 1},
    "full": {"image_size": 64, "batch_size": 32, "head_epochs": 2, "finetune_epochs": 2,
             "repeats": 2},
}  # fmt: skip
OURS, OURS_NONDET, HAND = (
    "keras_ft, determinism on (default)",
    "keras_ft, determinism off",
    "hand-written guide script",
)
SIDES = [(OURS, "ours", True), (OURS_NONDET, "ours", False), (HAND, "hand", False)]
PARTS = ("phase1_fit_s", "phase2_fit_s", "evaluate_s")


def configs(work: common.Workspace) -> list[dict]:
    train_dir, test_dir = work.dataset("small")
    return [
        {"module": "overhead", "name": name, "side": side, "deterministic": det,
         "train_dir": train_dir, "test_dir": test_dir, "weights": work.weights,
         **SETTINGS[work.mode]}
        for name, side, det in SIDES
        if work.mode == "full" or name != OURS_NONDET  # otherwise each code path once
    ]  # fmt: skip


def measure(config: dict) -> dict:
    keys = ("image_size", "batch_size", "head_epochs", "finetune_epochs")
    size, batch, head, finetune = (config[k] for k in keys)
    started = time.perf_counter()
    if config["side"] == "hand":
        from bench.guide_script import train

        accuracy, seconds = train(config["train_dir"], config["test_dir"], size, batch, head,
                                  finetune, config["weights"])  # fmt: skip
    else:
        accuracy, seconds = _ours(config, size, batch, head, finetune)
    return {"seconds": time.perf_counter() - started, "test_accuracy": accuracy, **seconds}


def _ours(config: dict, size: int, batch: int, head: int, finetune: int) -> tuple[float, dict]:
    import keras

    from keras_ft import FineTuner, ImageFolder

    seconds = {}

    class FitTimer(keras.callbacks.Callback):  # the time inside each phase's Keras `fit`
        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()

        def on_train_end(self, logs=None):
            phase = "phase2_fit_s" if "phase1_fit_s" in seconds else "phase1_fit_s"
            seconds[phase] = time.perf_counter() - self.started

    data = ImageFolder(config["train_dir"], test_dir=config["test_dir"], image_size=size,
                       batch_size=batch, validation_split=0.2, seed=42)  # fmt: skip
    backbone = config.get("backbone", "vgg16")  # the tests' testnet: quick's sizes, in seconds
    tuner = FineTuner(
        backbone, weights=config["weights"], seed=42, deterministic=config["deterministic"]
    )
    tuner.fit(data, head_epochs=head, finetune_epochs=finetune, callbacks=[FitTimer()],
              verbose=0, evaluate=False)  # fmt: skip
    started = time.perf_counter()
    accuracy = tuner.evaluate(data)["accuracy"]  # what fit(evaluate=True) does
    seconds["evaluate_s"] = time.perf_counter() - started
    return accuracy, seconds


def report(results: list[dict], work: common.Workspace) -> str:
    settings = SETTINGS[work.mode]
    seconds, accuracy = common.grouped(results, "seconds"), common.grouped(results, "test_accuracy")
    seconds.setdefault(OURS_NONDET, seconds[OURS])  # only the full mode runs both
    fastest = {name: common.best(values, False) for name, values in seconds.items()}
    rows = []
    for name, _, _ in SIDES:
        if name not in accuracy:
            continue
        parts = [common.mean(common.grouped(results, key)[name]) for key in PARTS]
        rest = common.mean(seconds[name]) - sum(parts)
        rows.append([
            name, common.spread(seconds[name]), *(f"{part:.1f}" for part in parts),
            f"{rest:.1f}", common.spread(accuracy[name], 3),
            f"{fastest[name] / fastest[HAND]:.3f}",
        ])  # fmt: skip
    overhead = fastest[OURS_NONDET] / fastest[HAND]
    default = fastest[OURS] / fastest[HAND]
    determinism = fastest[OURS] / fastest[OURS_NONDET]
    no_worse = common.mean(accuracy[OURS]) >= common.mean(accuracy[HAND])
    lines = [
        "### Overhead over a hand-written script, and the cost of determinism",
        "",
        f"VGG16, {common.weights_label(work.weights)}; {work.describe('small')}; "
        f"{settings['image_size']} px, batch {settings['batch_size']}, "
        f"{settings['head_epochs']} head + {settings['finetune_epochs']} fine-tune epochs "
        "(all layers), augmentation on; 20 % validation split; mean (min-max) of "
        f"{len(seconds[HAND])} round(s), each side in a fresh process, sides alternating.",
        "",
        common.table(
            [
                "run",
                "wall time (s)",
                "phase-1 fit",
                "phase-2 fit",
                "evaluation",
                "the rest",
                "test accuracy",
                "best time / hand-written's",
            ],
            rows,
        ),  # fmt: skip
        "",
        "Phase columns: seconds inside each Keras `fit` call (mean). The rest: reading the "
        "folder (keras_ft: scan, decode into memory, file hashes; hand-written: listing), "
        "building and compiling, and for keras_ft the determinism probe and TensorBoard "
        "logs. Ratios from each side's best round.",
        "",
        f"- overhead, keras_ft (determinism off) / hand-written: **{overhead:.3f}**: "
        f"{common.verdict(overhead, 1.05, higher_is_better=False)}; with its default "
        f"determinism on: {default:.3f}.",
        f"- accuracy, keras_ft (default) vs hand-written: "
        f"{common.mean(accuracy[OURS]):.3f} vs {common.mean(accuracy[HAND]):.3f}: "
        f"{'no worse' if no_worse else 'WORSE'}.",
        f"- determinism cost, keras_ft on / off: **{determinism:.3f}**: "
        f"{common.verdict(determinism, 1.10, higher_is_better=False)}; over the means "
        f"of the rounds: {common.mean(seconds[OURS]) / common.mean(seconds[OURS_NONDET]):.3f}.",
    ]
    lines.append(common.load_note(results))
    return "\n".join(lines)


if __name__ == "__main__":
    common.main_for(sys.modules[__name__])
