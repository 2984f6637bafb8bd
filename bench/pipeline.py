"""Input pipeline throughput: images/s of decoded, resized, augmented training batches.

Same folder, image size, batch size and augmentation (horizontal flip, rotation up to
18 degrees, zoom +-10 %, contrast +-10 %) on every side:

* ours: `ImageFolder.train_dataset` (decoded once into one uint8 array, then a
  per-epoch permutation and stateless augmentation in a parallel `map`), with op
  determinism on (the toolkit's default) and off;
* (a) the classic recipe: tf_keras `ImageDataGenerator.flow_from_directory`
  (needs `pip install -e .[bench]`);
* (b) the Keras guide: `keras.utils.image_dataset_from_directory` plus Keras
  augmentation layers in a parallel `map`, with op determinism on and off.

Steady state: after a few warm-up batches, the time to draw the next N batches.
Ours pays a one-off decode into memory first (timed apart, as is its folder scan);
the others decode every image again every epoch.

    python -m bench.pipeline [--quick | --tiny]
"""

from __future__ import annotations

import math
import sys
import time

from bench import common

SETTINGS = {
    "tiny": {"image_size": 32, "batch_size": 4, "warmup": 1, "batches": 2},
    "quick": {"image_size": 224, "batch_size": 32, "warmup": 2, "batches": 8},
    "full": {"image_size": 224, "batch_size": 32, "warmup": 3, "batches": 40, "repeats": 3},
}
SIDES = [
    ("ours, determinism on", "ours", True),
    ("ours, determinism off", "ours", False),
    ("(a) ImageDataGenerator (tf_keras)", "classic", False),
    ("(b) image_dataset_from_directory + layers, determinism off", "guide", False),
    ("(b) image_dataset_from_directory + layers, determinism on", "guide", True),
]
ROTATION, ZOOM, CONTRAST = 0.05, 0.1, 0.1  # the toolkit's defaults; rotation in turns


def configs(work: common.Workspace) -> list[dict]:
    train_dir, _ = work.dataset("big")
    settings = SETTINGS[work.mode]
    return [
        {"module": "pipeline", "name": name, "side": side, "deterministic": det,
         "train_dir": train_dir, **settings}
        for name, side, det in SIDES
    ]  # fmt: skip


def _rate(batches, warmup: int, count: int) -> float:
    """Images/s drawing `count` batches from the iterator `batches` after `warmup` batches."""
    for _ in range(warmup):
        next(batches)
    images, started = 0, time.perf_counter()
    for _ in range(count):
        images += int(next(batches)[0].shape[0])
    return images / (time.perf_counter() - started)


def _ours(config: dict) -> dict:
    from keras_ft import ImageFolder
    from keras_ft.runs.reproducibility import seed_everything

    seed_everything(42, config["deterministic"])
    started = time.perf_counter()
    data = ImageFolder(
        config["train_dir"], image_size=config["image_size"], batch_size=config["batch_size"],
        validation_split=0.0, rotation=ROTATION, zoom=ZOOM, contrast=CONTRAST,
    )  # fmt: skip
    scan_s = time.perf_counter() - started
    epochs = math.ceil((config["warmup"] + config["batches"]) / data.steps_per_epoch) + 1
    started = time.perf_counter()
    batches = iter(data.train_dataset(0, epochs))
    next(batches)  # the one-off decode into memory happens before the first batch
    decode_s = time.perf_counter() - started
    rate = _rate(batches, config["warmup"] - 1, config["batches"])
    return {"images_per_s": rate, "scan_s": scan_s, "decode_s": decode_s,
            "images": len(data.train_files)}  # fmt: skip


def _classic(config: dict) -> dict:
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        return {"skipped": "tf_keras is not installed: pip install -e '.[bench]'"}
    import numpy as np

    rng = np.random.default_rng(42)

    def contrast(image):  # ImageDataGenerator has no contrast option: the classic hook
        mean = image.mean(axis=(0, 1), keepdims=True)
        return np.clip((image - mean) * rng.uniform(1 - CONTRAST, 1 + CONTRAST) + mean, 0, 255)

    generator = ImageDataGenerator(
        horizontal_flip=True, rotation_range=ROTATION * 360, zoom_range=ZOOM,
        fill_mode="reflect", preprocessing_function=contrast,
    )  # fmt: skip
    size = config["image_size"]
    flow = generator.flow_from_directory(
        config["train_dir"], target_size=(size, size), batch_size=config["batch_size"],
        class_mode="sparse", interpolation="bilinear", seed=42,
    )  # fmt: skip
    return {"images_per_s": _rate(flow, config["warmup"], config["batches"])}


def _guide(config: dict) -> dict:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(42)
    if config["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    size = config["image_size"]
    dataset = keras.utils.image_dataset_from_directory(
        config["train_dir"], image_size=(size, size), batch_size=config["batch_size"], seed=42
    )
    augmentation = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=1),
            keras.layers.RandomRotation(ROTATION, fill_mode="reflect", seed=2),
            keras.layers.RandomZoom(ZOOM, fill_mode="reflect", seed=3),
            keras.layers.RandomContrast(CONTRAST, seed=4),
        ]
    )
    dataset = dataset.repeat().map(
        lambda x, y: (augmentation(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    batches = iter(dataset.prefetch(tf.data.AUTOTUNE))
    return {"images_per_s": _rate(batches, config["warmup"], config["batches"])}


def measure(config: dict) -> dict:
    return {"ours": _ours, "classic": _classic, "guide": _guide}[config["side"]](config)


def report(results: list[dict], work: common.Workspace) -> str:
    settings = SETTINGS[work.mode]
    rates = common.grouped(results, "images_per_s")
    ours = common.best(rates[SIDES[0][0]])  # images/s
    rows = [
        [name, common.spread(rates[name]), f"{ours / common.best(rates[name]):.2f}"]
        for name, _, _ in SIDES
        if name in rates
    ]
    skipped = {r["name"]: r["skipped"] for r in results if "skipped" in r}
    rows += [[name, "not measured: " + why, ""] for name, why in skipped.items()]
    first = next(r for r in results if r["side"] == "ours")
    decode = common.best([r["decode_s"] for r in results if r["side"] == "ours"], False)
    count = first["images"]
    first_epoch = count / (decode + count / ours)
    scan = common.best([r["scan_s"] for r in results if r["side"] == "ours"], False)

    def ratio(name, target=None):
        if name not in rates:
            return f"ours (determinism on) vs {name}: not measured"
        value = ours / common.best(rates[name])
        check = f": {common.verdict(value, target)}" if target else ""
        return f"ours (determinism on) vs {name}: **{value:.2f}x**{check}"

    lines = [
        "### Input pipeline throughput",
        "",
        f"{work.describe('big')}; {settings['image_size']} px, batch {settings['batch_size']}; "
        f"steady state over {settings['batches']} batches after {settings['warmup']} warm-up "
        f"batches; mean (min-max) of {len(rates[SIDES[0][0]])} round(s), each in a fresh "
        "process, sides alternating; ratios from each side's best round.",
        "",
        common.table(["pipeline", "images/s", "ours (det. on) / this"], rows),
        "",
        f"- {ratio(SIDES[2][0], 3.0)}",
        f"- {ratio(SIDES[3][0], 1.0)}",
        f"- {ratio(SIDES[4][0])}",
        f"- {ratio(SIDES[1][0], 0.9)} (determinism cost of our pipeline)",
        f"- ours, one-off decode of {count} images into memory (with the first batch): "
        f"{decode:.1f} s ({count / decode:,.0f} images/s); first epoch including it: "
        f"{first_epoch:,.0f} "
        f"images/s (computed); folder scan before it: {scan:.1f} s (cold).",
    ]
    lines.append(common.load_note(results))
    return "\n".join(lines)


if __name__ == "__main__":
    common.main_for(sys.modules[__name__])
