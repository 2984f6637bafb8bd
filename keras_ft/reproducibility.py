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
    """SHA-256 of each file's content, by relative path, in path order."""
    hashes = {}
    for f in sorted(files, key=lambda f: f.relpath):
        with open(f.path, "rb") as handle:
            hashes[f.relpath] = hashlib.sha256(handle.read()).hexdigest()
    return hashes


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
