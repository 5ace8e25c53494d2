import json

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from al_lib import metrics


def _random_case(n=200, c=5, t=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, c) if t is None else (n, c, t)
    logits = rng.normal(size=shape) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, rng.integers(0, c, size=n)


def test_accuracy_and_nll_match_sklearn():
    probs, y = _random_case()
    assert metrics.accuracy(probs, y) == pytest.approx(skm.accuracy_score(y, probs.argmax(1)))
    assert metrics.nll(probs, y) == pytest.approx(skm.log_loss(y, probs, labels=range(5)), rel=1e-10)


def test_mc_samples_are_averaged_first():
    probs, y = _random_case(t=4)
    mean = probs.mean(axis=-1)
    assert metrics.nll(probs, y) == pytest.approx(skm.log_loss(y, mean, labels=range(5)))
    assert metrics.evaluate(probs, y) == metrics.evaluate(mean, y)


def test_per_class_report_matches_sklearn():
    probs, y = _random_case(n=60, c=6, seed=1)
    report = metrics.per_class_report(probs, y)
    p, r, f, s = skm.precision_recall_fscore_support(y, probs.argmax(1), labels=range(6), zero_division=0)
    np.testing.assert_allclose(report["precision"], p)
    np.testing.assert_allclose(report["recall"], r)
    np.testing.assert_allclose(report["f1"], f)
    np.testing.assert_array_equal(report["support"], s)
    assert report["macro_f1"] == pytest.approx(f.mean())
    assert report["macro_precision"] == pytest.approx(p.mean())
    assert report["macro_recall"] == pytest.approx(r.mean())


def test_unpredicted_and_absent_classes_give_zero_without_warnings():
    # Class 2 is never predicted; class 1 never occurs in the targets.
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    y = np.array([0, 2, 2])
    with np.errstate(all="raise"):
        report = metrics.per_class_report(probs, y)
    np.testing.assert_allclose(report["precision"], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(report["recall"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(report["f1"], [2 / 3, 0.0, 0.0])
    assert not np.isnan(report["macro_f1"])


def test_confusion_matrix_matches_sklearn():
    probs, y = _random_case(n=80, c=4, seed=2)
    expected = skm.confusion_matrix(y, probs.argmax(1), labels=range(4))
    np.testing.assert_array_equal(metrics.confusion_matrix(probs, y), expected)
    with pytest.raises(ValueError, match="n_classes"):
        metrics.confusion_matrix(probs, y, n_classes=5)


def test_ece_hand_computed():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.7 (wrong).
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 0, 0, 0])
    # n_bins=5: bins (0.4,0.6] -> {0.6 right}: |1 - 0.6| = 0.4, weight 1/4
    #           (0.6,0.8] -> {0.7 wrong}: |0 - 0.7| = 0.7, weight 1/4
    #           (0.8,1.0] -> {0.9 right, 0.9 wrong}: |0.5 - 0.9| = 0.4, weight 2/4
    expected = 0.25 * 0.4 + 0.25 * 0.7 + 0.5 * 0.4
    assert metrics.expected_calibration_error(probs, y, n_bins=5) == pytest.approx(expected)
    # One bin: |accuracy - mean confidence| = |0.5 - 0.775|.
    assert metrics.expected_calibration_error(probs, y, n_bins=1) == pytest.approx(0.275)


def test_perfect_predictions():
    y = np.array([0, 1, 2, 1, 0])
    probs = np.eye(3)[y]
    assert metrics.accuracy(probs, y) == 1.0
    assert metrics.expected_calibration_error(probs, y) == 0.0
    assert metrics.nll(probs, y) == pytest.approx(0.0)
    result = metrics.evaluate(probs, y)
    assert result["macro_f1"] == 1.0 and result["per_class_f1"] == [1.0, 1.0, 1.0]


def test_nll_floors_zero_probabilities():
    probs = np.array([[1.0, 0.0]])
    assert metrics.nll(probs, np.array([1])) == pytest.approx(-np.log(1e-12))
    assert metrics.nll(probs, np.array([1]), eps=1e-3) == pytest.approx(-np.log(1e-3))


def test_numpy_and_torch_agree():
    probs, y = _random_case(t=3, seed=3)
    from_numpy = metrics.evaluate(probs, y)
    from_torch = metrics.evaluate(torch.from_numpy(probs).float(), torch.from_numpy(y))
    assert from_torch.keys() == from_numpy.keys()
    for key in ("accuracy", "nll", "ece", "macro_f1"):
        assert from_torch[key] == pytest.approx(from_numpy[key], abs=1e-6)
    np.testing.assert_allclose(from_torch["per_class_f1"], from_numpy["per_class_f1"])


def test_evaluate_is_json_serialisable():
    probs, y = _random_case(c=3)
    result = metrics.evaluate(probs, y)
    assert set(result) == {"accuracy", "nll", "ece", "macro_f1", "per_class_f1", "n"}
    assert json.loads(json.dumps(result)) == result
    assert all(type(v) is float for v in result["per_class_f1"])


def test_binary_single_column_is_expanded():
    p1 = np.array([[0.8], [0.3], [0.6]])
    y = np.array([1, 0, 0])
    two = np.concatenate([1 - p1, p1], axis=1)
    assert metrics.evaluate(p1, y) == metrics.evaluate(two, y)
    assert metrics.evaluate(p1[..., None].repeat(2, axis=-1), y) == metrics.evaluate(two, y)


@pytest.mark.parametrize(
    "probs, targets, match",
    [
        (np.ones(4) / 4, np.zeros(4, int), "probs must be"),
        (np.ones((2, 2, 2, 2)), np.zeros(2, int), "probs must be"),
        (np.full((3, 2), 0.5), np.zeros(2, int), "targets must be"),
        (np.full((3, 2), 0.5), np.zeros((3, 1), int), "targets must be"),
        (np.full((3, 2), 0.5), np.zeros(3), "integer"),
        (np.full((3, 2), 0.5), np.array([0, 1, 2]), r"\[0, 2\)"),
        (np.full((3, 2), np.nan), np.zeros(3, int), "NaN"),
        (np.zeros((0, 2)), np.zeros(0, int), "empty"),
    ],
)
def test_bad_inputs_raise(probs, targets, match):
    with pytest.raises(ValueError, match=match):
        metrics.evaluate(probs, targets)


def test_bad_n_bins():
    probs, y = _random_case()
    with pytest.raises(ValueError, match="n_bins"):
        metrics.expected_calibration_error(probs, y, n_bins=0)
