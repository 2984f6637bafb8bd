"""The frozen backbone's features: computed once, batched for phase 1, and the head's
feature normalisation started from them."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_ft.models.classifier import feature_norm
from keras_ft.training.distribute import predict_batch
from keras_ft.utils.progress import uses_bars


def extract_features(extractor: keras.Model, dataset, verbose=0) -> tuple[np.ndarray, np.ndarray]:
    """The frozen backbone's features of every batch, in float32 (a mixed-precision backbone
    computes them in float16 or bfloat16), with a progress bar unless `verbose` is 0."""
    progress = None
    if verbose != 0:
        total = int(dataset.cardinality())
        progress = keras.utils.Progbar(  # on a terminal a bar, else one line at the end
            total if total >= 0 else None, verbose=1 if uses_bars(verbose) else 2, unit_name="batch"
        )
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(predict_batch(extractor, images), dtype=np.float32))
        labels.append(np.asarray(batch_labels))
        if progress is not None:
            progress.add(1)
    return np.concatenate(features), np.concatenate(labels)


def frozen_features(extractor: keras.Model, data, verbose=0) -> tuple:
    """The frozen backbone's features: (train, train labels, validation, validation labels).

    The training split in file order, unaugmented; the validation pair is
    `(None, None)` without a validation split.
    """
    if verbose != 0:
        print("Backbone features of the training and validation images, computed once:")
    train = extract_features(extractor, data.unaugmented_train(), verbose)
    validation = extract_features(extractor, data.validation, verbose) if data.validation else None
    return (*train, *(validation or (None, None)))


def augmented_copies(
    extractor: keras.Model, data, copies: int, verbose=0
) -> tuple[np.ndarray, np.ndarray]:
    """The frozen backbone's features of `copies` augmented copies of the training split:
    `(features, labels)`, `features` of shape `(copies, images, ...)`, copy k augmented as
    epoch k augments (`data.train_dataset`), in file order (`head_copies`)."""
    if verbose != 0:
        print(
            f"Backbone features of {copies} augmented copies of the training images, computed once:"
        )
    batches = data.train_dataset(0, copies, in_file_order=True)
    features, labels = extract_features(extractor, batches, verbose)
    count = len(data.train_files)
    return features.reshape(copies, count, *features.shape[1:]), labels[:count]


def start_feature_norm(model: keras.Model, features: np.ndarray) -> None:
    """Start the head's feature BatchNormalization from the training features' statistics.

    Done once, before a fresh phase 1, from the unaugmented training images
    (whether phase 1 then trains on cached features or on augmented images).

    Its moving mean and variance begin at 0 and 1, and the frozen backbone's
    features are nothing like that (VGG16's have a standard deviation of about
    14 and peaks near 400). They move 1 % a step, so with a few hundred
    images, whose phase 1 is a few dozen steps, validation and prediction
    would use statistics that are still mostly the initial ones. Starting
    them at the features' own mean and variance (as the linear probe
    standardises its features) makes them right from the first epoch. A
    model without the layer (`normalize_features=False`) is left as it is.
    """
    norm = feature_norm(model)
    if norm is None:
        return
    norm.moving_mean.assign(features.mean(axis=0).astype(np.float32))
    norm.moving_variance.assign(features.var(axis=0).astype(np.float32))


def feature_batches(
    cached: tuple[np.ndarray, np.ndarray],
    data,
    first: int,
    end: int,
    batch_size: int | None = None,
    replicas: int = 1,
) -> tf.data.Dataset:
    """Phase 1 on features computed once: batches of the frozen backbone's `cached` outputs.

    Where nothing augments them, the training images do not change between
    epochs, so neither do the backbone's features: computing them once makes
    every head epoch cost only the head. `cached` holds the features, of shape
    `(copies, images, ...)`, and labels of the training split in file order;
    with augmentation the copies are augmented ones (`augmented_copies`), and
    epoch e trains on copy e mod copies. Epochs `first` to `end - 1` are ordered as
    `data.train_dataset` orders them (and trims them for `replicas`), in
    batches of `batch_size` (default: the data's). User callbacks see the head
    model. One pipeline serves every epoch, as in `data.train_dataset`.
    """
    features, labels = cached
    numbers = np.arange(first, end, dtype=np.int64)
    orders = np.stack([data.epoch_order(epoch) for epoch in numbers]).astype(np.int64)
    orders = orders[:, : orders.shape[1] - orders.shape[1] % replicas]

    def gather(epoch, indices):
        batch = tf.numpy_function(
            lambda e, i: features[e % len(features)][i],
            [epoch, indices],
            tf.float32,
            stateful=False,
        )
        batch.set_shape([None, *features.shape[2:]])
        return batch, tf.gather(labels, indices)

    def one_epoch(epoch, order):
        order = tf.data.Dataset.from_tensor_slices(order)
        batches = order.batch(batch_size or data.config.batch_size)
        return batches.map(lambda indices: gather(epoch, indices))

    each_epoch = tf.data.Dataset.from_tensor_slices((numbers, orders))
    return each_epoch.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def features_cached(config, data) -> bool:
    """Whether phase 1 trains on the frozen backbone's features computed once: with
    `config.feature_cache`, unless augmentation changes them (`head_augment`)."""
    return config.feature_cache and not (data.config.augment and config.head_augment)


def head_copies(config, data) -> int:
    """The augmented copies whose features phase 1 trains on (`config.head_copies`): none
    where its features are the unaugmented ones (`features_cached`), and no more than its
    epochs (copy k serves epochs k, k + copies, ...)."""
    return 0 if features_cached(config, data) else min(config.head_copies, config.head_epochs)
