"""Metrics on a held-out split: loss, accuracy, top-k, per-class report, confusion matrix."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from keras_ft.training.decisions import Decisions
from keras_ft.training.distribute import predict_batch
from keras_ft.utils.text import printable

TTA_SHIFT = 0.05  # test-time shifts: a twentieth of the width and height, both ways


def trained_symmetries(data_config: dict, decisions: dict) -> tuple[str, ...]:
    """Which of `"flip"` and `"quarter_turns"` a run's training used, from its record's
    `data` and `decisions` (`keras_ft.training.decisions.Decisions.symmetries`)."""
    return Decisions.from_record(decisions).symmetries(data_config)


def shift(images: tf.Tensor, dx: float, dy: float) -> tf.Tensor:
    """Move a batch of images by (dx, dy) pixels, reflecting at the borders as augmentation does."""
    height, width = images.shape[1], images.shape[2]
    transform = tf.constant([[1.0, 0.0, -dx, 0.0, 1.0, -dy, 0.0, 0.0]], tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=tf.repeat(transform, tf.shape(images)[0], axis=0),
        output_shape=[height, width],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def predict_views(model, images, tta: bool = False, symmetries=()) -> np.ndarray:
    """Probabilities of a batch; with `tta`, their mean over test-time views.

    The views: the images, two copies shifted diagonally by `TTA_SHIFT` of the
    size (down-right and up-left), and the symmetries the run trained with
    (`trained_symmetries`): with `"flip"` the mirror images, with
    `"quarter_turns"` the images turned by 90, 180 and 270 degrees. 3 to 7
    forward passes per batch.
    """
    if not tta:
        return np.asarray(predict_batch(model, images))
    images = tf.cast(images, tf.float32)
    dx, dy = TTA_SHIFT * images.shape[2], TTA_SHIFT * images.shape[1]
    views = [images, shift(images, dx, dy), shift(images, -dx, -dy)]
    if "flip" in symmetries:
        views.append(tf.image.flip_left_right(images))
    if "quarter_turns" in symmetries:
        views.extend(tf.image.rot90(images, turns) for turns in (1, 2, 3))
    return np.mean([np.asarray(predict_batch(model, view)) for view in views], axis=0)


def predict_dataset(model, dataset, tta: bool = False, symmetries=()):
    """Run `model` over a dataset of (images, labels) batches; return (probabilities, labels).

    Each batch goes through Keras' compiled predict function, not an eager call:
    on a VGG16 test split that is over twice as fast. `tta` and `symmetries`:
    see `predict_views`.
    """
    probabilities, labels = [], []
    for images, batch_labels in dataset:
        probabilities.append(predict_views(model, images, tta, symmetries))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(probabilities), np.concatenate(labels)


def classification_metrics(
    probabilities: np.ndarray, labels: np.ndarray, class_names, top_k: int = 5
) -> dict:
    """Metrics of predicted `probabilities` (N, C) against integer `labels` (N,).

    Returns:
        A JSON-ready dict: `count`, `loss` (mean cross-entropy), `accuracy`,
        `top_k` and `top_k_accuracy`, `per_class` (precision, recall, f1,
        support per class name), `macro_f1` and `confusion_matrix`
        (rows: true class, columns: predicted, in `class_names` order).
    """
    num_classes = len(class_names)
    k = min(top_k, num_classes)
    eps = np.finfo(np.float32).eps
    picked = np.clip(probabilities[np.arange(len(labels)), labels], eps, 1.0)
    predicted = probabilities.argmax(axis=1)
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(num_classes), zero_division=0
    )
    return {
        "count": int(len(labels)),
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((predicted == labels).mean()),
        "top_k": k,
        "top_k_accuracy": float((top == labels[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=range(num_classes)).tolist(),
    }


def evaluate_model(
    model, dataset, class_names, top_k: int = 5, tta: bool = False, symmetries=()
) -> dict:
    """Evaluate `model` on a dataset of (images, labels) batches (`tta`: see `predict_views`)."""
    probabilities, labels = predict_dataset(model, dataset, tta, symmetries)
    return classification_metrics(probabilities, labels, class_names, top_k)


def shows_top_k(metrics: dict) -> bool:
    """Whether `metrics`' top-k accuracy says anything: top-k of k classes is always 1."""
    return metrics["top_k"] < len(metrics["per_class"])


def format_metrics(metrics: dict) -> str:
    """A plain-text report: headline numbers, per-class table, confusion matrix.

    Class names are shown with control characters escaped (see `keras_ft.utils.text.printable`).
    """
    names = [printable(name) for name in metrics["per_class"]]
    width = max(8, *(len(n) for n in names))
    kept = metrics.get("kept_model", "fine-tuned")  # a loaded run's metrics have none
    lines = [] if kept == "fine-tuned" else [f"model kept: the {kept}"]
    lines += [
        f"test loss: {metrics['loss']:.4f}",
        f"test accuracy: {metrics['accuracy']:.3f}",
        *(
            [f"test top-{metrics['top_k']} accuracy: {metrics['top_k_accuracy']:.3f}"]
            if shows_top_k(metrics)
            else []
        ),
        f"images: {metrics['count']}",
        "",
        f"{'class':<{width}}  precision  recall     f1  support",
    ]
    for name, row in zip(names, metrics["per_class"].values(), strict=True):
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}"
            f"  {row['f1']:5.3f}  {row['support']:7d}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max(4, *(len(n) for n in names))
    lines.append(" " * width + "".join(f"{n:>{cell + 1}}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell + 1}d}" for v in row))
    return "\n".join(lines)
