"""top_k and stochastic batch acquisition (Gumbel top-k sampling)."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import al_lib.heuristics as H
from heuristics.test_scores import random_probs

SAMPLERS = [H.power_sampling, H.softmax_sampling, H.softrank_sampling]
FAST = settings(max_examples=40, deadline=None)


def reference_top_k(scores, k):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


# --- top_k -------------------------------------------------------------------------------------


def test_top_k_orders_highest_first_and_breaks_ties_by_index():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    np.testing.assert_array_equal(H.top_k(scores, 4), [1, 2, 4, 3])
    np.testing.assert_array_equal(H.top_k(scores, 2), [1, 2])


def test_top_k_many_ties_at_the_boundary_pick_lowest_indices():
    scores = np.zeros(1000)
    scores[[990, 500]] = 1.0
    np.testing.assert_array_equal(H.top_k(scores, 5), [500, 990, 0, 1, 2])
    out = H.top_k(torch.from_numpy(scores), 5)
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), [500, 990, 0, 1, 2])


@FAST
@given(
    scores=st.lists(st.integers(-3, 3), min_size=1, max_size=60).map(np.array),
    data=st.data(),
    as_torch=st.booleans(),
    as_float=st.booleans(),
)
def test_top_k_matches_a_stable_full_sort(scores, data, as_torch, as_float):
    k = data.draw(st.integers(0, len(scores)))
    given_scores = scores.astype(np.float32) if as_float else scores
    if as_torch:
        given_scores = torch.from_numpy(given_scores)
    out = H.top_k(given_scores, k)
    assert isinstance(out, torch.Tensor) == as_torch
    assert out.dtype == (torch.int64 if as_torch else np.int64) and out.shape == (k,)
    assert list(np.asarray(out)) == reference_top_k(scores, k)


def test_top_k_edge_cases():
    assert H.top_k(np.array([0.3, 0.1]), 0).shape == (0,)
    assert H.top_k(np.array([-np.inf, 1.0, np.inf]), 3).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="k must be between 0 and .*N=2"):
        H.top_k(np.array([0.3, 0.1]), 3)
    with pytest.raises(ValueError, match="NaN"):
        H.top_k(np.array([0.3, np.nan]), 1)
    with pytest.raises(ValueError, match="1-D"):
        H.top_k(np.zeros((2, 2)), 1)
    with pytest.raises(TypeError):
        H.top_k(np.zeros(3), 1.5)


# --- stochastic samplers ------------------------------------------------------------------------


def _k1_frequencies(sampler, scores, draws=20_000, **kwargs):
    rng = np.random.default_rng(0)  # one stream: each call consumes a fresh seed from it
    picks = [int(sampler(scores, 1, seed=rng, **kwargs)[0]) for _ in range(draws)]
    return np.bincount(picks, minlength=len(scores))


@pytest.mark.parametrize(
    "sampler, weights_of",
    [
        (H.power_sampling, lambda s: s**2),  # temperature 0.5: s^(1/T)
        (H.softmax_sampling, lambda s: np.exp(s / 0.5)),
        (H.softrank_sampling, lambda s: stats.rankdata(-s) ** (-1 / 0.5)),
    ],
)
def test_k1_inclusion_frequencies_match_weights(sampler, weights_of):
    scores = np.array([0.1, 0.5, 1.0, 0.8, 0.3, 0.3])
    counts = _k1_frequencies(sampler, scores, temperature=0.5)
    weights = weights_of(scores)
    expected = counts.sum() * weights / weights.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_draw_order_is_sequential_sampling_without_replacement():
    # P(first = i, second = j) = w_i / W * w_j / (W - w_i) for Gumbel top-k.
    w = np.array([1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(1)
    pairs = [tuple(H.power_sampling(w, 2, seed=rng)) for _ in range(20_000)]
    keys = list(itertools.permutations(range(4), 2))
    counts = np.array([pairs.count(key) for key in keys])
    expected = np.array([w[i] / w.sum() * w[j] / (w.sum() - w[i]) for i, j in keys]) * len(pairs)
    assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_are_seeded_distinct_and_typed(sampler):
    scores = np.random.default_rng(0).random(50)
    a = sampler(scores, 10, seed=3)
    np.testing.assert_array_equal(a, sampler(scores, 10, seed=3))
    assert a.dtype == np.int64 and len(set(a.tolist())) == 10
    assert not np.array_equal(a, sampler(scores, 10, seed=4))
    assert sorted(sampler(scores, 50, seed=0).tolist()) == list(range(50))
    assert sampler(scores, 0, seed=0).shape == (0,)
    t = sampler(torch.from_numpy(scores).float(), 10, seed=3)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), a)
    with pytest.raises(ValueError, match="k must be"):
        sampler(scores, 51, seed=0)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            sampler(scores, 1, temperature=bad)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_tiny_temperature_tends_to_top_k(sampler):
    scores = np.random.default_rng(5).random(40) + 0.1
    for seed in range(5):
        np.testing.assert_array_equal(
            sampler(scores, 8, temperature=1e-6, seed=seed), H.top_k(scores, 8)
        )


def test_power_sampling_zero_and_negative_scores():
    scores = np.array([0.0, 2.0, 0.0, 1.0, -1e-12])  # tiny negative: rounding noise, clipped
    for seed in range(20):
        drawn = H.power_sampling(scores, 4, seed=seed).tolist()
        assert set(drawn[:2]) == {1, 3}  # positive weights come first, zeros only after
    assert sorted(H.power_sampling(np.zeros(5), 5, seed=0).tolist()) == list(range(5))
    counts = _k1_frequencies(H.power_sampling, np.zeros(4), draws=4000)
    assert stats.chisquare(counts).pvalue > 1e-3  # all zero: uniform
    with pytest.raises(ValueError, match=">= 0"):
        H.power_sampling(np.array([0.5, -0.2]), 1)


def test_softrank_gives_equal_scores_equal_chances():
    counts = _k1_frequencies(H.softrank_sampling, np.array([1.0, 1.0, 0.0]), draws=6000)
    # ranks 1.5, 1.5, 3 -> weights 1/1.5, 1/1.5, 1/3
    expected = np.array([0.4, 0.4, 0.2]) * 6000
    assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize(
    "composed, sampler, scorer",
    [
        (H.power_bald, H.power_sampling, H.bald),
        (H.power_entropy, H.power_sampling, H.entropy),
        (H.softmax_bald, H.softmax_sampling, H.bald),
        (H.softrank_bald, H.softrank_sampling, H.bald),
    ],
)
def test_composed_acquisitions(composed, sampler, scorer):
    probs = random_probs(np.random.default_rng(0), (30, 3, 2, 5))
    for reduction in ("mean", "max"):
        expected = sampler(scorer(probs, reduction=reduction), 7, temperature=0.7, seed=1)
        got = composed(probs, 7, temperature=0.7, seed=1, reduction=reduction)
        np.testing.assert_array_equal(got, expected)
    assert composed.__name__ in H.__all__
    t = composed(torch.from_numpy(probs), 3, seed=0)
    assert isinstance(t, torch.Tensor) and t.shape == (3,)
