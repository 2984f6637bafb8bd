"""CPU efficiency: achieved FLOP/s of VGG16 steps against a plain large matmul, per setting.

In each process (one per setting): a float32 matmul of N x N by N x N (the practical
peak of this machine under this setting), a VGG16 forward pass (inference, batch 32)
and a training step (every layer trainable, SGD), timed in interleaved rounds; best
round of each. With the default setting, each convolution layer is also timed alone
(conv + bias + ReLU, its own input shape) to show where the time goes.

FLOPs are counted from the layer shapes: a convolution's forward pass is
2 * out_h * out_w * k_h * k_w * c_in * c_out per image; a training step is the
forward pass plus the kernel gradient (the same again) plus the input gradient (the
same again, except for the first layer, which needs none). Pooling, ReLU, bias and
the small head are left out, so the figures slightly understate the work.

Settings: TensorFlow's defaults (oneDNN on, thread pools sized to the cores), op
determinism on, oneDNN off (TF_ENABLE_ONEDNN_OPTS=0), and explicit
`tf.config.threading` intra-/inter-op thread counts.

    python -m bench.cpu [--quick | --tiny]
"""

from __future__ import annotations

import sys
import time

from bench import common

SETTINGS = {
    "tiny": {"image_size": 32, "batch_size": 2, "matmul": 256, "rounds": 1, "steps": 1},
    "quick": {"image_size": 64, "batch_size": 32, "matmul": 2048, "rounds": 2, "steps": 1},
    "full": {"image_size": 64, "batch_size": 32, "matmul": 2048, "rounds": 3, "steps": 2},
}
VARIANTS = [  # name, environment, intra-op threads, inter-op threads, determinism
    ("TF defaults (oneDNN on, threads = cores)", {}, None, None, False),
    ("op determinism on", {}, None, None, True),
    ("oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)", {"TF_ENABLE_ONEDNN_OPTS": "0"}, None, None, False),
    ("intra-op 1, inter-op 1", {}, 1, 1, False),
    ("intra-op 4, inter-op 1 (oversubscribed)", {}, 4, 1, False),
]
PER_MODE = {"tiny": 1, "quick": 2, "full": len(VARIANTS)}  # the first N variants


def configs(work: common.Workspace) -> list[dict]:
    return [
        {"module": "cpu", "name": name, "env": env, "intra": intra, "inter": inter,
         "deterministic": det, "layers": i == 0, **SETTINGS[work.mode]}
        for i, (name, env, intra, inter, det) in enumerate(VARIANTS[: PER_MODE[work.mode]])
    ]  # fmt: skip


def conv_flops(model, batch: int) -> tuple[float, float]:
    """(forward, training-step) FLOPs of `model`'s convolutions for a batch."""
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    each = []
    for layer in convs:
        _, out_h, out_w, c_out = layer.output.shape
        k_h, k_w, c_in, _ = layer.kernel.shape
        each.append(2.0 * out_h * out_w * k_h * k_w * c_in * c_out * batch)
    forward = sum(each)
    return forward, 3 * forward - each[0]


def _best(function, rounds: int, steps: int) -> float:
    """Fastest seconds per call of `function` over `rounds` rounds of `steps` calls."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            function()
        best = min(best, (time.perf_counter() - started) / steps)
    return best


def measure(config: dict) -> dict:
    import tensorflow as tf

    if config["intra"]:
        tf.config.threading.set_intra_op_parallelism_threads(config["intra"])
    if config["inter"]:
        tf.config.threading.set_inter_op_parallelism_threads(config["inter"])
    if config["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    import keras

    size, batch, n = config["image_size"], config["batch_size"], config["matmul"]
    rounds, steps = config["rounds"], config["steps"]
    a, b = tf.random.normal((n, n), seed=1), tf.random.normal((n, n), seed=2)
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    backbone = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    model = keras.Sequential(
        [backbone, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = tf.random.uniform((batch, size, size, 3), 0, 255, seed=3)
    y = tf.zeros((batch,), tf.int32)
    forward = tf.function(lambda: tf.reduce_sum(model(x, training=False)))
    jobs = {
        "matmul": lambda: matmul().numpy(),
        "forward": lambda: forward().numpy(),
        "train": lambda: model.train_on_batch(x, y),
    }
    for job in jobs.values():  # trace and warm up
        job()
    seconds = {name: float("inf") for name in jobs}
    for _ in range(rounds):  # interleaved, so load changes fall on all three alike
        for name, job in jobs.items():
            seconds[name] = min(seconds[name], _best(job, 1, steps))
    forward_flops, train_flops = conv_flops(backbone, batch)
    result = {
        "matmul_gflops": 2.0 * n**3 / seconds["matmul"] / 1e9,
        "forward_gflops": forward_flops / seconds["forward"] / 1e9,
        "train_gflops": train_flops / seconds["train"] / 1e9,
        "forward_images_per_s": batch / seconds["forward"],
        "train_images_per_s": batch / seconds["train"],
    }
    if config["layers"]:
        result["layers"] = _per_layer(backbone, batch, rounds, steps)
    return result


def _per_layer(backbone, batch: int, rounds: int, steps: int) -> list[dict]:
    """GFLOP/s of each convolution layer run alone on its own input shape (forward)."""
    import keras
    import tensorflow as tf

    rows = []
    for layer in backbone.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        inputs = tf.random.uniform((batch, *layer.input.shape[1:]), seed=4)
        run = tf.function(lambda layer=layer, inputs=inputs: tf.reduce_sum(layer(inputs)))
        run()
        flops = conv_flops(keras.Sequential([keras.Input(layer.input.shape[1:]), layer]), batch)
        seconds = _best(lambda run=run: run().numpy(), rounds, steps)
        shape = "x".join(str(v) for v in layer.input.shape[1:])
        rows.append({"layer": layer.name, "input": shape, "gflops": flops[0] / seconds / 1e9,
                     "ms": seconds * 1e3})  # fmt: skip
    return rows


def report(results: list[dict], work: common.Workspace) -> str:
    settings = SETTINGS[work.mode]
    keys = ("matmul_gflops", "forward_gflops", "train_gflops")
    rows = []
    for name, *_ in VARIANTS:
        runs = [r for r in results if r["name"] == name]
        if not runs:
            continue
        matmul, forward, train = (common.mean([r[k] for r in runs]) for k in keys)
        rows.append([
            name, f"{matmul:.0f}", f"{forward:.0f} ({forward / matmul:.0%})",
            f"{train:.0f} ({train / matmul:.0%})",
            f"{common.mean([r['forward_images_per_s'] for r in runs]):.1f}",
            f"{common.mean([r['train_images_per_s'] for r in runs]):.1f}",
        ])  # fmt: skip
    layers = next(r["layers"] for r in results if "layers" in r)
    peak = next(r["matmul_gflops"] for r in results if "layers" in r)
    layer_rows = [
        [row["layer"], row["input"], f"{row['ms']:.1f}", f"{row['gflops']:.0f}",
         f"{row['gflops'] / peak:.0%}"]
        for row in layers
    ]  # fmt: skip
    lines = [
        "### CPU efficiency",
        "",
        f"VGG16 (weights=None), {settings['image_size']} px, batch {settings['batch_size']}; "
        f"matmul {settings['matmul']} x {settings['matmul']} float32; best of "
        f"{settings['rounds']} interleaved round(s) of {settings['steps']} call(s), one process "
        "per setting. GFLOP/s (share of that process's matmul).",
        "",
        common.table(
            [
                "setting",
                "matmul",
                "VGG16 forward",
                "VGG16 training step",
                "forward images/s",
                "training images/s",
            ],
            rows,
        ),  # fmt: skip
        "",
        "Each convolution alone (conv + bias + ReLU, forward, TF defaults), against the "
        f"matmul's {peak:.0f} GFLOP/s:",
        "",
        common.table(
            ["layer", "input (HxWxC)", "ms per batch", "GFLOP/s", "of matmul"], layer_rows
        ),  # fmt: skip
    ]
    lines += ["", common.load_note(results)]
    return "\n".join(lines)


if __name__ == "__main__":
    common.main_for(sys.modules[__name__])
