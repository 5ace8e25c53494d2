import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from al_lib.bayesian import patch_module
from al_lib.heuristics import power_sampling, softmax_sampling, softrank_sampling
from al_lib.inference import score_pool
from al_lib.sampling import (
    GumbelTopK,
    RunningTopK,
    Selection,
    StreamingGumbelTopK,
    gumbel_noise,
    make_selector,
    noise_seed,
    subsample_indices,
)


def stream(selector, scores, chunk):
    for start in range(0, len(scores), chunk):
        selector.update(scores[start : start + chunk], np.arange(start, min(start + chunk, len(scores))))
    return selector.result()


# ---------------------------------------------------------------- subsample_indices


def test_subsample_sizes_fractions_and_sorting():
    pos = subsample_indices(100, 30, seed=1)
    assert len(pos) == 30 and np.all(np.diff(pos) > 0) and pos.dtype == np.int64
    assert len(subsample_indices(100, 0.25, seed=1)) == 25
    assert len(subsample_indices(3, 0.01, seed=1)) == 1
    np.testing.assert_array_equal(subsample_indices(5, None), np.arange(5))
    np.testing.assert_array_equal(subsample_indices(5, 50, seed=0), np.arange(5))
    np.testing.assert_array_equal(subsample_indices(100, 30, seed=1), pos)


def test_subsample_draws_from_a_shared_generator_like_the_old_loop_helper():
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    got = subsample_indices(50, 10, rng_a)
    np.testing.assert_array_equal(got, np.sort(rng_b.choice(50, size=10, replace=False)))
    assert rng_a.integers(1000) == rng_b.integers(1000)  # same stream consumption


@pytest.mark.parametrize("size,error", [(0, ValueError), (-3, ValueError), (1.5, ValueError), (0.0, ValueError),
                                        ("10", TypeError), (True, TypeError)])
def test_subsample_rejects_bad_sizes(size, error):
    with pytest.raises(error):
        subsample_indices(10, size, seed=0)


class CountingImages(Dataset):
    """Decoding is the expensive step: count which items are ever read."""

    def __init__(self, n):
        self.x = torch.randn(n, 4)
        self.reads = []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads.append(int(i))
        return self.x[i], 0


def test_only_subsampled_items_are_ever_decoded():
    pool = CountingImages(500)
    positions = subsample_indices(len(pool), 0.1, seed=3)
    torch.manual_seed(0)
    model = patch_module(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)))
    picks, _ = score_pool(model, Subset(pool, positions), "bald", 5, iterations=3, batch_size=16,
                          progress=False)
    assert sorted(pool.reads) == positions.tolist()  # each chosen item once, nothing else
    assert set(positions[picks]) <= set(positions)


# ---------------------------------------------------------------- streamed selection


def test_running_top_k_carries_values_with_indices():
    best = RunningTopK(2)
    best.update(np.array([1.0, 5.0]), np.array([0, 1]), values=np.array([10.0, 50.0]))
    best.update(np.array([3.0]), np.array([2]), values=np.array([30.0]))
    assert best.indices.tolist() == [1, 2] and best.values.tolist() == [50.0, 30.0]


def test_gumbel_noise_is_a_function_of_seed_and_position():
    whole = gumbel_noise(5, np.arange(37))
    pieces = np.concatenate([gumbel_noise(5, np.arange(a, b)) for a, b in [(0, 3), (3, 4), (4, 21), (21, 37)]])
    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_array_equal(gumbel_noise(5, np.array([30, 2, 3, 17])), whole[[30, 2, 3, 17]])
    assert not np.allclose(gumbel_noise(6, np.arange(37)), whole)
    big = gumbel_noise(0, np.arange(200_000))
    assert abs(big.mean() - np.euler_gamma) < 0.01 and abs(big.var() - np.pi**2 / 6) < 0.03


@pytest.mark.parametrize("selection", ["power", "softmax", "softrank"])
def test_same_seed_same_picks_whatever_the_chunking(selection):
    scores = np.random.default_rng(0).random(200)
    picks = {chunk: stream(make_selector(selection, 12, temperature=0.5, seed=9), scores, chunk)
             for chunk in (1, 7, 200)}
    for chunk in (7, 200):
        np.testing.assert_array_equal(picks[chunk][0], picks[1][0])
    idx, got = picks[1]
    assert len(set(idx.tolist())) == 12
    np.testing.assert_array_equal(got, scores[idx])
    other = stream(make_selector(selection, 12, temperature=0.5, seed=10), scores, 7)[0]
    assert not np.array_equal(other, idx)


@pytest.mark.parametrize(
    "selection,sampler", [("power", power_sampling), ("softmax", softmax_sampling), ("softrank", softrank_sampling)]
)
def test_streamed_selectors_pick_exactly_what_the_array_samplers_pick(selection, sampler):
    """One Gumbel top-k: the same keys per position, so a stream and the whole array agree."""
    scores = np.random.default_rng(1).random(60)
    for seed in range(5):
        idx, got = stream(make_selector(selection, 8, temperature=2.0, seed=seed), scores, 9)
        np.testing.assert_array_equal(idx, sampler(scores, 8, temperature=2.0, seed=seed))
        np.testing.assert_array_equal(got, scores[idx])


def test_gumbel_top_k_keys_are_log_weight_plus_positional_noise():
    log_w = np.log(np.random.default_rng(2).random(50))
    log_w[[3, 17]] = -np.inf  # weight 0: after every positive one, ranked by their noise alone
    draw = GumbelTopK(50, seed=8)
    for start in range(0, 50, 11):  # out of order, in uneven chunks
        draw.update(log_w[start : start + 11][::-1], np.arange(start, min(start + 11, 50))[::-1])
    noise = gumbel_noise(noise_seed(8), np.arange(50))
    keys = np.where(np.isinf(log_w), -np.inf, log_w + noise)
    expected = sorted(range(50), key=lambda i: (-keys[i], -noise[i]))
    positions, values = draw.result()
    assert positions.tolist() == expected and positions[-2:].tolist() in ([3, 17], [17, 3])
    np.testing.assert_array_equal(values, log_w[positions])


def test_uniform_selection_ignores_scores_and_is_seeded():
    scores = np.array([np.nan, 5.0, -1.0, 0.0, np.nan])
    a = stream(make_selector("uniform", 5, seed=1), scores, 2)
    assert isinstance(a, Selection) and sorted(a.positions.tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(a.scores, scores[a.positions])  # carried along, NaN included
    np.testing.assert_array_equal(stream(make_selector("uniform", 5, seed=1), scores, 5).positions, a.positions)
    firsts = np.bincount([stream(make_selector("uniform", 1, seed=s), scores, 3).positions[0] for s in range(2000)],
                         minlength=5)
    assert np.all(np.abs(firsts / 2000 - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 2000))


def test_running_top_k_edge_cases():
    best = RunningTopK(0)
    best.update(np.array([1.0, 2.0]), np.array([0, 1]))
    assert best.result().positions.shape == (0,)
    best = RunningTopK(3)
    best.update(np.empty(0), np.empty(0, dtype=np.int64))
    best.update(np.array([2.0, 2.0, 2.0, 2.0]), np.array([9, 4, 7, 5]))
    assert best.result().positions.tolist() == [4, 5, 7]  # all tie at the k-th score: lowest positions


@pytest.mark.parametrize(
    "selection,weights,reference",
    [
        ("power", lambda s, t: s ** (1 / t), power_sampling),
        ("softmax", lambda s, t: np.exp(s / t), softmax_sampling),
    ],
)
def test_inclusion_frequencies_match_the_sampling_distribution(selection, weights, reference):
    """k=1 over many seeds: P(i) ∝ weight(score_i), as for the non-streaming sampler."""
    scores = np.array([0.05, 0.1, 0.2, 0.4, 0.8, 1.6])
    expected = weights(scores, 0.7) / weights(scores, 0.7).sum()
    n = 4000
    streamed = np.bincount([stream(make_selector(selection, 1, temperature=0.7, seed=s), scores, 4)[0][0]
                            for s in range(n)], minlength=6) / n
    batch = np.bincount([reference(scores, 1, temperature=0.7, seed=s)[0] for s in range(n)], minlength=6) / n
    # 4 standard errors of a binomial proportion.
    tolerance = 4 * np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(streamed - expected) < tolerance), (streamed, expected)
    assert np.all(np.abs(batch - expected) < tolerance), (batch, expected)


def test_zero_weights_come_after_every_positive_one():
    scores = np.array([0.0, 0.3, 0.0, 0.0, 0.2, 0.0])
    for seed in range(20):
        idx, got = stream(make_selector("power", 4, seed=seed), scores, 2)
        assert set(idx[:2].tolist()) == {1, 4} and set(idx[2:].tolist()) <= {0, 2, 3, 5}
        np.testing.assert_array_equal(got, scores[idx])


def test_power_refuses_negative_scores_and_unknown_selection():
    with pytest.raises(ValueError, match="scores >= 0"):
        stream(make_selector("power", 1, seed=0), np.array([0.5, -1.0]), 2)
    with pytest.raises(ValueError, match="unknown selection"):
        make_selector("nope", 1)
    with pytest.raises(ValueError, match="temperature"):
        StreamingGumbelTopK(1, lambda s, t: s, temperature=0.0)
