"""Transferability scores: LogME against the authors' code, H-score against TLlib's, the probe."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import log_loss

from keras_ft.models.probe import (
    PROBE_VARIANCE_FLOOR,
    _ledoit_wolf_shrinkage,
    describe_probe,
    h_score,
    linear_probe,
    logme,
)
from keras_ft.utils.errors import KerasFTError


def reference_logme(features: np.ndarray, labels: np.ndarray) -> float:
    """The authors' LogME (github.com/thuml/LogME, LogME.py, `_fit_icml` and its
    `each_evidence`, the ICML 2021 paper's algorithm), transcribed in its own loop form:
    the SVD of the D x D matrix F^T F, one class at a time, the posterior mean m as a
    vector, the guard 1e-5 in the updates and in the evidence, at most 11 updates that
    stop when alpha / beta moves by under 1 %, the evidence divided by N at the end.
    Nothing here comes from keras_ft."""
    f_t = features.astype(np.float64).T  # D x N, the reference's `f`
    f = f_t.T  # N x D, the reference's `fh`
    d, n = f_t.shape
    v, s, vh = np.linalg.svd(f_t @ f, full_matrices=True)
    epsilon = 1e-5
    evidences = []
    for label in range(int(labels.max()) + 1):
        y = (labels == label).astype(np.float64)
        alpha, beta = 1.0, 1.0
        lam = alpha / beta
        projected = vh @ (f_t @ y)
        for _ in range(11):
            gamma = (s / (s + lam)).sum()
            m = v @ (projected * beta / (alpha + beta * s))
            alpha_de = (m * m).sum()
            alpha = gamma / (alpha_de + epsilon)
            beta_de = ((y - f @ m) ** 2).sum()
            beta = (n - gamma) / (beta_de + epsilon)
            new_lam = alpha / beta
            if np.abs(new_lam - lam) / lam < 0.01:
                break
            lam = new_lam
        evidence = (
            d / 2.0 * np.log(alpha)
            + n / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * s))
            - beta / 2.0 * (beta_de + epsilon)
            - alpha / 2.0 * (alpha_de + epsilon)
            - n / 2.0 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


# Fixed integer features (N > D, then N < D) and the LogME that `reference_logme` gives
# them, written down once: the score keras_ft must give. keras_ft before issue 32 gave
# -0.750208733 and -0.986380026 (the guards left out of the evidence, and its own
# convergence rule).
FIXED_CASES = [
    (
        [[8, 6, 5, 2], [3, 0, 0, 0], [1, 8, 6, 9], [5, 6, 9, 7], [6, 5, 5, 9], [2, 8, 6, 0],
         [3, 8, 5, 0], [7, 7, 8, 1], [0, 8, 0, 5], [0, 2, 4, 4], [4, 0, 0, 1], [0, 6, 5, 6]],
        3,
        -0.750625409,
    ),
    (
        [[2, 6, 7, 3, 4, 9, 8, 9, 3], [6, 9, 6, 8, 6, 7, 3, 8, 1], [5, 7, 8, 5, 3, 3, 4, 4, 7],
         [8, 0, 9, 5, 3, 6, 5, 2, 3], [7, 5, 5, 3, 7, 3, 3, 8, 2], [2, 7, 6, 0, 0, 3, 8, 4, 7]],
        2,
        -0.988006029,
    ),
]  # fmt: skip


@pytest.mark.parametrize("rows, classes, expected", FIXED_CASES)
def test_logme_equals_the_authors_code_on_fixed_features(rows, classes, expected):
    features = np.array(rows, dtype=np.float64)
    labels = np.arange(len(features)) % classes
    assert reference_logme(features, labels) == pytest.approx(expected, abs=1e-9)
    assert logme(features, labels) == pytest.approx(expected, abs=1e-6)


def _data(n: int, d: int, classes: int, signal: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, d)) * signal
    return centres[labels] + rng.normal(size=(n, d)), labels


@pytest.mark.parametrize(
    "n, d, scale", [(60, 20, 1.0), (30, 50, 1.0), (40, 40, 1.0), (80, 16, 30.0)]
)
def test_logme_matches_the_authors_code(n, d, scale):
    features, labels = _data(n, d, classes=3, signal=0.7, seed=n + d)
    features = features * scale  # large features: alpha large, the guards' terms weigh
    assert logme(features, labels) == pytest.approx(reference_logme(features, labels), abs=1e-6)


def test_logme_with_constant_and_duplicate_features_matches_the_authors_code():
    features, labels = _data(50, 12, classes=4, signal=1.0, seed=3)
    features = np.concatenate([features, features[:, :3], np.zeros((50, 2))], axis=1)
    assert logme(features, labels) == pytest.approx(reference_logme(features, labels), abs=1e-6)


def test_scores_rank_informative_features_above_noise():
    informative, labels = _data(120, 30, classes=4, signal=1.0, seed=1)
    noise = np.random.default_rng(2).normal(size=(120, 30))
    assert logme(informative, labels) > logme(noise, labels) + 0.1
    assert h_score(informative, labels) > 3 * h_score(noise, labels)


def test_ledoit_wolf_shrinkage_matches_scikit_learn():
    from sklearn.covariance import ledoit_wolf_shrinkage

    for n, d in ((40, 100), (100, 30), (20, 1)):
        features, _ = _data(n, d, classes=3, signal=0.5, seed=d)
        centered = features - features.mean(axis=0)
        expected = ledoit_wolf_shrinkage(centered, assume_centered=True)
        assert _ledoit_wolf_shrinkage(centered) == pytest.approx(expected, rel=1e-9)


def slow_h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """The regularised H-score as its reference (TLlib's `regularized_h_score`) computes it.

    tr(pinv(S_a) (1 - a) cov(g)): S_a and a from scikit-learn's LedoitWolf on
    the centred features, g each image's class mean, cov as numpy.cov (N - 1).
    """
    f = features.astype(np.float64)
    f = f - f.mean(axis=0, keepdims=True)
    from sklearn.covariance import LedoitWolf

    shrunk = LedoitWolf(assume_centered=False).fit(f)
    g = np.zeros_like(f)
    for k in np.unique(labels):
        g[labels == k] = f[labels == k].mean(axis=0)
    between = np.atleast_2d(np.cov(g, rowvar=False))
    inverse = np.linalg.pinv(shrunk.covariance_, rcond=1e-15)
    return float(np.trace(inverse @ ((1 - shrunk.shrinkage_) * between)))


@pytest.mark.parametrize(
    "n, d, classes",
    [(40, 100, 3), (100, 30, 3), (50, 50, 5), (30, 1, 2), (24, 200, 4)],
)
def test_h_score_matches_the_reference_implementation(n, d, classes):
    features, labels = _data(n, d, classes=classes, signal=0.5, seed=n + d)
    features = features * np.linspace(0.2, 30, d) + 5  # unequal scales and an offset
    assert h_score(features, labels) == pytest.approx(slow_h_score(features, labels), abs=1e-6)


def test_h_score_with_constant_and_duplicate_features_matches_the_reference():
    features, labels = _data(60, 40, classes=4, signal=0.8, seed=7)
    features = np.concatenate([features, features[:, :5], np.full((60, 3), 2.0)], axis=1)
    labels = labels * 3 + 1  # labels need not be 0..K-1
    assert h_score(features, labels) == pytest.approx(slow_h_score(features, labels), abs=1e-6)


def test_h_score_is_not_scale_free_but_shift_and_permutation_free():
    features, labels = _data(80, 20, classes=3, signal=0.6, seed=11)
    score = h_score(features, labels)
    shuffled = np.random.default_rng(0).permutation(20)
    assert h_score(features[:, shuffled] + 3.0, labels) == pytest.approx(score, rel=1e-9)
    assert h_score(features * 7.0, labels) == pytest.approx(score, rel=1e-9)  # one common scale
    # Ledoit-Wolf shrinks towards a multiple of the identity: rescaling single
    # features changes the score (the reference does not standardise, nor do we).
    assert h_score(features * np.linspace(0.1, 10, 20), labels) != pytest.approx(score, rel=1e-3)


def test_scores_refuse_bad_input_with_a_message():
    with pytest.raises(KerasFTError, match=r"shape \(N, D\).*Pool the feature maps"):
        logme(np.zeros((4, 2, 2)), np.array([0, 1, 0, 1]))
    with pytest.raises(KerasFTError, match="at least two classes"):
        h_score(np.zeros((4, 2)), np.zeros(4, int))
    with pytest.raises(KerasFTError, match="NaN or infinite"):
        logme(np.full((4, 2), np.nan), np.array([0, 1, 0, 1]))
    with pytest.raises(KerasFTError, match=r"class\(es\) \[2\] have no training image"):
        linear_probe(np.ones((4, 2)), np.array([0, 1, 0, 1]), num_classes=3)


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_probe_folds_into_one_dense_layer(classes):
    features, labels = _data(120, 16, classes=classes, signal=1.0, seed=5)
    features = features * np.linspace(0.1, 50, 16) + 7  # scales the standardisation must undo
    features, labels, val, val_labels = features[:90], labels[:90], features[90:], labels[90:]
    probe = linear_probe(features, labels, val, val_labels)
    kernel, bias = probe.folded()
    logits = val @ kernel + bias
    folded_accuracy = np.mean(logits.argmax(axis=1) == val_labels)
    assert kernel.shape == (16, classes)
    assert folded_accuracy == pytest.approx(probe.validation_accuracy)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    assert probe.validation_loss == pytest.approx(
        log_loss(val_labels, probabilities, labels=list(range(classes))), rel=1e-9
    )
    assert probe.validation_accuracy > 0.8
    assert probe.c in (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    again = linear_probe(features, labels, val, val_labels)
    np.testing.assert_array_equal(again.coef, probe.coef)  # deterministic, bit for bit


def test_with_the_variance_floor_a_feature_one_training_image_activates_cannot_dominate():
    """Pooled ReLU features hold channels that one training image activates a little: divided
    by their spread alone (about 1e-4 here), a validation image that activates them more gets
    logits in the hundreds. EfficientNet-Lite0 on the digits sample at 96 px: loss 10.0 at
    accuracy 0.83, against 0.54 with `rank`'s floor (`PROBE_VARIANCE_FLOOR`)."""
    features, labels = _data(120, 16, classes=3, signal=1.0, seed=5)
    rare = np.zeros((120, 1))
    rare[0] = 1e-3  # active on one training image
    rare[90:] = np.linspace(0.2, 1.0, 30)[:, None]  # and on every validation image
    features = np.concatenate([features, rare], axis=1)
    train, val = slice(0, 90), slice(90, None)
    split = (features[train], labels[train], features[val], labels[val], 3)
    probe = linear_probe(*split, variance_floor=PROBE_VARIANCE_FLOOR)
    usual = features[:, :16]
    without_rare = linear_probe(usual[train], labels[train], usual[val], labels[val])
    assert probe.validation_accuracy == without_rare.validation_accuracy > 0.8
    assert probe.validation_loss < without_rare.validation_loss + 0.05
    # Without the floor (`fit`'s probe) the rare feature decides every validation image.
    assert linear_probe(*split).validation_loss > 2.0


def test_transfer_module_does_not_import_tensorflow():
    code = (
        "import sys, numpy as np; from keras_ft.models.probe import logme; "
        "logme(np.eye(4), np.array([0, 1, 0, 1])); print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------- the probe inside `fit`


@pytest.fixture(scope="module")
def probed_tuner(tmp_path_factory):
    """A tiny fit with a validation split: `fit` computes the probe on the cached features."""
    import keras_ft
    from tests.conftest import tiny_backbone, write_folder

    root = write_folder(tmp_path_factory.mktemp("probe") / "train", ("a", "b", "c"), 16, 32)
    data = keras_ft.ImageFolder(root, image_size=32, batch_size=8, augment=False, seed=3)
    tuner = keras_ft.FineTuner(tiny_backbone(32), preprocessing="tf", seed=1)
    tuner.fit(data, head_epochs=2, finetune_epochs=1, verbose=0, tensorboard_dir=None)
    return tuner, data


def test_fit_records_the_probe_of_the_frozen_features(probed_tuner):
    from keras_ft.runs.artifacts import run_record
    from keras_ft.runs.report import _summary_rows

    tuner, data = probed_tuner
    entry = run_record(tuner)["linear_probe"]
    # The same probe, fitted here on features of the untrained-backbone classifier.
    import keras_ft
    from keras_ft.models.classifier import split_at_features
    from keras_ft.training.features import frozen_features
    from tests.conftest import tiny_backbone

    fresh = keras_ft.FineTuner(tiny_backbone(32), preprocessing="tf", seed=1)
    fresh.build(data.image_size, data.num_classes)
    features = frozen_features(split_at_features(fresh.model)[0], data)
    expected = linear_probe(*features, num_classes=3)
    assert entry["validation_accuracy"] == expected.validation_accuracy
    assert entry["c"] == expected.c
    assert entry["finetuned_validation_accuracy"] == tuner.history.history["val_accuracy"][-1]
    finetuned, probed = entry["finetuned_validation_accuracy"], entry["validation_accuracy"]
    assert entry["below_probe"] == (np.float32(finetuned) < np.float32(probed))
    summary = dict(_summary_rows(tuner))
    assert summary["linear probe"].startswith(
        f"a logistic regression on the frozen features reaches {expected.validation_accuracy:.4f}"
        " on validation; fine-tuning reached"
    )


def test_fine_tuning_below_the_probe_warns_what_to_try():
    from keras_ft.task.records import compare_with_probe
    from keras_ft.training.history import TrainingHistory

    probe = {"validation_accuracy": 0.8, "train_accuracy": 1.0, "c": 1.0}
    rows = [{"phase": "head", "val_accuracy": 0.9}, {"phase": "finetune", "val_accuracy": 0.5}]
    with pytest.warns(UserWarning, match=r"0\.5000, below the 0\.8000.*negative transfer") as w:
        entry = compare_with_probe(probe, TrainingHistory(rows))
    message = str(w[0].message)
    assert "--finetune-lr" in message and "--unfreeze" in message and "keras-ft probe" in message
    assert entry["below_probe"] is True and entry["finetuned_validation_accuracy"] == 0.5
    # No fine-tuning ran (--finetune-epochs 0): the head is below, and the advice is the head's.
    with pytest.warns(
        UserWarning, match=r"^The head reached .* 0\.7000 \(no fine-tuning ran\)"
    ) as w:
        compare_with_probe(probe, TrainingHistory([{"phase": "head", "val_accuracy": 0.7}]))
    message = str(w[0].message)
    assert "--head-epochs" in message and "keras-ft probe" in message
    assert "--finetune" not in message and "negative transfer" not in message
    below = {**probe, "finetuned_validation_accuracy": 0.7, "below_probe": True}
    assert describe_probe(below, fine_tuned=False).endswith(
        "; the head (no fine-tuning ran) reached 0.7000 (below the probe: train the head "
        "longer, or keep the probe itself)"
    )
    assert "fine-tuning reached 0.7000 (below the probe: negative transfer" in describe_probe(below)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            compare_with_probe(probe, TrainingHistory([{"val_accuracy": 0.8}]))["below_probe"]
            is False
        )
        # The same 53 of 59 images right: Keras's float32 figure is not below the probe's
        # float64 one (the demo once warned "0.8983, below the 0.8983").
        same = {**probe, "validation_accuracy": 53 / 59}
        keras_figure = float(np.float32(53 / 59))
        assert keras_figure < 53 / 59
        history = TrainingHistory([{"val_accuracy": keras_figure}])
        assert compare_with_probe(same, history)["below_probe"] is False


# ------------------------------------------------------------- the probe as the model


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """`keras-ft probe`: a tiny run directory whose model is the linear probe."""
    from tests.conftest import TINY_TRAIN, run_cli, write_folder

    root = tmp_path_factory.mktemp("probe_run")
    classes = ("red", "green", "blue")
    write_folder(root / "train", classes, per_class=12, size=32, seed=1)
    write_folder(root / "test", classes, per_class=3, size=32, seed=2)
    result = run_cli(
        "probe",
        root / "train",
        "--test-dir",
        root / "test",
        *TINY_TRAIN,
        "--batch-size",
        "8",
        "--output",
        root / "run",
    )
    assert result.returncode == 0, result.stderr
    return root


def test_probe_run_is_an_ordinary_run_directory_holding_the_probe(probe_run):
    import json

    import keras_ft
    from keras_ft.data.pipeline import read_images

    record = json.loads((probe_run / "run" / "run.json").read_text())
    assert record["model"]["head"] == "linear"
    assert record["linear_probe"]["is_the_model"] is True
    predictor = keras_ft.load(probe_run / "run")
    layers = [layer.name for layer in predictor.model.layers]
    assert layers[-2:] == ["avg_pool", "predictions"]  # pooled features -> one Dense layer
    # The folded Dense layer classifies the validation images as the probe did.
    data = keras_ft.ImageFolder(probe_run / "train", image_size=32, batch_size=8, quiet=True)
    images = read_images([f.path for f in data.validation_files], (32, 32))
    predicted = predictor.predict_proba(images).argmax(axis=1)
    truth = np.array([f.label for f in data.validation_files])
    assert np.mean(predicted == truth) == pytest.approx(
        record["linear_probe"]["validation_accuracy"]
    )


def test_probe_run_predicts_and_reproduces(probe_run):
    from tests.conftest import run_cli

    image = next((probe_run / "test" / "red").glob("*.png"))
    predicted = run_cli("predict", probe_run / "run", image)
    assert predicted.returncode == 0, predicted.stderr
    assert '"path"' in predicted.stdout
    reproduced = run_cli("reproduce", probe_run / "run", "--quiet")
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr
    assert reproduced.stdout.strip().endswith("MATCH")


def test_unknown_head_is_refused_with_the_choices():
    from keras_ft.config import ModelConfig

    with pytest.raises(
        KerasFTError, match=r"Invalid `head`: expected one of \('dense', 'linear'\)"
    ):
        ModelConfig(num_classes=2, head="mlp")
