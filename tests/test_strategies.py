"""Acquisition strategies: scores, selections, streaming == two-phase, closed-form distributions."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import al_lib.heuristics as H
from al_lib.acquisition import acquire
from al_lib.bayesian import patch_module
from al_lib.inference import iter_predict_mc, score_pool
from al_lib.strategies import (
    BatchBALDStrategy,
    PoolScorer,
    RandomStrategy,
    SamplingStrategy,
    ScoredPool,
    Selection,
    Strategy,
    TopKStrategy,
    available_strategies,
    get_strategy,
    merge_scored_pools,
)
from heuristics.test_batch_bald import brute_force_joint_mi
from heuristics.test_scores import random_probs

NAMES = ["bald", "entropy", "margin", "least_confidence", "variation_ratio", "mean_std", "random",
         "batch_bald", "power_bald", "power_entropy", "softmax_bald", "softrank_bald"]
# The per-sample score each strategy reports (and BatchBALD pre-filters by).
OWN_SCORE = {
    "bald": H.bald, "entropy": H.entropy, "margin": H.margin, "least_confidence": H.least_confidence,
    "variation_ratio": H.variation_ratio, "mean_std": H.mean_std, "batch_bald": H.bald,
    "power_bald": H.bald, "power_entropy": H.entropy, "softmax_bald": H.bald, "softrank_bald": H.bald,
}
# What each stochastic sampler's selection must equal on the same scores and seed.
SAMPLER_OF = {"power_bald": H.power_sampling, "power_entropy": H.power_sampling,
              "softmax_bald": H.softmax_sampling, "softrank_bald": H.softrank_sampling}


def probs_of(seed, shape=(40, 3, 6), kind="dirichlet"):
    return random_probs(np.random.default_rng(seed), shape, kind)


def two_phase(strategy, batches, k, seed):
    """The pipeline's use: score every batch, keep the joint candidates, then select."""
    scorer = strategy.pool_scorer(k)
    for b in batches:
        scorer.update(b)
    scored = scorer.result()
    return strategy.select(scored.scores, k, seed=seed, joint=scored.joint)


def streamed(strategy, batches, k, seed):
    stream = strategy.stream(k, seed=seed)
    for b in batches:
        stream.update(b)
    return stream.result()


def chunks(probs, size):
    return [probs[i : i + size] for i in range(0, len(probs), size)]


# --- registry -------------------------------------------------------------------------------


def test_registry_names_flags_and_parameters():
    # + the embedding strategies, tested in tests/test_embedding_strategies.py
    assert available_strategies() == sorted(NAMES + ["badge", "class_balanced", "coreset", "epig", "probcover", "typiclust"])
    strategies = {name: get_strategy(name) for name in NAMES}
    assert all(isinstance(s, Strategy) and s.name == name for name, s in strategies.items())
    assert [n for n, s in strategies.items() if s.needs_joint] == ["batch_bald"]
    assert [n for n, s in strategies.items() if not s.needs_probs] == ["random"]
    assert {n for n, s in strategies.items() if s.stochastic} == {"random", "batch_bald", *SAMPLER_OF}
    assert isinstance(strategies["bald"], TopKStrategy) and isinstance(strategies["random"], RandomStrategy)
    assert isinstance(strategies["softrank_bald"], SamplingStrategy)
    assert get_strategy("power_bald", temperature=0.25).temperature == 0.25
    assert get_strategy("batch_bald", num_candidates=10).candidate_count(3, 100) == 10
    instance = get_strategy("softmax_bald", temperature=2.0)
    assert get_strategy(instance) is instance
    with pytest.raises(ValueError, match="unknown acquisition strategy 'nope'"):
        get_strategy("nope")
    with pytest.raises(TypeError):
        get_strategy("bald", temperature=1.0)  # top-k has no temperature: refuse, never ignore
    with pytest.raises(TypeError):
        get_strategy(instance, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        get_strategy("power_bald", temperature=0.0)
    with pytest.raises(ValueError, match="num_candidates"):
        get_strategy("batch_bald", num_candidates=0)


# --- own scores -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_score_batch_is_the_strategys_own_heuristic(name):
    probs = probs_of(0, (12, 3, 2, 5))  # with a segmentation dim: reduced by "mean"
    strategy = get_strategy(name)
    for given in (probs, torch.from_numpy(probs).float()):
        got = strategy.score_batch(given)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (12,)
        if name == "random":
            assert np.isnan(got).all()  # random has no score
        else:
            expected = np.asarray(OWN_SCORE[name](given), dtype=np.float64)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", NAMES)
def test_selected_scores_are_the_strategys_own_on_the_picks(name):
    probs = probs_of(1, (30, 4, 6))
    strategy = get_strategy(name)
    scores = strategy.score_batch(probs)
    joint = probs[strategy.joint_candidates(scores, 5)] if strategy.needs_joint else None
    sel = strategy.select(scores, 5, seed=7, joint=joint)
    assert isinstance(sel, Selection)
    positions, picked = sel  # unpacks like acquire's (positions, scores)
    assert positions.dtype == np.int64 and picked.dtype == np.float64 and len(set(positions.tolist())) == 5
    if name == "batch_bald":  # marginal joint-MI gains: they add up to the batch's joint MI
        assert picked.sum() == pytest.approx(H.joint_mutual_information(probs, positions), abs=1e-9)
        assert picked[0] == pytest.approx(scores[positions[0]], abs=1e-6)  # the first gain is BALD
    else:
        np.testing.assert_array_equal(picked, scores[positions])


def test_top_k_strategies_are_top_k_best_first():
    probs = probs_of(2, (50, 3, 4))
    for name in ("bald", "entropy", "margin", "least_confidence", "variation_ratio", "mean_std"):
        strategy = get_strategy(name)
        scores = strategy.score_batch(probs)
        np.testing.assert_array_equal(strategy.select(scores, 9).positions, H.top_k(scores, 9))


def test_ties_go_to_the_lower_position():
    flat = np.full((8, 2, 3), 0.5)  # every score ties
    for name in ("bald", "entropy", "margin", "least_confidence", "variation_ratio", "mean_std", "batch_bald"):
        strategy = get_strategy(name)
        scores = strategy.score_batch(flat)
        joint = flat[strategy.joint_candidates(scores, 3)] if strategy.needs_joint else None
        np.testing.assert_array_equal(strategy.select(scores, 3, joint=joint).positions, [0, 1, 2])
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    np.testing.assert_array_equal(get_strategy("bald").select(scores, 4).positions, [1, 2, 4, 3])


def test_batch_bald_ties_across_candidates_go_to_the_lower_position():
    # Identical rows: BALD ties, and every gain after the first ties too.
    row = probs_of(3, (1, 3, 4))
    probs = np.concatenate([np.full((6, 3, 4), 1 / 3), np.repeat(row, 4, axis=0)])
    strategy = get_strategy("batch_bald", num_candidates=3)
    scores = strategy.score_batch(probs)
    candidates = strategy.joint_candidates(scores, 2)
    np.testing.assert_array_equal(candidates, [6, 7, 8])  # the lowest of the four tied copies
    sel = strategy.select(scores, 2, joint=probs[candidates])
    np.testing.assert_array_equal(sel.positions, [6, 7])


# --- k ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_k_zero_all_and_too_many(name):
    probs = probs_of(5, (7, 3, 4))
    strategy = get_strategy(name)
    scores = strategy.score_batch(probs)
    joint = probs if strategy.needs_joint else None  # 7 <= M: every position is a candidate
    empty = strategy.select(scores, 0, seed=0, joint=joint)
    assert empty.positions.shape == (0,) and empty.scores.shape == (0,)
    every = strategy.select(scores, 7, seed=0, joint=joint)
    assert sorted(every.positions.tolist()) == list(range(7))
    for k in (8, -1):
        with pytest.raises(ValueError, match=f"cannot select k={k} samples from a pool of 7"):
            strategy.select(scores, k, seed=0, joint=joint)
    with pytest.raises(TypeError):
        strategy.select(scores, 2.0, seed=0, joint=joint)
    stream = strategy.stream(8, seed=0)
    stream.update(probs)
    with pytest.raises(ValueError, match="k=8 samples from a pool of 7"):
        stream.result()
    nothing = strategy.pool_scorer(0).result()  # an empty pool
    assert strategy.select(nothing.scores, 0, seed=0, joint=nothing.joint).positions.shape == (0,)


# --- streaming == two-phase ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_stream_equals_select_for_any_chunking(name):
    probs = probs_of(6, (90, 4, 6))
    # BatchBALD: few candidates, and sampled configurations from the second pick on (seeded draws).
    joint_params = {"num_candidates": 20, "max_exact_configs": 1, "num_samples": 64}
    strategy = get_strategy(name, **(joint_params if name == "batch_bald" else {}))
    whole = two_phase(strategy, [probs], 6, seed=11)
    for size in (1, 7, 90):
        for got in (two_phase(strategy, chunks(probs, size), 6, 11), streamed(strategy, chunks(probs, size), 6, 11)):
            np.testing.assert_array_equal(got.positions, whole.positions)
            np.testing.assert_array_equal(got.scores, whole.scores)
    if name in SAMPLER_OF or name == "random":
        other = two_phase(strategy, [probs], 6, seed=12)
        assert not np.array_equal(other.positions, whole.positions)


@pytest.mark.parametrize("name", NAMES)
def test_select_accepts_a_generator_seed_like_the_array_api(name):
    probs = probs_of(7, (25, 3, 5))
    strategy = get_strategy(name)
    scores = strategy.score_batch(probs)
    joint = probs[strategy.joint_candidates(scores, 4)] if strategy.needs_joint else None
    a = strategy.select(scores, 4, seed=np.random.default_rng(3), joint=joint)
    b = strategy.select(scores, 4, seed=np.random.default_rng(3), joint=joint)
    np.testing.assert_array_equal(a.positions, b.positions)
    if name in SAMPLER_OF:  # the pure-array samplers are the same code: same picks, same seed
        expected = SAMPLER_OF[name](scores, 4, seed=np.random.default_rng(3))
        np.testing.assert_array_equal(a.positions, expected)


def mlp():
    torch.manual_seed(0)
    return patch_module(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)),
                        consistent=True)


@pytest.mark.parametrize("name", NAMES)
def test_score_pool_acquire_and_two_phase_pick_the_same(name):
    """score_pool (one pass, O(batch + k)), the pipeline's two phases and acquire agree."""
    model, x = mlp(), torch.randn(60, 4)
    mc = dict(iterations=5, batch_size=16, progress=False)
    strategy = get_strategy(name, **({"num_candidates": 12} if name == "batch_bald" else {}))
    rng = np.random.default_rng(21)  # acquire's seed: first the MC seed, then the selection seed
    mc_seed, select_seed = int(rng.integers(2**31)), int(rng.integers(2**31))
    batches = list(iter_predict_mc(model, x, seed=mc_seed, **mc))
    expected = two_phase(strategy, batches, 5, select_seed)
    streamed_picks = score_pool(model, x, strategy, 5, seed=mc_seed, selection_seed=select_seed, **mc)
    acquired = acquire(model, x, strategy, 5, seed=21, **mc)
    for got in (streamed_picks, acquired):
        np.testing.assert_array_equal(got[0], expected.positions)
        np.testing.assert_array_equal(got[1], expected.scores)


def test_acquire_by_name_passes_temperature_to_the_samplers_only():
    model, x = mlp(), torch.randn(40, 4)
    mc = dict(iterations=4, batch_size=16, progress=False, seed=2)
    hot = acquire(model, x, "power_bald", 5, temperature=50.0, **mc)
    np.testing.assert_array_equal(hot[0], acquire(model, x, get_strategy("power_bald", temperature=50.0), 5, **mc)[0])
    assert not np.array_equal(hot[0], acquire(model, x, "power_bald", 5, temperature=0.01, **mc)[0])
    np.testing.assert_array_equal(acquire(model, x, "bald", 5, temperature=50.0, **mc)[0],
                                  acquire(model, x, "bald", 5, **mc)[0])


def test_acquire_holds_scores_not_the_probability_array():
    """tracemalloc sees numpy's allocations: [N, C, T] float32 is 8 MB here, the scores 80 kB."""
    import tracemalloc

    torch.manual_seed(0)
    model = patch_module(nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 10)))
    x = torch.randn(10_000, 4)
    for name in ("power_bald", "softrank_bald"):  # softrank ranks all N scores at once
        acquire(model, x[:64], name, 5, iterations=20, batch_size=256, progress=False)  # warm caches
        tracemalloc.start()
        try:
            acquire(model, x, name, 5, iterations=20, batch_size=256, progress=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2 * 2**20, f"{name}: peak {peak / 1e6:.2f} MB"


def test_random_needs_no_model_pass():
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("random must not run the model")

    x = torch.randn(30, 4)
    a = acquire(Exploding(), x, "random", 6, seed=5, progress=False)
    b = score_pool(Exploding(), x, "random", 6, selection_seed=5, progress=False)
    assert len(set(a[0].tolist())) == 6 and np.isnan(a[1]).all()
    assert len(set(b[0].tolist())) == 6 and np.isnan(b[1]).all()


# --- distributions --------------------------------------------------------------------------


def test_random_is_seeded_uniform_without_replacement():
    strategy = get_strategy("random")
    scores = np.full(6, np.nan)  # random ignores scores
    a = strategy.select(scores, 4, seed=3)
    np.testing.assert_array_equal(a.positions, strategy.select(scores, 4, seed=3).positions)
    assert len(set(a.positions.tolist())) == 4
    draws = [tuple(strategy.select(scores, 2, seed=s).positions) for s in range(6000)]
    # Ordered pairs (i, j), i != j: each has probability 1 / 30.
    counts = np.array([draws.count(pair) for pair in itertools.permutations(range(6), 2)])
    assert stats.chisquare(counts).pvalue > 1e-3
    # The scores of the other strategies do not bias it.
    biased = [strategy.select(np.array([0.0, 0.0, 5.0]), 1, seed=s).positions[0] for s in range(3000)]
    assert stats.chisquare(np.bincount(biased, minlength=3)).pvalue > 1e-3


@pytest.mark.parametrize(
    "name, weight",
    [
        ("power_bald", lambda s, t: s ** (1 / t)),
        ("softmax_bald", lambda s, t: np.exp(s / t)),
        ("softrank_bald", lambda s, t: stats.rankdata(-s) ** (-1 / t)),
    ],
)
def test_sampling_distribution_matches_the_closed_form(name, weight):
    """Kirsch et al.: P(first = i) ∝ w_i, P(first = i, second = j) = w_i/W · w_j/(W - w_i)."""
    scores = np.array([0.05, 0.2, 0.4, 0.8, 1.0])
    temperature = 0.7
    strategy = get_strategy(name, temperature=temperature)
    w = weight(scores, temperature)
    draws = [tuple(strategy.select(scores, 2, seed=s).positions) for s in range(8000)]
    firsts = np.bincount([d[0] for d in draws], minlength=5)
    assert stats.chisquare(firsts, len(draws) * w / w.sum()).pvalue > 1e-3
    pairs = list(itertools.permutations(range(5), 2))
    counts = np.array([draws.count(p) for p in pairs])
    expected = np.array([w[i] / w.sum() * w[j] / (w.sum() - w[i]) for i, j in pairs]) * len(draws)
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_power_sampling_zero_scores_come_last_and_negative_scores_are_refused():
    strategy = get_strategy("power_entropy")
    scores = np.array([0.0, 0.3, 0.0, 0.2])
    for seed in range(20):
        assert set(strategy.select(scores, 3, seed=seed).positions[:2].tolist()) == {1, 3}
    with pytest.raises(ValueError, match="scores >= 0"):
        strategy.select(np.array([0.5, -1.0]), 1, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        strategy.select(np.array([0.5, np.nan]), 1, seed=0)


# --- BatchBALD ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_batch_bald_gains_are_brute_force_joint_mi_increments(seed):
    probs = probs_of(seed, (7, 3, 5), ["dirichlet", "sharp", "mixed", "dirichlet"][seed])
    strategy = get_strategy("batch_bald")
    scores = strategy.score_batch(probs)
    sel = strategy.select(scores, 4, seed=0, joint=probs[strategy.joint_candidates(scores, 4)])
    picks = sel.positions.tolist()
    mi = [brute_force_joint_mi(probs, picks[:j]) for j in range(5)]
    np.testing.assert_allclose(sel.scores, np.diff(mi), atol=1e-9)
    # Each pick maximises the brute-force joint MI given the earlier ones (the greedy step).
    for j in range(4):
        best = max(brute_force_joint_mi(probs, picks[:j] + [i]) for i in range(7) if i not in picks[:j])
        assert mi[j + 1] >= best - 1e-9


def test_batch_bald_equals_the_array_function_when_every_sample_is_a_candidate():
    probs = probs_of(8, (60, 4, 8))
    strategy = get_strategy("batch_bald")  # default M = 2048 > 60
    scores = strategy.score_batch(probs)
    np.testing.assert_array_equal(strategy.joint_candidates(scores, 5), np.arange(60))
    sel = strategy.select(scores, 5, seed=1, joint=probs)
    np.testing.assert_array_equal(sel.positions, H.batch_bald(probs, 5, seed=1))
    _, gains = H.batch_bald(probs, 5, seed=1, return_gains=True)
    np.testing.assert_array_equal(sel.scores, gains)


def test_batch_bald_pre_filter_keeps_the_full_pool_picks_when_its_bound_holds(caplog):
    # A few informative clusters of near-duplicates in a pool of near-certain samples.
    rng = np.random.default_rng(9)
    informative = np.repeat(probs_of(10, (6, 3, 8)), 3, axis=0) + rng.uniform(0, 1e-3, (18, 3, 8))
    certain = np.tile([[0.98], [0.01], [0.01]], (300, 1, 8)) + rng.uniform(0, 1e-3, (300, 3, 8))
    probs = np.concatenate([certain[:150], informative, certain[150:]])
    probs /= probs.sum(axis=1, keepdims=True)
    strategy = get_strategy("batch_bald", num_candidates=30)
    scores = strategy.score_batch(probs)
    candidates = strategy.joint_candidates(scores, 4)
    assert len(candidates) == 30 and np.all(np.diff(candidates) > 0)
    np.testing.assert_array_equal(np.sort(candidates), np.sort(H.top_k(scores, 30)))
    with caplog.at_level("INFO", logger="al_lib.strategies"):
        sel = strategy.select(scores, 4, seed=0, joint=probs[candidates])
    outside = np.setdiff1d(np.arange(len(probs)), candidates)
    assert sel.scores[-1] > scores[outside].max()  # the bound: nothing left out could have won
    assert "pre-filter" not in caplog.text
    np.testing.assert_array_equal(sel.positions, H.batch_bald(probs, 4, seed=0))
    # A pool too informative for 5 candidates: the shortfall is reported.
    tight = get_strategy("batch_bald", num_candidates=5)
    with caplog.at_level("INFO", logger="al_lib.strategies"):
        tight.select(scores, 5, seed=0, joint=probs[tight.joint_candidates(scores, 5)])
    assert "pre-filter" in caplog.text


def test_batch_bald_refuses_a_missing_or_mismatched_joint():
    probs = probs_of(11, (30, 3, 4))
    strategy = get_strategy("batch_bald", num_candidates=10)
    scores = strategy.score_batch(probs)
    with pytest.raises(ValueError, match="needs joint"):
        strategy.select(scores, 3, seed=0)
    with pytest.raises(ValueError, match="joint has 30 rows"):
        strategy.select(scores, 3, seed=0, joint=probs)
    with pytest.raises(ValueError, match="takes no joint"):
        get_strategy("bald").select(scores, 3, joint=probs)
    with pytest.raises(ValueError, match="needs k"):
        PoolScorer(strategy)


def test_pool_scorer_keeps_the_candidates_probs_and_shards_merge_to_one_pass():
    probs = probs_of(12, (100, 3, 5)).astype(np.float32)
    for strategy in (get_strategy("batch_bald", num_candidates=15), get_strategy("bald")):
        whole = strategy.pool_scorer(4)
        whole.update(probs)
        one = whole.result()
        parts = []
        for shard in np.array_split(np.arange(100), 3):  # contiguous shards, scored independently
            scorer = strategy.pool_scorer(4)
            for b in chunks(probs[shard], 9):
                scorer.update(b)
            parts.append(scorer.result())
        merged = merge_scored_pools(parts, strategy, 4)
        np.testing.assert_array_equal(merged.scores, one.scores)
        if strategy.needs_joint:
            np.testing.assert_array_equal(one.joint_positions, strategy.joint_candidates(one.scores, 4))
            np.testing.assert_array_equal(one.joint, probs[one.joint_positions])
            np.testing.assert_array_equal(merged.joint_positions, one.joint_positions)
            np.testing.assert_array_equal(merged.joint, one.joint)
        else:
            assert merged.joint is None and one.joint is None
        a = strategy.select(one.scores, 4, seed=0, joint=one.joint)
        b = strategy.select(merged.scores, 4, seed=0, joint=merged.joint)
        np.testing.assert_array_equal(a.positions, b.positions)
    with pytest.raises(ValueError, match="without the joint"):
        merge_scored_pools([ScoredPool(np.zeros(3))], get_strategy("batch_bald"), 1)


def test_candidate_count_default_bounds_and_clipping():
    strategy = get_strategy("batch_bald")
    assert strategy.candidate_count(10, 10**6) == 2048
    assert strategy.candidate_count(1000, 10**6) == 16_000
    assert strategy.candidate_count(10, 500) == 500
    assert get_strategy("batch_bald", num_candidates=3).candidate_count(8, 100) == 8  # at least k
    assert isinstance(strategy, BatchBALDStrategy)
