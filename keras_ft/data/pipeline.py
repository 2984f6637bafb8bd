"""tf.data building blocks: read, decode and resize images, split files by seed, batch.

Every image is decoded to 3-channel RGB as the scan checked it (`read_rgb`:
Pillow, for every format, also where TensorFlow has a decoder, so that what the
scan accepts is what training reads) and resized once, to uint8. The datasets
here run with `FIXED_PARALLELISM`, so the `map` stays parallel and in order
under op determinism.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import tensorflow as tf

from keras_ft.data.decode import open_image, pil_to_rgb, read_regular_file
from keras_ft.data.scan import ImageFile
from keras_ft.utils.errors import KerasFTError

AUTOTUNE = tf.data.AUTOTUNE
# tf.data's autotuner thread sleeps between rounds for doubling periods (up to a
# minute), and deleting an iterator waits for it to wake: measured here, the end of
# a `fit` often stalled 10-15 s. Without it, AUTOTUNE parallelism is the core count
# (at most 16) and prefetch buffers stay small. Set on the two sources every
# keras_ft dataset grows from (`ImageFolder._gathered`, `decoded_dataset`); options carry over.
FIXED_PARALLELISM = tf.data.Options()
FIXED_PARALLELISM.autotune.enabled = False


def read_rgb(path) -> np.ndarray:
    """Read an image file as an `(H, W, 3)` uint8 RGB array, exactly as the scan decoded it.

    The one reader of image files: training, evaluation and prediction all use
    it (see `keras_ft.data.decode`: regular files only, checksums checked, Pillow).
    """
    with open_image(read_regular_file(path)) as image:
        return pil_to_rgb(image)


def resize(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Resize an RGB image (any dtype) to `image_size`, returning uint8."""
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def decode_and_resize(contents: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Decode encoded JPEG/PNG/GIF/BMP bytes to RGB with TensorFlow's decoders and resize
    to `image_size` (uint8): the SavedModel's `serving_bytes`, where Pillow cannot run."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return resize(image, image_size)


def load_image(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Read one file (`read_rgb`) as a uint8 RGB image resized to `image_size`."""
    image = tf.numpy_function(
        lambda name: read_rgb(name.decode()), [path], tf.uint8, stateful=False
    )
    image.set_shape([None, None, 3])
    return resize(image, image_size)


def read_images(paths: list[str], image_size: tuple[int, int]) -> np.ndarray:
    """Read image files into an `(N, H, W, 3)` uint8 array exactly as training does."""
    arrays = [resize(read_rgb(path), image_size).numpy() for path in paths]
    return np.stack(arrays) if arrays else np.zeros((0, *image_size, 3), np.uint8)


def stable_fraction(seed: int, relpath: str) -> float:
    """A number in [0, 1) fixed by (seed, relative path): the split key of one file."""
    digest = hashlib.sha256(f"{seed}:{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_files(files, validation_split: float, seed: int, groups: str | None = None):
    """Split files into (train, validation) by `stable_fraction`.

    Each file's side depends only on (seed, its relative path), so adding
    images never moves an existing image between training and validation.
    With `groups` (a regular expression, see `DataConfig.validation_groups`),
    on (seed, its group's name) instead: a group's images fall on one side.
    """
    pattern = None if groups is None else re.compile(groups)
    train, validation = [], []
    for f in files:
        key = f.relpath if pattern is None else group_of(f, pattern)
        (validation if stable_fraction(seed, key) < validation_split else train).append(f)
    return train, validation


def group_of(file, pattern: re.Pattern) -> str:
    """The name of `file`'s group: `pattern`'s match in its relative path (its first
    parenthesised group, if it has one)."""
    match = pattern.search(file.relpath)
    name = match and (match.group(1) if pattern.groups else match.group(0))
    if not name:
        raise KerasFTError(
            f"validation_groups='{pattern.pattern}' finds no group in '{file.relpath}' (the "
            f"path of '{file.path}' in the data folder): every image needs one, to be held out "
            "with its group. Change the pattern so that it matches every '<class>/<file>' "
            "path, or rename the file."
        )
    return name


def read_batches(dataset) -> tuple[np.ndarray, np.ndarray, int, int]:
    """`(uint8 images, int labels, first batch size, classes)` of `ImageFolder.from_dataset`'s
    dataset; what cannot be read so is refused, saying what is expected."""
    if not isinstance(dataset.element_spec, tuple) or len(dataset.element_spec) != 2:
        raise KerasFTError(
            "A dataset for keras_ft yields (images, labels) batches; this one yields "
            f"{dataset.element_spec}."
        )
    images_spec, labels_spec = dataset.element_spec
    if images_spec.shape.rank != 4 or images_spec.shape[-1] != 3:
        raise KerasFTError(
            "A dataset for keras_ft yields batches of RGB images, shape (batch, height, width, "
            f"3); this one yields images of shape {images_spec.shape}. Batch it "
            "(dataset.batch(32)) and read RGB images (color_mode='rgb')."
        )
    one_hot = labels_spec.shape.rank == 2 and labels_spec.shape[-1] != 1
    if not one_hot and not (labels_spec.shape.rank == 1 and labels_spec.dtype.is_integer):
        raise KerasFTError(
            "A dataset for keras_ft yields int labels (label_mode='int') or one-hot ones "
            f"(label_mode='categorical'); this one yields {labels_spec.dtype.name} labels of "
            f"shape {labels_spec.shape}. Pass label_mode='int' or 'categorical'."
        )
    images, labels, low, high = [], [], np.inf, -np.inf
    for batch, batch_labels in dataset:  # uint8 batch by batch: a quarter of float32's memory
        batch = batch.numpy()
        low, high = min(low, batch.min()), max(high, batch.max())
        images.append(np.round(np.clip(batch, 0, 255)).astype(np.uint8))
        labels.append(batch_labels.numpy())
    if not images:
        raise KerasFTError("The dataset holds no images.")
    if low < 0 or not 1 < high <= 255:
        raise KerasFTError(
            f"The dataset's pixel values go from {low:g} to {high:g}; keras_ft expects pixel "
            "values from 0 to 255 (as image_dataset_from_directory gives them) and scales "
            "them for the backbone itself. Pass the images before any Rescaling."
        )
    labels = np.concatenate(labels)
    if one_hot and not (np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all()):
        raise KerasFTError(
            "Labels of shape (batch, K) must be one-hot, a single 1 per image "
            "(label_mode='categorical'); these hold other values. Pass int labels."
        )
    labels = labels.argmax(axis=1) if one_hot else labels
    if labels.min() < 0:
        raise KerasFTError(f"Labels are class indices from 0; received {labels.min()}.")
    num_classes = labels_spec.shape[-1] if one_hot else int(labels.max()) + 1
    return np.concatenate(images), labels, len(images[0]), num_classes


def decoded_dataset(files: list[ImageFile], image_size: tuple[int, int]) -> tf.data.Dataset:
    """(uint8 image, int32 label) pairs of `files`, decoded and resized in parallel, in order."""
    dataset = tf.data.Dataset.from_tensor_slices(
        ([f.path for f in files], np.array([f.label for f in files], np.int32))
    )
    return dataset.map(
        lambda path, label: (load_image(path, image_size), label),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    ).with_options(FIXED_PARALLELISM)


def evaluation_batches(decoded: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Float32 batches of decoded images, in order, with no augmentation."""
    dataset = decoded.map(lambda image, label: (tf.cast(image, tf.float32), label))
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
