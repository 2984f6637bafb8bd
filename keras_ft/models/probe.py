"""Transferability scores of frozen features: LogME, H-score and the linear probe.

Each score says, in seconds and without fine-tuning, how well features
`(N, D)` of a frozen backbone suit labels `(N,)`. Higher is better for all three.

- `logme`: the log marginal evidence of a Bayesian linear model from features
  to one-hot labels, per sample, averaged over classes (You et al., "LogME:
  Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021).
  The value of the authors' published code for that paper (thuml/LogME,
  `LogME._fit_icml` / `each_evidence`): its MacKay updates with the 1e-5 guards,
  its stopping rule (alpha / beta moves by under 1 %, at most 11 updates) and
  its final evidence, which keeps the guards in the two quadratic terms and
  takes them at the last update's posterior mean. Here the updates run for
  every class at once on one eigendecomposition of the smaller Gram matrix.
- `h_score`: tr(cov(f)^-1 cov(E[f | y])) (Bao et al., ICIP 2019) in its
  shrinkage-regularised form (Ibrahim et al., "Newer is not always better",
  2022): the Ledoit-Wolf estimate of cov(f), so it stays finite with more
  features than images, and the between-class covariance shrunk alike. It
  equals TLlib's `regularized_h_score` (the reference implementation).
- `linear_probe`: a scikit-learn LogisticRegression on standardised features
  (for `rank`, with a floor under each feature's variance), its C chosen by
  cross-validation on the training split, scored on the validation split.

Pure NumPy and scikit-learn: importing this module does not import TensorFlow.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from keras_ft.utils.errors import KerasFTError

# LogME's updates stop when alpha / beta changes by less than this, relatively, or
# after LOGME_MAX_ITERATIONS updates: the authors' code's rule (1 %, 11), so that the
# score is the published one, not a more converged neighbour of it (which differs
# by up to about 1e-3).
LOGME_TOLERANCE = 0.01
LOGME_MAX_ITERATIONS = 11
# Added to both denominators of the update and to both quadratic terms of the
# evidence, as in the authors' code: with more features than images the labels
# can be fitted exactly and beta would diverge.
LOGME_EPSILON = 1e-5
# The probe's candidate inverse regularisation strengths (scikit-learn's C).
PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
PROBE_FOLDS = 3
PROBE_SEED = 0
# `rank`'s probe adds this share of the mean variance to each feature's variance before
# standardising (`linear_probe`'s `variance_floor`). A feature almost constant on the
# training images (a ReLU channel that one image activates) is otherwise divided by a
# spread near 0, and an image that activates it more gets logits in the hundreds: a
# validation loss that says nothing about the features. `fit`'s probe (the fallback's
# candidate, the flip and turn decisions, `head="linear"`) is fitted without it
# (docs/benchmark-history.md, round 21).
PROBE_VARIANCE_FLOOR = 0.01
# BLAS threads for the scores' matrix products, whose sides are a few thousand
# at most. On the busy 2-core machine two threads were several times slower
# than one (at load 6-7: products of 793 x 506 by 10 and back 12 ms against
# 2 ms; LogME of 1,000 x 4,096 features 3.7 s against 0.6 s). One thread also
# keeps the summation order the same whatever the machine's core count.
# None leaves BLAS its own thread count (for tens of thousands of images on an
# idle many-core machine).
BLAS_THREADS = 1


def _check(features, labels, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """`features` as float64 `(N, D)` and `labels` as int `(N,)`, or a KerasFTError."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise KerasFTError(
            f"Invalid `{name}`: expected features of shape (N, D) and labels of shape (N,), "
            f"received {features.shape} and {labels.shape}. Pool the feature maps first."
        )
    if len(np.unique(labels)) < 2:
        raise KerasFTError(
            f"Invalid labels: a transferability score needs at least two classes, received "
            f"{len(np.unique(labels))} among {len(labels)} images."
        )
    if not np.all(np.isfinite(features)):
        raise KerasFTError(
            f"Invalid `{name}`: they hold NaN or infinite values. Check the backbone's "
            "weights and preprocessing."
        )
    return features, labels


def _blas_threads():
    """A context in which NumPy's and SciPy's BLAS use `BLAS_THREADS` threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(BLAS_THREADS, user_api="blas")


def _one_hot(labels: np.ndarray) -> np.ndarray:
    classes = np.unique(labels)
    return (labels[:, None] == classes[None, :]).astype(np.float64)


def _spectrum(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues `s` (r,) of F^T F and the squared targets in its eigenbasis, `z2` (r, K).

    With F = U diag(sqrt(s)) V^T, `z2 = (U^T Y)^2`. The eigendecomposition is
    of F F^T when N < D and of F^T F otherwise: r = min(N, D).
    """
    n, d = features.shape
    if n < d:
        s, u = np.linalg.eigh(features @ features.T)
        s = np.clip(s, 0.0, None)
        return s, (u.T @ targets) ** 2
    s, v = np.linalg.eigh(features.T @ features)
    s = np.clip(s, 0.0, None)
    projected = (v.T @ (features.T @ targets)) ** 2  # s * z2
    keep = s > s.max() * max(n, d) * np.finfo(np.float64).eps
    z2 = np.where(keep[:, None], projected / np.where(keep, s, 1.0)[:, None], 0.0)
    return s, z2


def logme(features, labels) -> float:
    """LogME of `features` for `labels`: the mean over classes of the log evidence per image.

    Equal (to rounding) to `LogME._fit_icml` of the authors' code, the ICML 2021
    paper's algorithm: per class, from alpha = beta = 1, the updates
    alpha = gamma / (|m|^2 + eps), beta = (N - gamma) / (|y - F m|^2 + eps)
    until alpha / beta moves by under `LOGME_TOLERANCE` (at most
    `LOGME_MAX_ITERATIONS`), then the evidence
    D/2 log alpha + N/2 log beta - 1/2 log|alpha I + beta F^T F|
    - beta/2 (|y - F m|^2 + eps) - alpha/2 (|m|^2 + eps) - N/2 log 2 pi, over N,
    with m the posterior mean of the last update (taken before alpha and beta
    moved) and the log-determinant over all D directions.

    Args:
        features: `(N, D)` array of pooled frozen features.
        labels: `(N,)` integer class labels (at least two classes).

    Returns:
        The score (higher: the features suit the labels better). It compares
        backbones and layers on the same images; its absolute value has no unit.
    """
    features, labels = _check(features, labels)
    n, d = features.shape
    targets = _one_hot(labels)
    with _blas_threads():
        s, z2 = _spectrum(features, targets)
    norm2 = (targets**2).sum(axis=0)
    outside = norm2 - z2.sum(axis=0)  # the part of y no feature direction reaches
    classes = targets.shape[1]
    alpha, beta = np.ones(classes), np.ones(classes)
    mean_norm2, residual2 = np.zeros(classes), np.zeros(classes)
    active = np.ones(classes, bool)
    for _ in range(LOGME_MAX_ITERATIONS):
        ratio = alpha / beta
        new_mean_norm2, new_residual2 = _posterior_norms(s, z2, outside, alpha, beta)
        gamma = (s[:, None] / (s[:, None] + ratio)).sum(axis=0)
        new_alpha = gamma / (new_mean_norm2 + LOGME_EPSILON)
        new_beta = (n - gamma) / (new_residual2 + LOGME_EPSILON)
        alpha, beta = np.where(active, new_alpha, alpha), np.where(active, new_beta, beta)
        mean_norm2 = np.where(active, new_mean_norm2, mean_norm2)
        residual2 = np.where(active, new_residual2, residual2)
        active &= np.abs(new_alpha / new_beta - ratio) / ratio >= LOGME_TOLERANCE
        if not active.any():
            break
    log_det = np.log(alpha + beta * s[:, None]).sum(axis=0) + (d - len(s)) * np.log(alpha)
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - log_det / 2
        - beta / 2 * (residual2 + LOGME_EPSILON)
        - alpha / 2 * (mean_norm2 + LOGME_EPSILON)
        - n / 2 * math.log(2 * math.pi)
    )
    return float(np.mean(evidence / n))


def _posterior_norms(s, z2, outside, alpha, beta):
    """|m|^2 and |y - F m|^2 per class (columns of `z2`), m the posterior mean at (alpha, beta)."""
    denominator = alpha + beta * s[:, None]
    mean_norm2 = (beta**2 * s[:, None] * z2 / denominator**2).sum(axis=0)
    residual2 = outside + (z2 * (alpha / denominator) ** 2).sum(axis=0)
    return mean_norm2, residual2


def _ledoit_wolf_shrinkage(centered: np.ndarray, gram: np.ndarray | None = None) -> float:
    """scikit-learn's Ledoit-Wolf shrinkage of centred `(N, D)` data, through the N x N Gram.

    Equal to `sklearn.covariance.ledoit_wolf_shrinkage(centered, assume_centered=True)`,
    which needs a D x D product: ||X^T X||_F = ||X X^T||_F and the sum of
    (X^2)^T X^2 is the sum of the squared row norms squared. `gram`: `_gram(centered)`.
    """
    n, d = centered.shape
    if d == 1:  # scikit-learn's convention: one feature is never shrunk
        return 0.0
    gram = _gram(centered) if gram is None else gram
    row_norms2 = (centered**2).sum(axis=1)
    trace = row_norms2.sum() / n  # of the empirical covariance
    mu = trace / d
    delta = (gram**2).sum() / n**2
    beta = ((row_norms2**2).sum() / n - delta) / (d * n)
    delta = (delta - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def _gram(data: np.ndarray) -> np.ndarray:
    """The smaller Gram matrix of `data` (N, D): X X^T when N < D, else X^T X."""
    return data @ data.T if len(data) < data.shape[1] else data.T @ data


def _right_basis(data: np.ndarray, gram: np.ndarray | None = None):
    """Squared singular values `s` (r,) of `data` (N, D) and its right singular vectors (D, r).

    Only the non-zero singular values; found from the eigendecomposition of
    the smaller Gram matrix (`_gram(data)`, computed if not given).
    """
    n, d = data.shape
    s, vectors = np.linalg.eigh(_gram(data) if gram is None else gram)
    keep = s > s.max() * max(n, d) * np.finfo(np.float64).eps
    s, vectors = s[keep], vectors[:, keep]
    if n < d:  # vectors are the left singular vectors: V = X^T U / sigma
        vectors = data.T @ vectors / np.sqrt(s)
    return s, vectors


def h_score(features, labels) -> float:
    """The shrinkage-regularised H-score of `features` for `labels`.

    `tr(S_a^-1 (1 - a) cov(E[f | y]))` (Ibrahim et al., 2022): `S_a` the
    Ledoit-Wolf estimate of the feature covariance (scikit-learn's: shrunk
    towards `mu I`, `mu` the mean variance, normalised by N) and `a` its
    shrinkage, which scales the covariance of the class means
    `cov(E[f | y])` alike (normalised by N - 1, as `numpy.cov`). Exactly
    TLlib's `regularized_h_score`: the features are centred, not
    standardised, and `S_a^-1` is its pseudo-inverse. Computed through the
    eigendecomposition of the smaller Gram matrix, never a D x D inverse.

    Args:
        features: `(N, D)` array of pooled frozen features.
        labels: `(N,)` integer class labels.

    Returns:
        The score: how far apart the class means lie in units of the
        features' shrunk spread (higher is better; without shrinkage at most
        `(K - 1) N / (N - 1)` for K classes). With N <= D the unshrunk score
        is that maximum for any features, so the score then mostly says how
        much the shrinkage takes away.
    """
    features, labels = _check(features, labels)
    n, d = features.shape
    centered = features - features.mean(axis=0)
    with _blas_threads():
        gram = _gram(centered)
        squared, basis = _right_basis(centered, gram)
    shrinkage = _ledoit_wolf_shrinkage(centered, gram)
    floor = shrinkage * (centered**2).sum() / (n * d)  # S_a = (1 - a) X^T X / N + floor I
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    means = np.zeros((len(classes), d))
    np.add.at(means, inverse, centered)
    means /= counts[:, None]
    # cov(E[f | y]) = sum_k count_k m_k m_k^T / (N - 1); the trace against S_a^-1
    # is sum_k count_k m_k^T S_a^-1 m_k / (N - 1). S_a^-1 on the span of the
    # data through its eigenbasis, 1 / floor on the rest (0 there if floor is 0).
    eig = (1 - shrinkage) * squared / n + floor
    inside = means @ basis
    quadratic = (inside**2 / eig).sum(axis=1)
    if floor > 0:
        outside = (means**2).sum(axis=1) - (inside**2).sum(axis=1)
        quadratic = quadratic + np.maximum(outside, 0.0) / floor
    return float((1 - shrinkage) * (counts * quadratic).sum() / (n - 1))


@dataclass(frozen=True)
class ProbeResult:
    """A fitted linear probe and how it scored.

    Attributes:
        validation_accuracy: accuracy on the validation split (None without one).
        validation_loss: mean cross-entropy (natural log) of the probe's softmax on the
            validation split (None without one): it separates probes of equal accuracy,
            as on a few validation images every probe may classify all of them.
        train_accuracy: accuracy on the training split.
        c: the inverse regularisation strength cross-validation chose.
        mean: per-feature mean of the training features.
        scale: per-feature divisor: the standard deviation, or with a
            `variance_floor` the square root of the variance plus that share of
            the mean variance (1 where it would be 0).
        coef: `(K, D)` weights on the standardised features.
        intercept: `(K,)` biases.
    """

    validation_accuracy: float | None
    validation_loss: float | None
    train_accuracy: float
    c: float
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """The probe as one linear layer on raw features: `(kernel (D, K), bias (K,))`.

        `softmax(x @ kernel + bias)` equals the probe's `predict_proba(x)`:
        the standardisation is folded into the weights, w / sigma and
        b - sum(w * mu / sigma).
        """
        kernel = (self.coef / self.scale).T
        bias = self.intercept - (self.coef * self.mean / self.scale).sum(axis=1)
        return kernel, bias

    def predict(self, features) -> np.ndarray:
        """The predicted class of each row of `features` (`(N, D)` raw features)."""
        kernel, bias = self.folded()
        return np.argmax(np.asarray(features, np.float64) @ kernel + bias, axis=1)

    def summary(self) -> dict:
        """The JSON-ready numbers (no weights)."""
        return {
            "validation_accuracy": self.validation_accuracy,
            "train_accuracy": self.train_accuracy,
            "c": self.c,
        }


def linear_probe(
    train_features,
    train_labels,
    validation_features=None,
    validation_labels=None,
    num_classes=None,
    variance_floor: float = 0.0,
) -> ProbeResult:
    """Logistic regression on standardised frozen features, C chosen by cross-validation.

    Deterministic: lbfgs, a fixed fold split (stratified, seeded) and a fixed
    candidate list `PROBE_CS`, so the same features give the same weights.

    Args:
        train_features: `(N, D)` training features.
        train_labels: `(N,)` integer labels in `[0, num_classes)`.
        validation_features: `(M, D)` features to score on, or None.
        validation_labels: `(M,)` their labels.
        num_classes: the number of classes (default: the largest label + 1).
            Every class must occur in the training split.
        variance_floor: each feature is divided by the square root of its
            variance plus this share of the mean variance (0: by its standard
            deviation alone, 1 where it is constant; see `PROBE_VARIANCE_FLOOR`).

    Returns:
        A `ProbeResult`.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    features, labels = _check(train_features, train_labels, "train_features")
    num_classes = _every_class(labels, num_classes)
    mean, scale = _standardisation(features, variance_floor)
    standardised = (features - mean) / scale
    # The L2-penalised optimum lies in the span of the training rows (of every
    # fold's rows too): fit in that span's coordinates, exactly the same model,
    # with min(N, D) rather than D weights per class.
    with _blas_threads():
        _, basis = _right_basis(standardised)
        coordinates = standardised @ basis
    options = dict(solver="lbfgs", max_iter=500, random_state=PROBE_SEED)
    folds = min(PROBE_FOLDS, int(np.bincount(labels).min()))
    with warnings.catch_warnings(), _blas_threads():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9 notices on defaults
        if folds >= 2:  # the smallest C among equally good ones: the simplest model
            split = StratifiedKFold(folds, shuffle=True, random_state=PROBE_SEED)
            fitted = LogisticRegressionCV(
                Cs=list(PROBE_CS),
                cv=split,
                scoring="accuracy",
                use_legacy_attributes=False,
                **options,
            )
            fitted.fit(coordinates, labels)
            best_c = float(fitted.C_)
        else:
            best_c = 1.0
            fitted = LogisticRegression(C=best_c, **options).fit(coordinates, labels)
    coef, intercept = fitted.coef_ @ basis.T, fitted.intercept_
    if len(coef) == 1:  # two classes: one logit z; softmax of (-z/2, z/2) is sigmoid(z)
        coef, intercept = (
            np.concatenate([-coef, coef]) / 2,
            np.concatenate([-intercept, intercept]) / 2,
        )
    validation_accuracy, validation_loss = _validation_scores(
        validation_features, validation_labels, mean, scale, coef, intercept
    )
    return ProbeResult(
        validation_accuracy=validation_accuracy,
        validation_loss=validation_loss,
        train_accuracy=_accuracy(standardised, labels, coef, intercept),
        c=float(best_c),
        mean=mean,
        scale=scale,
        coef=coef,
        intercept=intercept,
    )


def _every_class(labels: np.ndarray, num_classes: int | None) -> int:
    """The number of classes (default: the largest label + 1); refuse one without a label."""
    num_classes = int(num_classes or labels.max() + 1)
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise KerasFTError(
            f"The linear probe needs every class in the training split; class(es) {missing} "
            "have no training image. Add images or lower validation_split."
        )
    return num_classes


def _standardisation(features: np.ndarray, variance_floor: float):
    """(mean, scale) of each feature: the scale is the square root of its variance plus
    `variance_floor` times the mean variance, 1 where that is 0."""
    variance = features.var(axis=0)
    scale = np.sqrt(variance + variance_floor * variance.mean())
    return features.mean(axis=0), np.where(scale > 0, scale, 1.0)


def _accuracy(standardised: np.ndarray, labels: np.ndarray, coef, intercept) -> float:
    return float(np.mean((standardised @ coef.T + intercept).argmax(axis=1) == labels))


def _validation_scores(features, labels, mean, scale, coef, intercept):
    """The probe's (accuracy, mean cross-entropy) on raw `features`; (None, None) without."""
    if features is None or not len(features):
        return None, None
    labels = np.asarray(labels)
    logits = ((np.asarray(features, np.float64) - mean) / scale) @ coef.T + intercept
    shifted = logits - logits.max(axis=1, keepdims=True)  # log-softmax without overflow
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -np.mean(log_probabilities[np.arange(len(labels)), labels])
    return float(np.mean(logits.argmax(axis=1) == labels)), float(loss)


def describe_probe(entry: dict, fine_tuned: bool = True) -> str:
    """One sentence for the report from a run record's `"linear_probe"` entry.

    `fine_tuned`: whether phase 2 ran (else the entry's accuracy is the head's).
    """
    accuracy = entry["validation_accuracy"]
    reached = "(no validation split)" if accuracy is None else f"{accuracy:.4f} on validation"
    if entry.get("is_the_model"):
        return f"this model is a logistic regression on the frozen features: {reached}"
    text = f"a logistic regression on the frozen features reaches {reached}"
    if entry.get("finetuned_validation_accuracy") is not None:
        trained = "fine-tuning" if fine_tuned else "the head (no fine-tuning ran)"
        text += f"; {trained} reached {entry['finetuned_validation_accuracy']:.4f}"
    if entry.get("below_probe"):
        text += (
            " (below the probe: negative transfer; try fewer unfrozen layers, a lower "
            "learning rate, or the probe itself)"
            if fine_tuned
            else " (below the probe: train the head longer, or keep the probe itself)"
        )
    return text
