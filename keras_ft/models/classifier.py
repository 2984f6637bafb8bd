"""The classifier: raw 0-255 RGB in, preprocessing, backbone, new head, probabilities out.

Preprocessing lives inside the model so training, evaluation, export and
prediction can never disagree. It is made of standard Keras layers
(`preprocessing_layer`), so `model.keras` loads with `keras.saving.load_model`
in a Python without keras_ft. The backbone is always called with
`training=False`, and its BatchNormalization layers stay frozen after
unfreezing (unless `train_batchnorm`), so phase 2 does not wreck the statistics
it learned on ImageNet.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_ft.config import ModelConfig, is_count
from keras_ft.models.backbones import PREPROCESSING
from keras_ft.utils.errors import KerasFTError
from keras_ft.utils.text import did_you_mean

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_ft")
class Preprocess(keras.layers.Layer):
    """Map 0-255 RGB pixels the way a backbone's `preprocess_input` does.

    keras_ft's own layer: classifiers saved before `preprocessing_layer` built
    standard Keras layers hold it (and load with keras_ft, which registers it),
    and `reproduce` rebuilds it for their runs.

    Args:
        mode: `"caffe"` (RGB->BGR minus the ImageNet mean), `"tf"` (to [-1, 1]),
            `"torch"` (to [0, 1], then per-channel mean/std) or `"none"`.
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING:
            raise KerasFTError(
                f"Invalid `preprocessing`: expected one of {PREPROCESSING}, received {mode!r}."
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def preprocessing_layer(mode: str, layers: str = "keras") -> keras.layers.Layer:
    """The layer named `"preprocess"` that maps 0-255 RGB pixels for a backbone.

    With `layers="keras"` it is a standard Keras layer (no keras_ft class), so
    a saved classifier loads with plain `keras.saving.load_model`:

    - `"caffe"`: a frozen 1x1 `Conv2D` whose kernel permutes RGB to BGR and
      whose bias is minus the ImageNet mean. Each output is one input times
      1.0 plus zeros plus the bias, so on the CPU it equals `Preprocess`'s
      flip minus the mean bit for bit (a GPU's TensorFloat-32 convolutions
      may round the inputs first).
    - `"tf"`: `Rescaling(1 / 127.5, offset=-1)`.
    - `"torch"`: `Rescaling` with per-channel `scale=1 / (255 * std)` and
      `offset=-mean / std`.
    - `"none"`: `Identity`.

    `"tf"` and `"torch"` multiply where `Preprocess` divides: they agree with it
    to a float32 rounding, not bit for bit.

    Args:
        mode: `"caffe"`, `"tf"`, `"torch"` or `"none"` (see
            `keras_ft.models.backbones.PREPROCESSING`).
        layers: `"keras"`, or `"keras_ft"`: the `Preprocess` layer, as in runs
            recorded before `ModelConfig.preprocessing_layers` existed.

    Example:

    >>> layer = preprocessing_layer("tf")
    >>> layer(np.array([[[[0.0, 127.5, 255.0]]]], "float32"))  # [[[[-1.0, 0.0, 1.0]]]]
    """
    if layers == "keras_ft":
        return Preprocess(mode, name="preprocess")
    if mode == "caffe":
        bgr = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        return keras.layers.Conv2D(
            3,
            1,
            kernel_initializer=keras.initializers.Constant(bgr),
            bias_initializer=keras.initializers.Constant(-np.array(_CAFFE_MEAN_BGR)),
            trainable=False,
            name="preprocess",
        )
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")
    if mode == "torch":
        mean, std = np.array(_TORCH_MEAN), np.array(_TORCH_STD)
        scale, offset = 1 / (255 * std), -mean / std
        return keras.layers.Rescaling(scale.tolist(), offset=offset.tolist(), name="preprocess")
    return keras.layers.Identity(name="preprocess")


def pool_features(feature_map, pooling: str, prefix: str = ""):
    """Pool a `(H, W, C)` feature map to a vector the way the head does.

    Args:
        feature_map: a symbolic 4-D tensor.
        pooling: `"avg"`, `"max"`, `"avgmax"` (both, concatenated) or `"flatten"`.
        prefix: put before the layer names (to pool several maps in one model).
    """
    if pooling == "flatten":
        return keras.layers.Flatten(name=f"{prefix}flatten")(feature_map)
    if pooling == "avgmax":
        return keras.layers.Concatenate(name=f"{prefix}avg_max_pool")(
            [
                keras.layers.GlobalAveragePooling2D(name=f"{prefix}avg_pool")(feature_map),
                keras.layers.GlobalMaxPooling2D(name=f"{prefix}max_pool")(feature_map),
            ]
        )
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=f"{prefix}max_pool")(feature_map)
    return keras.layers.GlobalAveragePooling2D(name=f"{prefix}avg_pool")(feature_map)


def build_classifier(
    backbone: keras.Model, config: ModelConfig, preprocessing: str, synchronized: bool = False
) -> keras.Model:
    """Wrap `backbone` into a classifier taking raw 0-255 RGB images.

    Args:
        backbone: a headless model mapping `(H, W, 3)` images to feature maps.
        config: the head and input size.
        preprocessing: the mode the backbone's weights expect (`"caffe"`, `"tf"`,
            `"torch"` or `"none"`), built by `preprocessing_layer` as
            `config.preprocessing_layers` says.
        synchronized: compute the head's batch statistics over all replicas of
            a `tf.distribute` strategy (as one device would over the global batch).

    Returns:
        A functional `keras.Model` named `"classifier"` whose output is the
        softmax over `config.num_classes`. With `config.head == "linear"` the
        head is one Dense layer on the pooled features (no normalisation,
        dropout or hidden layers), for `FineTuner.fit` to set.
    """
    seed = config.seed
    inputs = keras.Input((*config.image_size, 3), name="image")
    x = preprocessing_layer(preprocessing, config.preprocessing_layers)(inputs)
    x = pool_features(backbone(x, training=False), config.pooling)
    if config.head == "linear":  # the probe: one Dense layer, its weights set by `fit`
        outputs = keras.layers.Dense(
            config.num_classes, activation="softmax", dtype="float32", name="predictions"
        )(x)
        return keras.Model(inputs, outputs, name="classifier")
    if config.normalize_features:
        x = keras.layers.BatchNormalization(name="feature_norm", synchronized=synchronized)(x)
    for i, units in enumerate(config.dense_units):
        x = keras.layers.Dense(
            units,
            activation="relu",
            name=f"head_dense_{i}",
            kernel_initializer=keras.initializers.GlorotUniform(seed + 1 + i),
        )(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        config.num_classes,
        activation="softmax",
        dtype="float32",
        name="predictions",
        kernel_initializer=keras.initializers.GlorotUniform(seed),
    )(x)
    return keras.Model(inputs, outputs, name="classifier")


_POOLING_LAYERS = ("flatten", "avg_pool", "max_pool", "avg_max_pool")


def split_at_features(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Split a classifier into (feature extractor, head) sharing its layers.

    The extractor maps images to pooled backbone features; the head maps those
    features to probabilities with the classifier's own head layers, so
    training the head trains the classifier.
    """
    index = max(i for i, layer in enumerate(model.layers) if layer.name in _POOLING_LAYERS)
    pooled = model.layers[index].output
    extractor = keras.Model(model.input, pooled, name="feature_extractor")
    features = keras.Input(pooled.shape[1:], name="features")
    x = features
    for layer in model.layers[index + 1 :]:
        x = layer(x)
    return extractor, keras.Model(features, x, name="head")


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a classifier built by `build_classifier`."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def freeze_backbone(model: keras.Model) -> None:
    """Phase 1: make the whole backbone non-trainable; the head (its feature
    BatchNormalization included) trains."""
    backbone_of(model).trainable = False
    _set_head_norm_trainable(model, True)


def _set_head_norm_trainable(model: keras.Model, trainable: bool) -> None:
    norm = feature_norm(model)
    if norm is not None:
        norm.trainable = trainable


def feature_norm(model: keras.Model) -> keras.layers.BatchNormalization | None:
    """The head's feature BatchNormalization; None with `normalize_features=False`."""
    return next((layer for layer in model.layers if layer.name == "feature_norm"), None)


def set_probe(model: keras.Model, probe, standardise: bool = False) -> None:
    """Make `model`'s head compute `probe` (a `keras_ft.models.probe.ProbeResult`) on its
    pooled features.

    By default the probe's standardisation is folded into the last layer's
    weights and the head's feature BatchNormalization (if any) is made the
    identity. With `standardise`, that layer standardises as the probe does
    instead (its moving mean and variance are the probe's, so inference is the
    same function) and the last layer takes the probe's weights on standardised
    features: the form to train from, since in training mode the layer uses
    each batch's own statistics, which the identity's folded weights do not expect.
    """
    norm = feature_norm(model)
    if standardise and norm is not None:
        # The layer divides by sqrt(variance + epsilon): the probe's scale, except for
        # features whose variance is below epsilon, which the kernel then compensates.
        mean, variance = probe.mean, np.maximum(probe.scale**2 - norm.epsilon, 0.0)
        kernel = probe.coef.T * (np.sqrt(variance + norm.epsilon) / probe.scale)[:, None]
        bias = probe.intercept
    else:
        kernel, bias = probe.folded()
        if norm is not None:
            mean = np.zeros(norm.moving_mean.shape)
            variance = np.full(norm.moving_variance.shape, 1 - norm.epsilon)
    if norm is not None:
        norm.gamma.assign(np.ones(norm.gamma.shape, "float32"))
        norm.beta.assign(np.zeros(norm.beta.shape, "float32"))
        norm.moving_mean.assign(mean.astype("float32"))
        norm.moving_variance.assign(variance.astype("float32"))
    model.get_layer("predictions").set_weights([kernel.astype("float32"), bias.astype("float32")])


def unknown_layer_message(unfreeze: str, backbone: str, names: list[str]) -> str:
    """The error for an `unfreeze` layer name that `backbone` (with layers `names`) lacks."""
    sample = ", ".join(names[-40::4])
    return (
        f"Invalid `unfreeze`: no layer named {unfreeze!r} in backbone '{backbone}'."
        f"{did_you_mean(str(unfreeze), names)} Pass 'all', a number of top layers, or a layer "
        f"name such as: {sample}."
    )


def unfreeze_backbone(
    model: keras.Model, unfreeze: str | int = "all", train_batchnorm: bool = False
) -> int:
    """Phase 2: make the backbone trainable from a point on, BatchNorm excepted by default.

    The head's feature BatchNormalization freezes too (inference mode, its
    statistics from phase 1). Left training, it would normalise each batch by
    that batch's statistics while its moving averages, which validation and
    prediction use, trail features that fine-tuning moves quickly: with a
    few hundred images (a few dozen steps) validation then fell to chance
    while training accuracy rose.

    Args:
        model: a classifier from `build_classifier`.
        unfreeze: `"all"`; a layer name, from which (inclusive) layers train,
            e.g. `"block5_conv1"`; or an int N, the top N backbone layers.
        train_batchnorm: also train the backbone's BatchNormalization layers
            from that point on. A trainable one runs in training mode in a
            training step (Keras 3 passes the outer `training=True` through
            the backbone's `training=False`): batch statistics, moving
            averages updated, scale and offset learned.

    Returns:
        The number of trainable weights in the backbone afterwards.
    """
    backbone = backbone_of(model)
    layers = backbone.layers
    names = [layer.name for layer in layers]
    if unfreeze == "all":
        start = 0
    elif isinstance(unfreeze, int) or is_count(unfreeze):
        start = max(0, len(layers) - int(unfreeze))
    elif unfreeze in names:
        start = names.index(unfreeze)
    else:
        raise KerasFTError(unknown_layer_message(unfreeze, backbone.name, names))
    backbone.trainable = True
    for i, layer in enumerate(layers):
        is_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= start and (train_batchnorm or not is_norm)
    _set_head_norm_trainable(model, False)
    return len(backbone.trainable_weights)
