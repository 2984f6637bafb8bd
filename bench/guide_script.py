"""The hand-written baseline: two-phase transfer learning as the Keras guide writes it.

Follows keras.io's "Transfer learning & fine-tuning" end-to-end example: a folder
read with `image_dataset_from_directory`, augmentation layers mapped over the
batches, a frozen base model called with `training=False`, global average
pooling, dropout and a new classifier; `fit`; then `base_model.trainable = True`,
recompile at a low learning rate and `fit` again. To compare like with like it
uses the toolkit's augmentation (flip, rotation, zoom, contrast) and optimizers
(Adam 1e-3, then SGD 1e-4 with momentum 0.9). It does not cache after the random
augmentation as the guide does, which would replay one augmented epoch forever.
"""

from __future__ import annotations

import time


def train(
    train_dir, test_dir, image_size, batch_size, head_epochs, finetune_epochs, weights, seed=42
) -> tuple[float, dict]:
    """Train VGG16 in two phases.

    Returns:
        `(test accuracy, info)`: info holds the seconds of each `fit` and of the test
        evaluation, and `val_accuracy`, the last fine-tuning epoch's validation accuracy.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    size = (image_size, image_size)
    train_ds, val_ds = keras.utils.image_dataset_from_directory(
        train_dir, validation_split=0.2, subset="both", seed=seed, image_size=size,
        batch_size=batch_size,
    )  # fmt: skip
    test_ds = keras.utils.image_dataset_from_directory(
        test_dir, image_size=size, batch_size=batch_size, shuffle=False
    )
    num_classes = len(train_ds.class_names)
    augmentation_layers = [
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomRotation(0.05, fill_mode="reflect"),
        keras.layers.RandomZoom(0.1, fill_mode="reflect"),
        keras.layers.RandomContrast(0.1),
    ]

    def data_augmentation(x):
        for layer in augmentation_layers:
            x = layer(x)
        return x

    train_ds = train_ds.map(
        lambda x, y: (data_augmentation(x), y), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)
    val_ds = val_ds.cache().prefetch(tf.data.AUTOTUNE)
    test_ds = test_ds.cache().prefetch(tf.data.AUTOTUNE)

    base_model = keras.applications.VGG16(
        weights=None, include_top=False, input_shape=(*size, 3)
    )  # weights="imagenet" in the guide; offline here
    if weights:
        base_model.load_weights(weights)
    base_model.trainable = False

    inputs = keras.Input(shape=(*size, 3))
    x = keras.applications.vgg16.preprocess_input(inputs)
    x = base_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    started = time.perf_counter()
    model.fit(train_ds, epochs=head_epochs, validation_data=val_ds, verbose=0)
    seconds = {"phase1_fit_s": time.perf_counter() - started}

    base_model.trainable = True
    model.compile(
        optimizer=keras.optimizers.SGD(1e-4, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    started = time.perf_counter()
    history = model.fit(train_ds, epochs=finetune_epochs, validation_data=val_ds, verbose=0)
    seconds["phase2_fit_s"] = time.perf_counter() - started
    started = time.perf_counter()
    _, accuracy = model.evaluate(test_ds, verbose=0)
    seconds["evaluate_s"] = time.perf_counter() - started
    val_accuracy = float(history.history["val_sparse_categorical_accuracy"][-1])
    return float(accuracy), {**seconds, "val_accuracy": val_accuracy}
