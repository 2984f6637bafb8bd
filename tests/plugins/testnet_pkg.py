"""A test-only backbone plugin, `testnet`: the cheapest real `keras-ft train`.

conftest puts this folder on `sys.path` and `PYTHONPATH`, so every keras_ft
process of the suite finds the `keras_ft.backbones` entry point declared in
`testnet_pkg-0.1.dist-info`, as it would a user's installed plugin. Tests of
whole processes (two processes, kill -9, two workers) train it: the path they
exercise is the same as with a registry backbone, in a third of the time.

With `KERAS_FT_TEST_KILL_AT_EPOCH=N` in the environment, the process checkpoints
after every epoch and SIGKILLs itself right after its checkpoint of epoch N is
complete: a kill -9 at a known point, which polling from outside cannot promise
with epochs this short.
"""

import os
import signal

import keras

from keras_ft import BackboneSpec


def testnet(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """Two seeded convolutions, the first with BatchNorm (whose moving statistics must resume)."""
    init = keras.initializers.GlorotUniform(seed=3)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, kernel_initializer=init, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Activation("relu", name="relu_a")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, kernel_initializer=init, name="conv_b")(x)
    x = keras.layers.Activation("relu", name="relu_b")(x)
    return keras.Model(inputs, x, name="tiny")


SPEC = BackboneSpec("testnet", testnet, "tf", default_size=32, finetune_from="conv_b")


def _kill_after_checkpoint(epoch: int) -> None:
    from keras_ft.training.checkpoint import Checkpoint

    Checkpoint.interval = 0.0  # a checkpoint after every epoch, the one to die after included
    write = Checkpoint.on_epoch_end

    def write_then_die(self, index, logs=None):
        write(self, index, logs)
        if index + 1 >= epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    Checkpoint.on_epoch_end = write_then_die


if "KERAS_FT_TEST_KILL_AT_EPOCH" in os.environ:
    _kill_after_checkpoint(int(os.environ["KERAS_FT_TEST_KILL_AT_EPOCH"]))
