"""Classification metrics from (MC-averaged) predicted probabilities.

Every function takes ``probs`` ``[N, C]`` or MC samples ``[N, C, T]`` (averaged over ``T`` first:
the Bayesian predictive distribution) as a numpy array or torch tensor, and ``targets`` ``[N]``
integer class labels. A binary model's single sigmoid column ``[N, 1]`` (= p(y=1)) is expanded to
two classes ``[1 - p, p]``. Predictions are ``argmax`` over classes (ties → lower class index).
Results are numpy arrays and Python floats; :func:`evaluate` returns a JSON-serialisable dict.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "accuracy",
    "confusion_matrix",
    "evaluate",
    "expected_calibration_error",
    "nll",
    "per_class_report",
]


#: Defaults shared by the public functions and :func:`evaluate`.
NLL_EPS = 1e-12
ECE_BINS = 15


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        # numpy has no bfloat16: widen floating tensors (probs are used as float64 anyway).
        return (array.double() if array.is_floating_point() else array).numpy()
    return np.asarray(array)


def _prepare(probs, targets, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs; return ``(probs [N, C] float64, targets [N] int64)``."""
    p = _to_numpy(probs).astype(np.float64, copy=False)
    if p.ndim == 3:
        p = p.mean(axis=-1)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C] or [N, C, T], got shape {p.shape}")
    if p.shape[1] == 1:
        p = np.concatenate([1.0 - p, p], axis=1)
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    y = _to_numpy(targets)
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"targets must be [N] with N = {len(p)} (rows of probs), got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("probs and targets are empty")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise ValueError(f"targets must be integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    n_cols = p.shape[1]
    if n_classes is not None and n_classes != n_cols:
        raise ValueError(f"n_classes={n_classes} but probs has {n_cols} classes")
    if y.min() < 0 or y.max() >= n_cols:
        raise ValueError(f"targets must lie in [0, {n_cols}), got values in [{y.min()}, {y.max()}]")
    return p, y


def _confusion(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    n_cols = p.shape[1]
    predicted = p.argmax(axis=1)
    return np.bincount(y * n_cols + predicted, minlength=n_cols * n_cols).reshape(n_cols, n_cols)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (no warning, no NaN)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _report(p: np.ndarray, y: np.ndarray) -> dict:
    cm = _confusion(p, y)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_ratio(tp, predicted)
    recall = _safe_ratio(tp, support)
    # 2TP / (2TP + FP + FN): the harmonic mean of P and R, and 0 when the class is never involved.
    f1 = _safe_ratio(2 * tp, support + predicted)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(p.argmax(axis=1) == y))


def _nll(p: np.ndarray, y: np.ndarray, eps: float) -> float:
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], eps))))


def _ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Bins are (lo, hi]; confidence 0 (impossible for normalised probs) joins the first bin.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, n_bins - 1)
    # Per bin, |sum(correct) - sum(confidence)| / N = (n_b / N) * |acc_b - conf_b|.
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y))


def accuracy(probs, targets) -> float:
    """Fraction of samples whose most probable class is the target.

    Parameters
    ----------
    probs : array or tensor ``[N, C]`` or ``[N, C, T]``
    targets : int array or tensor ``[N]``

    Returns
    -------
    float in [0, 1]
    """
    return _accuracy(*_prepare(probs, targets))


def nll(probs, targets, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood ``-mean(log p[i, y_i])`` of the (MC-averaged) probabilities.

    Probabilities are floored at ``eps`` so a confident mistake costs ``-log(eps)``, not infinity.
    Rows are used as given (not renormalised).

    Returns
    -------
    float >= 0
    """
    return _nll(*_prepare(probs, targets), eps)


def confusion_matrix(probs, targets, n_classes: int | None = None) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Parameters
    ----------
    probs : array or tensor ``[N, C]`` or ``[N, C, T]``
    targets : int array or tensor ``[N]``
    n_classes : int, optional; when given it must equal ``C`` (a guard against mislabelled columns).

    Returns
    -------
    cm : int64 ndarray ``[C, C]``, rows = true class, columns = predicted class (scikit-learn's layout).
    """
    return _confusion(*_prepare(probs, targets, n_classes))


def per_class_report(probs, targets, n_classes: int | None = None) -> dict:
    """Per-class precision, recall, F1 and support, with their macro (unweighted) averages.

    A class never predicted has precision 0; a class absent from ``targets`` has recall 0; F1 is
    ``2TP / (2TP + FP + FN)`` and 0 when that is 0/0. No warnings, no NaN. Macro averages include
    every one of the ``C`` classes.

    Returns
    -------
    dict with ``precision``, ``recall``, ``f1`` (float64 ndarrays ``[C]``), ``support`` (int64
    ndarray ``[C]``), ``macro_precision``, ``macro_recall``, ``macro_f1`` (floats).
    """
    return _report(*_prepare(probs, targets, n_classes))


def expected_calibration_error(probs, targets, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017) with ``n_bins`` equal-width confidence bins.

    ``sum_b (n_b / N) * |accuracy_b - mean confidence_b|`` where confidence is the largest class
    probability and bin ``b`` holds confidences in ``(b / n_bins, (b + 1) / n_bins]``.

    Returns
    -------
    float in [0, 1]
    """
    return _ece(*_prepare(probs, targets), n_bins)


def evaluate(probs, targets) -> dict:
    """The standard summary of a model's predictions.

    Returns
    -------
    dict with ``accuracy``, ``nll``, ``ece`` (15 bins), ``macro_f1`` (floats), ``per_class_f1``
    (list of ``C`` floats) and ``n`` (int): JSON-serialisable.
    """
    p, y = _prepare(probs, targets)
    report = _report(p, y)
    return {
        "accuracy": _accuracy(p, y),
        "nll": _nll(p, y, NLL_EPS),
        "ece": _ece(p, y, ECE_BINS),
        "macro_f1": report["macro_f1"],
        "per_class_f1": [float(v) for v in report["f1"]],
        "n": len(y),
    }
