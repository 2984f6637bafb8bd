"""classification_metrics and format_metrics on hand-made probabilities."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tensorflow as tf

from keras_ft.runs.evaluation import classification_metrics, evaluate_model, format_metrics

CLASSES = ("ant", "bee", "cow")
#        true  probabilities          predicted  top-2
CASES = [
    (0, [0.7, 0.2, 0.1]),  # 0 right
    (0, [0.3, 0.6, 0.1]),  # 1 wrong, in top-2
    (1, [0.1, 0.8, 0.1]),  # 1 right
    (2, [0.2, 0.3, 0.5]),  # 2 right
    (2, [0.5, 0.3, 0.2]),
]  # 0 wrong, not in top-2
LABELS = np.array([label for label, _ in CASES])
PROBABILITIES = np.array([p for _, p in CASES], np.float32)


@pytest.fixture
def metrics() -> dict:
    return classification_metrics(PROBABILITIES, LABELS, CLASSES, top_k=2)


def test_accuracy_and_count(metrics):
    assert metrics["count"] == 5
    assert metrics["accuracy"] == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    ("top_k", "reported", "expected"),
    [
        (1, 1, 3 / 5),
        (2, 2, 4 / 5),
        (3, 3, 5 / 5),
        (5, 3, 5 / 5),  # more than the number of classes: clamped
    ],
)
def test_top_k_accuracy(top_k, reported, expected):
    metrics = classification_metrics(PROBABILITIES, LABELS, CLASSES, top_k=top_k)
    assert metrics["top_k"] == reported
    assert metrics["top_k_accuracy"] == pytest.approx(expected)


def test_loss_is_mean_cross_entropy(metrics):
    one_hot = np.eye(3)[LABELS]
    expected = -np.mean(np.sum(one_hot * np.log(PROBABILITIES.astype(np.float64)), axis=1))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.2])), rel=1e-6)


def test_loss_is_finite_when_the_true_class_gets_zero():
    probabilities = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    metrics = classification_metrics(probabilities, np.array([1, 1]), ("a", "b"))
    assert np.isfinite(metrics["loss"])
    assert metrics["loss"] == pytest.approx(-np.log(np.finfo(np.float32).eps) / 2)


def test_per_class_report(metrics):
    per_class = metrics["per_class"]
    assert list(per_class) == list(CLASSES)
    ant, bee, cow = per_class["ant"], per_class["bee"], per_class["cow"]
    # ant: predicted for cases 0 and 4, one right; two true ants, one found.
    assert ant == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    # bee: predicted for cases 1 and 2, one right; the one bee is found.
    assert bee == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    # cow: predicted once, right; two cows, one found.
    assert cow == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert metrics["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert all(isinstance(row["support"], int) for row in per_class.values())


def test_confusion_matrix_rows_are_true_columns_are_predicted(metrics):
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_class_never_predicted_and_never_present_gives_zeros_without_warning():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics(probabilities, np.array([0, 1]), CLASSES)
    assert metrics["per_class"]["cow"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_metrics_are_json_ready(metrics):
    assert json.loads(json.dumps(metrics)) == metrics


def test_format_metrics(metrics):
    text = format_metrics(metrics)
    lines = text.splitlines()
    assert "test accuracy: 0.600" in lines
    assert "test top-2 accuracy: 0.800" in lines
    assert f"test loss: {metrics['loss']:.4f}" in lines
    every_class = classification_metrics(PROBABILITIES, LABELS, CLASSES, top_k=5)  # top-3 of 3
    assert "top-" not in format_metrics(every_class)  # always 1: not shown
    assert "images: 5" in lines
    assert "confusion matrix (rows: true, columns: predicted)" in text
    matrix_rows = lines[lines.index("confusion matrix (rows: true, columns: predicted)") + 2 :]
    assert [line.split() for line in matrix_rows] == [
        ["ant", "1", "1", "0"],
        ["bee", "0", "1", "0"],
        ["cow", "1", "0", "1"],
    ]
    ant_row = next(line for line in lines if line.startswith("ant ") and "." in line)
    assert ant_row.split() == ["ant", "0.500", "0.500", "0.500", "2"]


def test_format_metrics_escapes_control_characters_in_class_names():
    names = ("\x1b[2Jant", "bee\r", "cow")
    text = format_metrics(classification_metrics(PROBABILITIES, LABELS, names, top_k=2))
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert lines[-3].split() == ["\\x1b[2Jant", "1", "1", "0"]
    assert lines[-2].split() == ["bee\\r", "0", "1", "0"]
    assert lines[-4].split() == ["\\x1b[2Jant", "bee\\r", "cow"]


class FixedModel:
    """Returns fixed probabilities batch by batch, like a Keras model's `predict_on_batch`."""

    def __init__(self, probabilities):
        self.probabilities = probabilities
        self.seen = 0

    def predict_on_batch(self, images):
        batch = self.probabilities[self.seen : self.seen + len(images)]
        self.seen += len(images)
        return tf.constant(batch)


def test_evaluate_model_runs_over_batches():
    images = np.zeros((5, 4, 4, 3), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, LABELS.astype(np.int32))).batch(2)
    metrics = evaluate_model(FixedModel(PROBABILITIES), dataset, CLASSES, top_k=2)
    assert metrics == classification_metrics(PROBABILITIES, LABELS, CLASSES, top_k=2)


def test_shift_moves_images_by_whole_pixels_and_reflects_at_borders():
    from keras_ft.runs.evaluation import shift

    images = np.zeros((1, 8, 8, 3), np.float32)
    images[0, 2, 5] = 255.0  # row 2, column 5
    moved = shift(tf.constant(images), 2.0, 1.0).numpy()
    assert np.argwhere(moved[0, ..., 0] > 0).tolist() == [[3, 7]]
    back = shift(tf.constant(images), -3.0, 0.0).numpy()
    # Columns 5-7 of the output read columns 8-10, reflected: 7, 6, 5 (the pixel again).
    assert np.argwhere(back[0, ..., 0] > 0).tolist() == [[2, 2], [2, 7]]


def test_trained_symmetries_read_the_run_settings():
    from keras_ft.runs.evaluation import trained_symmetries

    assert trained_symmetries({"augment": True, "flip": True}, {}) == ("flip",)
    assert trained_symmetries({"augment": False, "flip": True, "quarter_turns": True}, {}) == ()
    assert trained_symmetries({"augment": True, "flip": False}, {}) == ()
    assert trained_symmetries({"augment": True, "flip": "auto"}, {"flip": {"flip": True}}) == (
        "flip",
    )
    assert trained_symmetries({"augment": True, "flip": "auto"}, {"flip": {"flip": False}}) == ()
    decided = {"flip": {"flip": False}, "quarter_turns": {"quarter_turns": True}}
    both_auto = {"augment": True, "flip": "auto", "quarter_turns": "auto"}
    assert trained_symmetries(both_auto, decided) == ("quarter_turns",)
    assert trained_symmetries({"augment": True, "quarter_turns": True}, {}) == (
        "flip",  # a record from before `flip` was recorded flipped: its default then
        "quarter_turns",
    )


def test_tta_averages_shifted_views_and_the_symmetries_the_run_trained_with():
    import keras

    from keras_ft.runs.evaluation import predict_views

    ops = keras.ops
    inputs = keras.Input((20, 20, 3))
    sides = keras.layers.Lambda(
        lambda x: ops.softmax(
            ops.stack([ops.mean(x[:, :, :10], (1, 2, 3)), ops.mean(x[:, :, 10:], (1, 2, 3))], 1)
            / 10.0
        ),
        output_shape=(2,),
    )(inputs)
    model = keras.Model(inputs, sides)
    images = np.zeros((2, 20, 20, 3), np.float32)
    images[:, :, :10] = 255.0  # bright on the left: class 0
    plain = predict_views(model, images)
    shifted = predict_views(model, images, tta=True)
    mirrored = predict_views(model, images, tta=True, symmetries=("flip",))
    assert plain[0, 0] > 0.99
    assert shifted[0, 0] > 0.95  # one-pixel shifts keep the bright side
    # The mirror view votes for the right side: a quarter of the vote moves over.
    assert mirrored[0, 0] == pytest.approx((3 * shifted[0, 0] + plain[0, 1]) / 4, abs=1e-5)
    # Quarter turns: 90 and 270 degrees put the bright half at the top or bottom (a tie
    # between the sides), 180 on the right.
    turned = predict_views(model, images, tta=True, symmetries=("quarter_turns",))
    expected = (3 * shifted[0, 0] + 0.5 + plain[0, 1] + 0.5) / 6
    assert turned[0, 0] == pytest.approx(expected, abs=1e-5)
