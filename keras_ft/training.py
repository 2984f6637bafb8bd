"""The two-phase fit: head on a frozen backbone, then fine-tuning with SGD momentum."""

from __future__ import annotations

import keras
import numpy as np

from keras_ft.config import TrainingConfig
from keras_ft.model import freeze_backbone, split_at_features, unfreeze_backbone

PHASES = ("head", "finetune")


class TrainingHistory:
    """Per-epoch metrics of both phases on one epoch axis.

    Attributes:
        history: like `keras.callbacks.History.history`, a dict of lists, plus
            `"epoch"` and `"phase"` (`"head"` or `"finetune"`) for each epoch.
    """

    def __init__(self, rows: list[dict] | None = None):
        self.rows = list(rows or [])

    @property
    def history(self) -> dict[str, list]:
        keys = dict.fromkeys(key for row in self.rows for key in row)
        return {key: [row.get(key) for row in self.rows] for key in keys}

    def extend(self, keras_history: keras.callbacks.History, phase: str) -> None:
        for i, epoch in enumerate(keras_history.epoch):
            row = {"epoch": epoch + 1, "phase": phase}
            row.update({k: float(v[i]) for k, v in keras_history.history.items()})
            self.rows.append(row)


def compile_for_phase(
    model: keras.Model, phase: str, config: TrainingConfig, num_classes: int
) -> None:
    """Compile `model` for `phase`: Adam at `head_lr`, or SGD momentum at `finetune_lr`."""
    if phase == "head":
        optimizer = keras.optimizers.Adam(learning_rate=config.head_lr)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=config.finetune_lr, momentum=config.momentum)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(
                k=min(5, num_classes), name="top_k_accuracy"
            ),
        ],
        # XLA has no deterministic kernels for some ops; keep graphs plain when asked to replay.
        jit_compile=False if config.deterministic else "auto",
    )


def fit_two_phase(
    model: keras.Model, data, config: TrainingConfig, callbacks=(), verbose="auto"
) -> TrainingHistory:
    """Train `model` on `data` (an `ImageFolder`) in two phases.

    Phase 1 freezes the backbone and trains the head for `config.head_epochs`
    (on features computed once, when there is no augmentation and
    `config.feature_cache` is on: see `fit_head_on_features`).
    Phase 2 unfreezes the backbone per `config.unfreeze` (BatchNormalization
    stays frozen), recompiles with SGD momentum and trains for
    `config.finetune_epochs`, continuing the epoch count.

    Returns:
        A `TrainingHistory` covering both phases.
    """
    history = TrainingHistory()
    plan = (
        ("head", 0, config.head_epochs),
        ("finetune", config.head_epochs, config.finetune_epochs),
    )
    for phase, start, epochs in plan:
        if not epochs:
            continue
        if phase == "head":
            freeze_backbone(model)
            if config.feature_cache and not data.config.augment:
                history.extend(fit_head_on_features(model, data, config, callbacks, verbose), phase)
                continue
        else:
            unfreeze_backbone(model, config.unfreeze)
        compile_for_phase(model, phase, config, data.num_classes)
        result = model.fit(
            data.train_dataset(start, epochs),
            epochs=start + epochs,
            initial_epoch=start,
            steps_per_epoch=data.steps_per_epoch,
            validation_data=data.validation,
            shuffle=False,  # the dataset is already shuffled per epoch, from the seed
            callbacks=list(callbacks),
            verbose=verbose,
        )
        history.extend(result, phase)
    return history


def _features(extractor: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(extractor(images, training=False)))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(features), np.concatenate(labels)


def fit_head_on_features(
    model: keras.Model, data, config: TrainingConfig, callbacks=(), verbose="auto"
) -> keras.callbacks.History:
    """Phase 1 without augmentation: run the frozen backbone once, then train the head.

    The training images do not change between epochs, so neither do the
    backbone's features: computing them once makes every head epoch cost
    only the head. The head shares the classifier's layers, so the trained
    weights are the classifier's. User callbacks see the head model here.
    """
    extractor, head = split_at_features(model)
    train = _features(extractor, data.unaugmented_train())
    validation = _features(extractor, data.validation) if data.validation is not None else None
    compile_for_phase(head, "head", config, data.num_classes)
    return head.fit(
        *train,
        batch_size=data.config.batch_size,
        epochs=config.head_epochs,
        validation_data=validation,
        shuffle=True,
        callbacks=list(callbacks),
        verbose=verbose,
    )
