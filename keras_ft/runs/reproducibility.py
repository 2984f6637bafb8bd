"""Seeding, op determinism, environment capture, weight hashing and data fingerprints."""

from __future__ import annotations

import hashlib
import os
import platform
import random
import sys

import keras
import numpy as np
import tensorflow as tf

GUARANTEE = (
    "Bitwise identical final weights for the same seed, data, configuration, "
    "library versions and hardware kind, on a single device with op determinism on. "
    "Across other versions, hardware or several devices, results agree only to "
    "floating-point tolerance."
)
# The largest difference of any final weight between one device and two replicas
# at the same global batch, without dropout: tests/test_distribute.py measures
# 2.2e-08 on a short run (two logical CPUs); this leaves a margin.
REPLICA_TOLERANCE = 1e-6


def guarantee(strategy: str = "none", replicas: int = 1) -> str:
    """What reproducibility holds for a run under `strategy` with `replicas` replicas."""
    if replicas == 1:
        return GUARANTEE
    return (
        f"Trained on {replicas} replicas ({strategy}): gradients and batch statistics are "
        "summed over replicas in another order than on one device, so the final weights "
        "match a one-device run with the same global batch only within floating-point "
        f"tolerance (measured without dropout: every weight within {REPLICA_TOLERANCE:g} "
        "after a short run; the gap can grow with the number of steps). Dropout draws its "
        "masks per replica, so with dropout the runs differ more. Bitwise replay holds on "
        "a single device."
    )


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; turn on op determinism if asked.

    Op determinism is process-wide and cannot be turned off again once on.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def weights_sha256(model: keras.Model) -> str:
    """SHA-256 over every weight of `model`, in order: its dtype, shape and bytes.

    Variable names are left out: Keras makes them unique per process
    (`dense_1` ...), so the same weights reloaded elsewhere keep the same hash.
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def file_hashes(files) -> dict[str, str]:
    """SHA-256 of each file's content (computed by the scan), by relative path, in path order."""
    return {f.relpath: f.sha256 for f in sorted(files, key=lambda f: f.relpath)}


def fingerprint(hashes: dict[str, str]) -> str:
    """One SHA-256 over (relative path, content hash) pairs from `file_hashes`, in path order."""
    digest = hashlib.sha256()
    for relpath in sorted(hashes):
        digest.update(f"{relpath}|{hashes[relpath]}\n".encode())
    return digest.hexdigest()


def environment() -> dict:
    """Library versions and devices: what a bitwise guarantee depends on."""
    build = tf.sysconfig.get_build_info()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }


def compare_files(recorded: dict[str, str], current: dict[str, str]) -> dict[str, list[str]]:
    """Added, removed and changed relative paths between two `file_hashes` results."""
    return {
        "added": sorted(set(current) - set(recorded)),
        "removed": sorted(set(recorded) - set(current)),
        "changed": sorted(p for p in set(recorded) & set(current) if recorded[p] != current[p]),
    }


def check_deterministic_gradients(model: keras.Model, backbone_name: str) -> None:
    """Run one forward and backward pass on a tiny batch before any training.

    Under op determinism, an op with no deterministic kernel on this device
    (depthwise convolution backprop on some GPUs and TF versions, for one)
    raises `UnimplementedError` when it first runs. Probing here turns that
    into a clear refusal at the start instead of a crash mid-training.
    """
    images = tf.zeros((1, *model.input_shape[1:]), tf.float32)
    try:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=False))  # no state changes
        tape.gradient(loss, model.trainable_weights)
    except tf.errors.UnimplementedError as error:
        from keras_ft.utils.errors import KerasFTError

        raise KerasFTError(
            f"Backbone '{backbone_name}' cannot train deterministically on this device: "
            f"{error.message.splitlines()[0]} Pass deterministic=False (--no-determinism) to "
            "train without the bitwise guarantee, or choose another backbone."
        ) from None
