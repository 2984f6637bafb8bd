"""Quantization-friendly copies of a classifier, for LiteRT's dynamic and int8 exports.

`split_head` folds the head's feature normalisation into its Dense layer by
hand and puts the rows with large weights in a layer of their own;
`int8_kernels` rounds the convolution kernels to the int8 grid the converter
uses and takes the mean error of that rounding out of their biases. Both
compute the classifier's function (up to the rounding `int8_kernels` makes on
purpose). See `keras_ft.runs.deploy.export`.
"""

from __future__ import annotations

import numpy as np

from keras_ft.runs.parity import PARITY_BATCH


def split_head(model, ratio: float = 4.0):
    """The classifier with a head that quantizes well, computing the same function.

    The converter folds the head's feature BatchNormalization into the next
    Dense layer: its weights are multiplied, per input feature, by the
    normalisation's scale, which is ~30 for features that were nearly
    constant in training (1 / sqrt(epsilon)). Those rows then set each output's
    int8 range and the other weights keep a few levels: a run that is 92%
    accurate in float32 loses 3-4 points. Here the fold is done by hand and
    the rows whose largest weight is above `ratio` times the median row's go
    to a Dense layer of their own; the two are added.

    Returns:
        `(model, description)`; `(model, None)` unchanged when there is no
        feature normalisation or no row to split off.
    """
    import keras

    names = [layer.name for layer in model.layers]
    if "feature_norm" not in names:
        return model, None
    index = names.index("feature_norm")
    norm = model.layers[index]
    dense = next(x for x in model.layers[index + 1 :] if isinstance(x, keras.layers.Dense))
    gamma, beta, mean, variance = (np.asarray(w) for w in norm.get_weights())
    scale = gamma / np.sqrt(variance + norm.epsilon)
    kernel, bias = dense.get_weights()
    folded, folded_bias = scale[:, None] * kernel, (beta - mean * scale) @ kernel + bias
    rows = np.abs(folded).max(axis=1)
    large = rows > ratio * np.median(rows)
    if not large.any():
        return model, None
    parts = []
    for name, group in (("large", np.flatnonzero(large)), ("rest", np.flatnonzero(~large))):
        layer = keras.layers.Dense(kernel.shape[1], use_bias=name == "rest", name=name)
        take = keras.layers.Lambda(lambda x, group=group: keras.ops.take(x, group, axis=-1))
        parts.append(layer(take(norm.input)))
        layer.set_weights([folded[group]] + ([folded_bias] if name == "rest" else []))
    x = keras.layers.Activation(dense.activation, dtype="float32")(keras.layers.Add()(parts))
    for layer in model.layers[model.layers.index(dense) + 1 :]:
        if not isinstance(layer, keras.layers.Dropout):  # inference: dropout does nothing
            x = layer(x)
    description = (
        f"feature_norm folded into {dense.name}, whose {int(large.sum())} of {len(rows)} "
        f"rows with weights above {ratio:g}x the median row's are a separate layer"
    )
    return keras.Model(model.input, x, name=model.name), description


def _conv_layers(model):
    """`(container, layer)` for each Conv2D and DepthwiseConv2D of `model` and of the models
    it calls (the backbone); deeper ones are left out."""
    import keras

    convolutions = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    for layer in model.layers:
        inner = layer.layers if isinstance(layer, keras.Model) else [layer]
        owner = layer if isinstance(layer, keras.Model) else model
        yield from ((owner, x) for x in inner if isinstance(x, convolutions))


def _mean_inputs(model, layers, pixels: np.ndarray) -> dict:
    """Each layer's input averaged over the images, rows and columns: `{name: (C,)}`."""
    import keras

    feeds = {}  # container -> a model from `model`'s input to the container's input
    for container, _ in layers:
        if container is model:
            feeds[container.name] = None
        elif container.name not in feeds:
            node = container._inbound_nodes[0]  # the sub-model's call inside `model`
            feeds[container.name] = keras.Model(model.input, node.input_tensors[0])
    sums = {}
    for name, feed in feeds.items():
        container = model if feed is None else model.get_layer(name)
        chosen = [layer for owner, layer in layers if owner is container]
        pooled = [keras.layers.GlobalAveragePooling2D()(layer.input) for layer in chosen]
        means = keras.Model(container.input, pooled)
        for start in range(0, len(pixels), PARITY_BATCH):
            batch = pixels[start : start + PARITY_BATCH].astype(np.float32)
            if feed is not None:
                batch = feed.predict_on_batch(batch)
            outputs = means.predict_on_batch(batch)
            outputs = outputs if len(chosen) > 1 else [outputs]
            for layer, output in zip(chosen, outputs, strict=True):
                sums[layer.name] = sums.get(layer.name, 0.0) + np.asarray(output, np.float64).sum(0)
    return {name: total / len(pixels) for name, total in sums.items()}


def _consumer(layer):
    """The one layer that reads `layer`'s output, or None."""
    consumers = [node.operation for node in layer._outbound_nodes]
    return consumers[0] if len(consumers) == 1 else None


def int8_kernels(model, pixels: np.ndarray):
    """A copy of `model` with its convolution kernels rounded as full-integer conversion
    rounds them, and the error that rounding makes on average taken out of their biases.

    The converter stores each kernel in int8, per output channel (symmetric,
    scale = largest absolute weight / 127). On images with large areas of one
    colour, such as a digit's black background, a kernel sums a constant input
    over its taps, and the rounding errors of its weights add up to a constant
    shift of its output there, which the float kernel did not make. Where a
    BatchNormalization with a large gain follows (up to ~50 in
    EfficientNet-Lite0's first blocks), the shift is multiplied. On a Lite0 run
    on the digits sample, int8 kernels alone (float activations) moved the
    pooled features by 15% and changed 6% of the predictions.

    Here each kernel is rounded to the grid the converter uses (so converting
    changes it no further), and its expected output change on the calibration
    images, `(W_int8 - W) . E[x]` per output channel ("bias correction", Nagel
    et al., Data-Free Quantization, 2019), is subtracted from its bias, or
    added to the moving mean of the BatchNormalization that reads it. A kernel
    with neither is left as it is. On that run the features then moved by 5%
    and every prediction was kept.

    Args:
        model: the classifier (not changed).
        pixels: calibration images, `(N, H, W, 3)` 0-255 RGB.

    Returns:
        `(copy, description)`; the copy computes what the int8 file will, up to
        the rounding of activations.
    """
    import keras

    copy, preprocessing = _caffe_as_convolution(model)
    layers = [
        (container, layer)
        for container, layer in _conv_layers(copy)
        if getattr(layer, "groups", 1) == 1
    ]
    means = _mean_inputs(copy, layers, pixels)
    corrected = 0
    for _, layer in layers:
        kernel = np.asarray(layer.kernel, np.float64)
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        # Per output channel: (kh, kw, in, out) -> out; depthwise (kh, kw, C, m) -> (C, m).
        axes = (0, 1) if depthwise else (0, 1, 2)
        scale = np.abs(kernel).max(axis=axes, keepdims=True) / 127
        scale[scale == 0] = 1.0
        rounded = np.round(kernel / scale) * scale
        mean = means[layer.name]
        if depthwise:
            shift = np.einsum("hwcm,c->cm", rounded - kernel, mean).reshape(-1)
        else:
            shift = np.einsum("hwio,i->o", rounded - kernel, mean)
        norm = None if layer.use_bias else _consumer(layer)
        if layer.use_bias:
            layer.bias.assign((np.asarray(layer.bias, np.float64) - shift).astype("float32"))
        elif isinstance(norm, keras.layers.BatchNormalization) and norm.axis in (-1, 3):
            moving_mean = np.asarray(norm.moving_mean, np.float64)
            norm.moving_mean.assign((moving_mean + shift).astype("float32"))
        else:
            continue
        layer.kernel.assign(rounded.astype("float32"))
        corrected += 1
    description = (
        f"{corrected} of {len(layers)} convolution kernels rounded to their int8 grid, each "
        f"one's mean output change on the {len(pixels)} calibration images taken out of its "
        "bias (or the moving mean of the BatchNormalization after it)"
    )
    if preprocessing:
        description = f"{preprocessing}; {description}"
    return copy, description


def _caffe_as_convolution(model):
    """A copy of `model` whose caffe-style `Preprocess` layer is a 1x1 convolution.

    Caffe preprocessing (VGG's: RGB to BGR, minus the ImageNet mean) by the
    `Preprocess` layer of runs recorded before `preprocessing_layers` existed
    reverses the channel axis. The converter gives the int8 reverse an output
    scale and zero point other than its input's, while the int8 kernel copies
    the bytes as they are, so every pixel reached the first convolution ~100
    levels off (a 64 px VGG16 digits run: its first layer's output 35% off,
    3 points of test accuracy lost). The same map as a 1x1 convolution (what
    `keras_ft.models.classifier.preprocessing_layer` builds for newer runs: a permutation
    with weights 1 and the mean as bias, exact in float32 and in int8)
    quantizes like any other layer.

    Returns:
        `(copy, description)`; the description is empty when there was nothing to replace.
    """
    import keras

    from keras_ft.models.classifier import Preprocess, preprocessing_layer

    replaced = []

    def clone(layer):
        if isinstance(layer, Preprocess) and layer.mode == "caffe":
            replaced.append(layer.name)
            return preprocessing_layer("caffe")
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer, target in zip(model.layers, copy.layers, strict=True):
        if layer.name not in replaced:
            target.set_weights(layer.get_weights())
    description = (
        "the caffe Preprocess layer (RGB to BGR, minus the mean) as a 1x1 convolution"
        if replaced
        else ""
    )
    return copy, description
