"""GPU readiness: training and inference images/s of three backbones, float32 and mixed.

VGG16, ResNet50 and EfficientNetB0 (weights=None) built by keras_ft with its head,
at 224 px, batch 32, through the toolkit's own options: `FineTuner(mixed_precision=...)`
(float16 or bfloat16 compute, float32 variables and output) and the phase-2 compile
of `keras_ft.training.optimizers.compile_for_phase` with `jit_compile` (XLA) on or off, op
determinism off (XLA refuses it). One process per (backbone, setting).

* training: every layer trainable, SGD with momentum, `train_on_batch` on batches
  drawn from `ImageFolder.train_dataset` (augmented); also the share of each step
  spent waiting for the next batch (`next()` on the pipeline) rather than computing;
* inference: `predict_on_batch` on one batch already in memory.

Without a visible GPU the full and quick modes measure nothing and say so; the
tiny mode runs on the CPU at 32 px so the script keeps working.

    python -m bench.gpu [--quick | --tiny]
"""

from __future__ import annotations

import sys
import time

from bench import common

SETTINGS = {
    "tiny": {"image_size": 32, "batch_size": 2, "steps": 2, "allow_cpu": True},
    "quick": {"image_size": 224, "batch_size": 32, "steps": 5, "allow_cpu": False},
    "full": {"image_size": 224, "batch_size": 32, "steps": 30, "allow_cpu": False},
}
BACKBONES = ("vgg16", "resnet50", "efficientnetb0")
VARIANTS = {  # name: (mixed_precision, jit_compile)
    "float32": (None, False),
    "mixed float16": ("float16", False),
    "mixed bfloat16": ("bfloat16", False),
    "mixed float16 + XLA": ("float16", True),
}


def configs(work: common.Workspace) -> list[dict]:
    settings = SETTINGS[work.mode]
    if not settings["allow_cpu"]:
        probe = common.spawn([{"module": "gpu", "name": "probe", "probe": True}])[0]
        if not probe["gpus"]:
            return []
    train_dir, _ = work.dataset("big")
    pairs = [(backbone, variant) for backbone in BACKBONES for variant in VARIANTS]
    if work.mode == "tiny":  # float32 and float16, on the backbone that builds fastest
        pairs = [("vgg16", "float32"), ("vgg16", "mixed float16")]
    return [
        {"module": "gpu", "name": f"{backbone}, {variant}", "backbone": backbone,
         "variant": variant, "deterministic": False, "train_dir": train_dir, **settings}
        for backbone, variant in pairs
    ]  # fmt: skip


def measure(config: dict) -> dict:
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    if config.get("probe"):
        return {"gpus": gpus}
    return {"device": gpus[0] if gpus else "CPU", **_throughput(config)}


def _throughput(config: dict) -> dict:
    import math

    from keras_ft import FineTuner, ImageFolder
    from keras_ft.config import TrainingConfig
    from keras_ft.models.classifier import unfreeze_backbone
    from keras_ft.training.optimizers import compile_for_phase

    size, batch, steps = config["image_size"], config["batch_size"], config["steps"]
    mixed_precision, jit_compile = VARIANTS[config["variant"]]
    data = ImageFolder(config["train_dir"], image_size=size, batch_size=batch,
                       validation_split=0.0, seed=42)  # fmt: skip
    tuner = FineTuner(config["backbone"], weights=None, seed=42, deterministic=False,
                      mixed_precision=mixed_precision)  # fmt: skip
    model = tuner.build((size, size), data.num_classes)
    unfreeze_backbone(model, "all")
    training = TrainingConfig(deterministic=False, jit_compile=jit_compile)
    compile_for_phase(model, "finetune", training, data.num_classes, data.steps_per_epoch)
    epochs = math.ceil((steps + 2) / data.steps_per_epoch) + 1
    batches = iter(data.train_dataset(0, epochs))
    images, labels = next(batches)
    model.train_on_batch(images, labels)  # trace and warm up
    model.predict_on_batch(images)
    waiting = total = 0.0
    count = 0
    for _ in range(steps):
        started = time.perf_counter()
        images, labels = next(batches)
        ready = time.perf_counter()
        model.train_on_batch(images, labels)  # returns the loss as a number: synchronised
        waiting, total = waiting + ready - started, total + time.perf_counter() - started
        count += int(images.shape[0])
    started = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(images)
    inference = steps * int(images.shape[0]) / (time.perf_counter() - started)
    return {
        "train_images_per_s": count / total,
        "input_wait": waiting / total,
        "inference_images_per_s": inference,
    }


def report(results: list[dict], work: common.Workspace) -> str:
    settings = SETTINGS[work.mode]
    title = ["### GPU readiness", ""]
    if not results:
        return "\n".join(title + [
            "No GPU is visible on this machine: **not measured**. On a GPU machine: "
            "`python -m bench.gpu` (needs no other change)."
        ])  # fmt: skip
    rows = [
        [r["backbone"], r["variant"], r["device"], f"{r['train_images_per_s']:.1f}",
         f"{r['input_wait']:.0%}", f"{r['inference_images_per_s']:.1f}"]
        for r in results
    ]  # fmt: skip
    return "\n".join(title + [
        f"{settings['image_size']} px, batch {settings['batch_size']}, {settings['steps']} "
        "timed steps after one warm-up step; training: every layer trainable, SGD momentum.",
        "",
        common.table(["backbone", "setting", "device", "training images/s",
                      "step time waiting for input", "inference images/s"], rows),
    ])  # fmt: skip


if __name__ == "__main__":
    common.main_for(sys.modules[__name__])
