"""Every registry backbone trains bitwise reproducibly across processes, or is refused at start."""

import json
import sys

import keras
import pytest
import tensorflow as tf
from conftest import tiny_backbone

import keras_ft
from keras_ft.models.backbones import BACKBONES

PROBE = """
import json, sys
import keras, numpy as np, tensorflow as tf
import keras_ft
from keras_ft.models.backbones import BACKBONES
from keras_ft.models.classifier import unfreeze_backbone
from keras_ft.runs.reproducibility import weights_sha256
hashes = {}
for name, spec in BACKBONES.items():
    size = max(32, spec.min_size)
    tuner = keras_ft.FineTuner(name, weights=None, seed=int(sys.argv[1]))
    model = tuner.build((size, size), num_classes=2)
    unfreeze_backbone(model, "all")
    images = tf.random.stateless_uniform((4, size, size, 3), [1, 2], 0, 255)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    # An eager step: every kernel's forward and backward pass, under the op determinism that
    # FineTuner turned on (a kernel without a deterministic version raises here).
    with tf.GradientTape() as tape:
        labels = tf.constant([0, 1, 0, 1])
        losses = keras.losses.sparse_categorical_crossentropy(labels, model(images))
        loss = tf.reduce_mean(losses)
    grads = tape.gradient(loss, model.trainable_weights)
    optimizer.apply(grads, model.trainable_weights)
    hashes[name] = weights_sha256(model)
print(json.dumps(hashes))
"""


def probes(seed, count=2):
    """Run the probe in `count` separate processes at once; return each one's hashes."""
    import subprocess

    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.splitlines()[-1]))
    return results


def test_every_backbone_is_bitwise_reproducible_across_processes():
    first, second = probes(seed=3)
    assert set(first) == set(BACKBONES)
    assert first == second


def test_backbone_without_deterministic_kernel_is_refused_before_training(folder):
    @keras.saving.register_keras_serializable(package="tests")
    class NoDeterministicKernel(keras.layers.Layer):
        def call(self, x):
            @tf.custom_gradient
            def identity(x):
                def grad(upstream):
                    raise tf.errors.UnimplementedError(
                        None, None, "A deterministic GPU implementation is not available."
                    )

                return x, grad

            return identity(x)

    inputs = keras.Input((32, 32, 3))
    backbone = keras.Model(inputs, NoDeterministicKernel()(tiny_backbone()(inputs)), name="odd")
    data = keras_ft.ImageFolder(folder, image_size=32, batch_size=4, validation_split=0.0)
    tuner = keras_ft.FineTuner(backbone, preprocessing="tf", seed=0)
    with pytest.raises(
        keras_ft.KerasFTError, match="Backbone 'odd' cannot train deterministically on this device"
    ):
        tuner.fit(data, head_epochs=1, finetune_epochs=0, verbose=0)
    assert tuner.history.rows == []  # refused before the first epoch
