"""Where the model looked: Grad-CAM (Selvaraju et al. 2017) on the backbone's last feature map.

For the class explained (the top-1 prediction by default), Grad-CAM weighs
each channel of a convolutional feature map by the mean gradient of that
class's score (its logit, before the softmax) with respect to it, sums the
weighted channels and keeps the positive part: a coarse map of the pixels
that raised the class, scaled to [0, 1] and resized to the image.

The feature map is the last 4-D output of the backbone that is not a pooling
(or padding) layer: for the registered backbones, the backbone's own output
(`include_top=False`), or for VGG the last convolution before its final
max-pooling (`block5_conv3`, twice as fine); for a custom backbone that ends
in a vector, the last layer before that which still has height and width.
Where that map is smaller than `MIN_CELLS` a side, the last map at least twice
as fine is taken instead: at 64 px EfficientNet-Lite0's output is 2x2, each
cell sees the whole image and the heat came out flat (half of it on each half
of images whose evidence was all in one), while `block6a_expand_activation`,
the input of its last downsampling, is 4x4 and localises.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_ft.models.classifier import backbone_of
from keras_ft.utils.errors import KerasFTError

# A pooling layer at the end of a backbone only coarsens the map before it (VGG's block5_pool);
# a padding layer (before a strided convolution) adds a border of zeros to it.
_SKIPPED = (
    keras.layers.InputLayer,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.ZeroPadding2D,
)
# A map with fewer cells a side than this is too coarse to show where the evidence is.
MIN_CELLS = 4


def feature_layer(backbone: keras.Model) -> keras.layers.Layer:
    """The layer whose feature map Grad-CAM weighs: the backbone's last layer with a 4-D
    `(N, H, W, C)` output, pooling and padding layers skipped; or, where that map is smaller than
    `MIN_CELLS` a side, the last layer whose map is at least twice as fine.

    Raises:
        KerasFTError: when no layer but the input has a height and a width.
    """
    maps = [
        layer
        for layer in backbone.layers
        if not isinstance(layer, _SKIPPED) and len(layer.output.shape) == 4
    ]
    if maps:
        last = maps[-1]
        height, width = last.output.shape[1:3]
        if height is None or width is None or min(height, width) >= MIN_CELLS:
            return last
        finer = [
            layer
            for layer in maps
            if layer.output.shape[1] >= 2 * height and layer.output.shape[2] >= 2 * width
        ]
        return finer[-1] if finer else last
    raise KerasFTError(
        f"Grad-CAM needs a convolutional feature map, but backbone '{backbone.name}' has no "
        "layer with a 4-D (batch, height, width, channels) output after its input. Use a "
        "backbone whose layers keep a spatial map, such as a registered one "
        "(`keras-ft backbones`)."
    )


class GradCAM:
    """Grad-CAM heatmaps of a classifier built by `keras_ft.models.classifier.build_classifier`.

    Args:
        model: the classifier (0-255 RGB in, probabilities out).

    Attributes:
        layer: the name of the backbone layer whose feature map is used.
    """

    def __init__(self, model: keras.Model):
        backbone = backbone_of(model)
        node = backbone._inbound_nodes[0]  # the backbone's call inside the classifier
        features = feature_layer(backbone)
        self.layer = features.name
        self._before = keras.Model(model.input, node.input_tensors[0])
        self._backbone = keras.Model(backbone.input, [features.output, backbone.output])
        # Grad-CAM differentiates the class score before the softmax: the logits of the
        # last Dense layer, computed from its input with its own weights.
        self._output = model.get_layer("predictions")
        self._after = keras.Model(node.output_tensors[0], [self._output.input, model.output])
        self.image_size = tuple(model.input_shape[1:3])

    def __call__(self, images, class_index=None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps and probabilities of a batch.

        Args:
            images: `(N, H, W, 3)` 0-255 RGB pixels at the model's input size.
            class_index: the class to explain, one int for all images or one
                per image; `None` explains each image's top-1 prediction.

        Returns:
            `(heatmaps, probabilities)`: `(N, H, W)` float32 in [0, 1], at the
            image size (all zeros where no position raised the class), and
            `(N, num_classes)`.
        """
        images = tf.convert_to_tensor(np.asarray(images, np.float32))
        with tf.GradientTape() as tape:
            maps, features = self._backbone(self._before(images, training=False), training=False)
            tape.watch(maps)
            hidden, probabilities = self._after(features, training=False)
            logits = tf.matmul(hidden, self._output.kernel) + self._output.bias
            if class_index is None:
                chosen = tf.argmax(probabilities, axis=1)
            else:
                chosen = tf.broadcast_to(tf.constant(class_index, tf.int64), [len(images)])
            score = tf.gather(logits, chosen, axis=1, batch_dims=1)
        gradients = tape.gradient(score, maps)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))
        cams = tf.image.resize(cams[..., None], self.image_size, method="bilinear")[..., 0]
        peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(cams, peak).numpy(), probabilities.numpy()
