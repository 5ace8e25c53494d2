"""Per-sample scorers: closed forms, hand-computed values, properties (hypothesis)."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import al_lib.heuristics as H

SCORERS = {name: f for name, f in H.HEURISTICS.items() if name != "random"}
NONNEGATIVE = ["bald", "entropy", "least_confidence", "variation_ratio", "mean_std"]
FAST = settings(max_examples=40, deadline=None)


def random_probs(rng, shape, kind="dirichlet"):
    """MC probabilities of ``shape = (N, C, ..., T)`` (float64), classes on axis 1.

    kind: "dirichlet" (smooth), "sharp" (near one-hot), "onehot" (exact zeros), "mixed" (both).
    """
    n, c, *extra = shape
    if kind == "onehot":
        labels = rng.integers(c, size=(n, *extra))
        probs = np.eye(c)[labels]
    else:
        alpha = 0.05 if kind == "sharp" else 1.0
        probs = rng.dirichlet(np.full(c, alpha), size=(n, *extra))
        if kind == "mixed":
            onehot = np.eye(c)[rng.integers(c, size=(n, *extra))]
            probs = np.where(rng.random((n, *extra, 1)) < 0.5, onehot, probs)
    return np.moveaxis(probs, -1, 1)


@st.composite
def probs_cases(draw, max_extra=2, min_classes=1):
    """Numpy float64 MC probabilities ``[N, C, ..., T]`` of assorted shapes and sharpness."""
    n = draw(st.integers(1, 5))
    c = draw(st.integers(min_classes, 4))
    extra = draw(st.lists(st.integers(1, 3), max_size=max_extra))
    t = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["dirichlet", "sharp", "onehot", "mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return random_probs(rng, (n, c, *extra, t), kind)


# --- closed forms and hand-computed values ---------------------------------------------------


@pytest.mark.parametrize("c", [2, 3, 5])
def test_uniform_predictions(c):
    probs = np.full((4, c, 6), 1 / c)
    np.testing.assert_allclose(H.entropy(probs), math.log(c))
    np.testing.assert_allclose(H.bald(probs), 0, atol=1e-12)
    np.testing.assert_allclose(H.least_confidence(probs), 1 - 1 / c)
    np.testing.assert_allclose(H.margin(probs), 0, atol=1e-12)
    np.testing.assert_allclose(H.mean_std(probs), 0, atol=1e-12)
    np.testing.assert_allclose(H.variation_ratio(probs), 0)  # every sample votes for class 0


def test_bald_is_zero_when_mc_samples_agree():
    rng = np.random.default_rng(0)
    probs = np.repeat(random_probs(rng, (10, 4, 1)), 7, axis=-1)
    np.testing.assert_allclose(H.bald(probs), 0, atol=1e-12)
    np.testing.assert_allclose(H.mean_std(probs), 0, atol=1e-12)


def test_hand_computed_two_class_case():
    # Three MC samples of p(y): [0.9, 0.1], [0.4, 0.6], [0.8, 0.2]; mean [0.7, 0.3].
    probs = np.array([[[0.9, 0.4, 0.8], [0.1, 0.6, 0.2]]])
    expected = {
        # -(0.7 ln 0.7 + 0.3 ln 0.3)
        "entropy": 0.6108643020548935,
        # 0.6108643 - mean(H(.9,.1)=0.3250830, H(.4,.6)=0.6730117, H(.8,.2)=0.5004024)
        "bald": 0.1113652807419292,
        # -(0.7 - 0.3)
        "margin": -0.4,
        # 1 - 0.7
        "least_confidence": 0.3,
        # votes 0, 1, 0: 1 - 2/3
        "variation_ratio": 1 / 3,
        # class-0 deviations .2, -.3, .1: sqrt(0.14 / 3); class 1 identical
        "mean_std": math.sqrt(0.14 / 3),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(SCORERS[name](probs), [value], rtol=1e-12, err_msg=name)


def test_one_hot_predictions_have_no_nan():
    rng = np.random.default_rng(1)
    probs = random_probs(rng, (20, 3, 5), "onehot")
    for name, f in SCORERS.items():
        scores = f(probs)
        assert np.all(np.isfinite(scores)), name
    agreeing = np.repeat(probs[..., :1], 5, axis=-1)
    np.testing.assert_allclose(H.entropy(agreeing), 0, atol=1e-12)
    np.testing.assert_allclose(H.bald(agreeing), 0, atol=1e-12)
    torch_scores = H.bald(torch.from_numpy(probs).float())
    assert torch.isfinite(torch_scores).all()


@pytest.mark.parametrize("name", sorted(H.HEURISTICS))
def test_binary_single_output_equals_two_classes(name):
    rng = np.random.default_rng(2)
    p1 = rng.random((8, 1, 3, 6))
    kwargs = {"seed": 0} if name == "random" else {}
    one = H.HEURISTICS[name](p1, **kwargs)
    two = H.HEURISTICS[name](np.concatenate([1 - p1, p1], axis=1), **kwargs)
    np.testing.assert_allclose(one, two, rtol=1e-12, atol=1e-15)


# --- validation and array kinds ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (5, 3)])
def test_rejects_too_few_dims_with_expected_shape(shape):
    with pytest.raises(ValueError, match=r"\[N, C, T\].*" + re.escape(str(shape))):
        H.entropy(np.full(shape, 0.5))


@pytest.mark.parametrize("shape", [(3, 0, 4), (3, 2, 0)])
def test_rejects_empty_class_or_sample_axis(shape):
    with pytest.raises(ValueError, match="C >= 1"):
        H.bald(np.zeros(shape))


def test_rejects_nan_and_unknown_reduction():
    probs = np.full((2, 2, 3), 0.5)
    probs[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        H.margin(probs)
    with pytest.raises(ValueError, match="reduction"):
        H.entropy(np.full((2, 2, 3), 0.5), reduction="median")


def test_empty_pool_gives_empty_scores():
    assert H.bald(np.zeros((0, 3, 4))).shape == (0,)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
    ],
)
def test_torch_in_torch_out(dtype, expected):
    probs = torch.full((3, 2, 4), 0.5, dtype=dtype)
    for name, f in H.HEURISTICS.items():
        scores = f(probs)
        assert isinstance(scores, torch.Tensor) and scores.dtype == expected, name
        assert scores.device == probs.device and scores.shape == (3,)


def test_numpy_in_numpy_out_float64():
    probs = np.full((3, 2, 4), 0.5, dtype=np.float32)
    for name, f in H.HEURISTICS.items():
        scores = f(probs)
        assert isinstance(scores, np.ndarray) and scores.dtype == np.float64, name


def test_random_is_seeded_and_uniform():
    probs = np.zeros((2000, 2, 3))
    a, b = H.random(probs, seed=7), H.random(probs, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, H.random(probs, seed=8))
    assert a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.03
    torch_scores = H.random(torch.zeros(2000, 2, 3, dtype=torch.float64), seed=7)
    np.testing.assert_array_equal(torch_scores.numpy(), a)  # same draws on either path
    gen = np.random.default_rng(0)
    assert not np.array_equal(H.random(probs, seed=gen), H.random(probs, seed=gen))


def test_heuristics_registry():
    assert set(H.HEURISTICS) == {
        "bald", "entropy", "margin", "least_confidence", "variation_ratio", "mean_std", "random",
    }  # fmt: skip


# --- properties ---------------------------------------------------------------------------------


def _call(name, probs, **kwargs):
    if name == "random":
        kwargs.setdefault("seed", 0)
    return H.HEURISTICS[name](probs, **kwargs)


@FAST
@given(probs=probs_cases(), name=st.sampled_from(sorted(H.HEURISTICS)))
def test_reductions_collapse_extra_dims(probs, name):
    n, extra = probs.shape[0], probs.shape[2:-1]
    pixel = _call(name, probs, reduction="none")
    assert pixel.shape == (n, *extra)
    axes = tuple(range(1, pixel.ndim))
    for reduction, reference in [("mean", np.mean), ("sum", np.sum), ("max", np.max)]:
        reduced = _call(name, probs, reduction=reduction)
        assert reduced.shape == (n,)
        expected = reference(pixel, axis=axes) if axes else pixel
        np.testing.assert_allclose(reduced, expected, rtol=1e-12, atol=1e-12)
    custom = _call(name, probs, reduction=lambda s: s.reshape(len(s), -1).min(axis=1))
    np.testing.assert_allclose(custom, pixel.reshape(n, -1).min(axis=1))


@FAST
@given(probs=probs_cases(), name=st.sampled_from(sorted(H.HEURISTICS)))
def test_numpy_and_torch_agree(probs, name):
    reference = _call(name, probs, reduction="none")
    as64 = _call(name, torch.from_numpy(probs), reduction="none")
    np.testing.assert_allclose(as64.numpy(), reference, rtol=1e-10, atol=1e-12)
    as32 = _call(name, torch.from_numpy(probs).float(), reduction="none")
    assert as32.dtype == torch.float32
    if name == "variation_ratio":  # argmax can flip on a near-tie rounded to float32
        return
    np.testing.assert_allclose(as32.numpy(), reference, rtol=1e-4, atol=2e-5)


@FAST
@given(probs=probs_cases())
def test_ranges_and_bald_below_entropy(probs):
    c = max(probs.shape[1], 2)
    scores = {name: f(probs, reduction="none") for name, f in SCORERS.items()}
    for name in NONNEGATIVE:
        assert np.all(scores[name] >= 0), name
    assert np.all(scores["entropy"] <= math.log(c) + 1e-12)
    assert np.all(scores["bald"] <= scores["entropy"])
    assert np.all(scores["bald"] <= math.log(probs.shape[-1]) + 1e-12)
    assert np.all((scores["margin"] >= -1) & (scores["margin"] <= 0))
    for name in ["least_confidence", "variation_ratio"]:
        assert np.all(scores[name] <= 1 - 1 / c + 1e-12), name


@FAST
@given(probs=probs_cases(), data=st.data())
def test_permutations(probs, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    by_sample = rng.permutation(probs.shape[0])
    by_mc = rng.permutation(probs.shape[-1])
    for name, f in SCORERS.items():
        scores = f(probs, reduction="none")
        np.testing.assert_allclose(f(probs[by_sample], reduction="none"), scores[by_sample])
        np.testing.assert_allclose(
            f(probs[..., by_mc], reduction="none"), scores, rtol=1e-12, atol=1e-12, err_msg=name
        )
