"""Peak resident memory of a training run at 224 px, and where it goes.

One `FineTuner("vgg16").fit` on the generated folder at 224 px, batch 32, with
augmentation, stopped after a few steps of each phase (the peak is reached by then:
the decoded images are all held and phase 2 trains every layer). The peak is the
child process's `ru_maxrss` (from `os.wait4`). Resident memory is also read after
the imports and after the training images are decoded.

When `ImageFolder` has a `memory_budget`, a second run sets it below the size of
the decoded images, so they go to a memory-mapped file instead of memory.

    python -m bench.memory [--quick | --tiny]
"""

from __future__ import annotations

import sys

from bench import common

SETTINGS = {
    "tiny": {"image_size": 32, "batch_size": 4, "steps": 1},
    "quick": {"image_size": 224, "batch_size": 32, "steps": 1},
    "full": {"image_size": 224, "batch_size": 32, "steps": 1},
}
IN_MEMORY, SPILLED = "images in memory (default budget)", "budget below the images (spill to disk)"


def configs(work: common.Workspace) -> list[dict]:
    train_dir, _ = work.dataset("big")
    return [
        {"module": "memory", "name": name, "spill": spill, "deterministic": True,
         "train_dir": train_dir, "weights": work.weights, **SETTINGS[work.mode]}
        for name, spill in ((IN_MEMORY, False), (SPILLED, True))
        if work.mode == "full" or spill == (work.mode == "tiny")  # otherwise one of them
    ]  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def measure(config: dict) -> dict:
    import inspect

    import keras

    from keras_ft import FineTuner, ImageFolder

    after_import = _rss_mb()
    size, steps = config["image_size"], config["steps"]
    options = {}
    if config["spill"]:
        if "memory_budget" not in inspect.signature(ImageFolder).parameters:
            return {"skipped": "ImageFolder has no memory_budget: decoded images always in memory"}
        options["memory_budget"] = 1024**2
    data = ImageFolder(config["train_dir"], image_size=size, batch_size=config["batch_size"],
                       validation_split=0.0, seed=42, **options)  # fmt: skip
    next(iter(data.train_dataset(0, 1)))  # decodes the training images into the store
    after_decode = _rss_mb()

    class StopAfter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 >= steps:
                self.model.stop_training = True

    backbone = config.get("backbone", "vgg16")  # the tests' testnet: quick's sizes, in seconds
    tuner = FineTuner(backbone, weights=config["weights"], seed=42)
    tuner.fit(data, head_epochs=1, finetune_epochs=1, callbacks=[StopAfter()], verbose=0,
              evaluate=False)  # fmt: skip
    return {
        "images": len(data.train_files),
        "decoded_mb": len(data.train_files) * size * size * 3 / 1024**2,
        "rss_after_import_mb": after_import,
        "rss_after_decode_mb": after_decode,
        "rss_end_mb": _rss_mb(),
    }


def report(results: list[dict], work: common.Workspace) -> str:
    settings = SETTINGS[work.mode]
    rows, notes = [], []
    for result in results:
        if "skipped" in result:
            notes.append(f"- {result['name']}: not measured: {result['skipped']}.")
            continue
        rows.append([
            result["name"], f"{result['decoded_mb']:,.0f}", f"{result['rss_after_import_mb']:,.0f}",
            f"{result['rss_after_decode_mb']:,.0f}", f"{result['child_peak_rss_mb']:,.0f}",
        ])  # fmt: skip
    lines = [
        "### Memory",
        "",
        f"VGG16, {work.describe('big')}; {settings['image_size']} px, batch "
        f"{settings['batch_size']}, augmentation on, determinism on; {settings['steps']} "
        "step(s) of each phase, one process per row. MiB.",
        "",
        common.table(
            [
                "decoded training images",
                "their size",
                "resident after imports",
                "resident after decoding",
                "peak resident (ru_maxrss)",
            ],
            rows,
        ),  # fmt: skip
        *([""] + notes if notes else []),
    ]
    lines += ["", common.load_note(results)]
    return "\n".join(lines)


if __name__ == "__main__":
    common.main_for(sys.modules[__name__])
