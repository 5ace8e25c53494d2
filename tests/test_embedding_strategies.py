"""al_lib.embedding_strategies: registered, streamed with bounded memory, usable by acquire/simulate."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from al_lib.acquisition import acquire
from al_lib.bayesian import patch_module
from al_lib.embedding_strategies import LabelledSet
from al_lib.heuristics.diversity import badge, class_balanced, kcenter_greedy, probcover, typiclust
from al_lib.heuristics.epig import epig
from al_lib.inference import predict_mc, score_pool
from al_lib.strategies import PoolScorer, available_strategies, get_strategy, merge_scored_pools

NEW = ["badge", "coreset", "typiclust", "probcover", "epig", "class_balanced"]


def _mlp():
    with torch.random.fork_rng():
        torch.manual_seed(0)  # weight init only, in a forked RNG
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    return patch_module(m, consistent=True)


X = torch.tensor(np.random.default_rng(0).normal(size=(120, 8)), dtype=torch.float32)
POOL = TensorDataset(X)
MC = dict(iterations=4, batch_size=32, progress=False)


def _strategy(name, **kw):
    return get_strategy(name, **({"delta": 2.0} if name == "probcover" else {}), **kw)


def test_registered():
    assert set(NEW) <= set(available_strategies())
    assert get_strategy("badge").needs_features and get_strategy("typiclust").needs_probs is False
    assert get_strategy("epig").needs_consistent_samples and get_strategy("class_balanced").needs_predicted
    with pytest.raises(ValueError, match="delta"):
        get_strategy("probcover")
    with pytest.raises(ValueError, match="max_candidates"):
        get_strategy("badge", max_candidates=0)


def _score(strategy, batch, limit_seed=3):
    scorer = PoolScorer(strategy, 5, seed=limit_seed)
    probs, feats = predict_mc(_mlp(), X, seed=1, features="penultimate", **MC)
    for s in range(0, 120, batch):
        scorer.update(torch.from_numpy(probs[s : s + batch]), torch.from_numpy(feats[s : s + batch]))
    return scorer.result(), probs, feats


def test_candidates_are_a_bounded_uniform_subsample_independent_of_batching():
    strategy = get_strategy("badge", max_candidates=30)
    a, probs, feats = _score(strategy, 7)
    b, _, _ = _score(strategy, 50)
    assert len(a.candidate_positions) == 30 and np.all(np.diff(a.candidate_positions) > 0)
    np.testing.assert_array_equal(a.candidate_positions, b.candidate_positions)
    np.testing.assert_array_equal(a.features, feats[a.candidate_positions])
    np.testing.assert_allclose(a.candidate_probs, probs[a.candidate_positions].mean(-1), atol=1e-6)
    assert not np.array_equal(_score(strategy, 7, limit_seed=4)[0].candidate_positions, a.candidate_positions)
    whole, _, _ = _score(get_strategy("badge", max_candidates=None), 7)
    np.testing.assert_array_equal(whole.candidate_positions, np.arange(120))


def test_select_is_the_pure_function_on_the_candidates():
    scored, probs, feats = _score(get_strategy("badge", max_candidates=None), 16)
    picks = get_strategy("badge", max_candidates=None).select(scored.scores, 6, seed=5, pool=scored)
    assert picks.positions.tolist() == badge(torch.from_numpy(probs.mean(-1)), torch.from_numpy(feats), 6, seed=5).tolist()
    assert np.isnan(picks.scores).all()
    lab = feats[:3] + 0.1
    core = get_strategy("coreset", max_candidates=None).select(scored.scores, 6, pool=scored,
                                                                labelled=LabelledSet(features=lab))
    assert core.positions.tolist() == kcenter_greedy(torch.from_numpy(feats), 6, labelled_ld=torch.from_numpy(lab)).tolist()
    with pytest.raises(ValueError, match="pool=ScoredPool"):
        get_strategy("badge").select(scored.scores, 2)
    with pytest.raises(ValueError, match="one PoolScorer"):
        merge_scored_pools([scored], get_strategy("badge"), 2)


def test_acquire_coreset_uses_the_labelled_set_in_the_same_embedding():
    model = _mlp()
    labelled = TensorDataset(X[:10] * 0.5, torch.zeros(10, dtype=torch.int64))
    picks, scores = acquire(model, POOL, "coreset", 8, seed=4, labelled=labelled, **MC)
    rng = np.random.default_rng(4)
    mc_seed = int(rng.integers(2**31))
    _, pool_f = predict_mc(model, X, seed=mc_seed, features="penultimate", **MC)
    _, lab_f = predict_mc(model, X[:10] * 0.5, seed=mc_seed, features="penultimate", **MC)
    assert picks.tolist() == kcenter_greedy(torch.from_numpy(pool_f), 8, labelled_ld=torch.from_numpy(lab_f)).tolist()
    again, _ = acquire(model, POOL, "coreset", 8, seed=4, labelled=labelled, **MC)
    assert again.tolist() == picks.tolist()


@pytest.mark.parametrize("name", NEW)
def test_every_new_strategy_through_acquire_and_score_pool(name):
    model = _mlp()
    labelled = TensorDataset(X[:6], torch.tensor([0, 0, 0, 0, 1, 2]))
    picks, _ = acquire(model, POOL, _strategy(name), 9, seed=2, labelled=labelled, **MC)
    assert len(set(picks.tolist())) == 9 and picks.min() >= 0 and picks.max() < 120
    strategy = _strategy(name)
    if name == "epig":  # score_pool takes no target set: bind its probs (same MC seed)
        strategy = strategy.with_target(predict_mc(model, X[:10], seed=3, **MC))
    streamed, _ = score_pool(model, X, strategy, 9, seed=3, selection_seed=4, **MC)
    assert len(set(streamed.tolist())) == 9


def test_cold_start_without_a_model():
    raw = lambda x: x  # noqa: E731  (the raw inputs are the embedding)
    picks, _ = acquire(None, POOL, "typiclust", 5, seed=1, features=raw, **MC)
    rng = np.random.default_rng(1)
    _, select_seed = int(rng.integers(2**31)), int(rng.integers(2**31))  # acquire's MC, then selection seed
    assert picks.tolist() == typiclust(X, 5, seed=select_seed).tolist()
    cover, _ = acquire(None, POOL, get_strategy("probcover", delta=2.5), 5, seed=1, features=raw,
                       labelled=TensorDataset(X[:4]), **MC)
    assert cover.tolist() == probcover(X, 5, delta=2.5, labelled_ld=X[:4]).tolist()
    with pytest.raises(ValueError, match="features=callable"):
        acquire(None, POOL, "typiclust", 5, **MC)


def test_epig_scores_against_the_target_with_the_same_masks():
    model = _mlp()
    target = TensorDataset(X[:20] + 1)
    picks, scores = acquire(model, POOL, "epig", 7, seed=6, target=target, **MC)
    mc_seed = int(np.random.default_rng(6).integers(2**31))
    expected = epig(predict_mc(model, X, seed=mc_seed, **MC), predict_mc(model, X[:20] + 1, seed=mc_seed, **MC))
    order = np.lexsort((np.arange(120), -expected))[:7]
    assert picks.tolist() == order.tolist()
    np.testing.assert_allclose(scores, expected[order], rtol=1e-6)
    # without a target: a seeded pool subsample, reproducible
    a, _ = acquire(model, POOL, get_strategy("epig", target_size=30), 7, seed=6, **MC)
    b, _ = acquire(model, POOL, get_strategy("epig", target_size=30), 7, seed=6, **MC)
    assert a.tolist() == b.tolist()


def test_class_balanced_counts_the_labelled_set():
    model = _mlp()
    probs = predict_mc(model, X, seed=int(np.random.default_rng(0).integers(2**31)), **MC)
    pred = probs.mean(-1).argmax(1)
    labelled = TensorDataset(X[:5], torch.tensor([0, 0, 0, 0, 0]))
    picks, _ = acquire(model, POOL, "class_balanced", 6, seed=0, labelled=labelled, **MC)
    from al_lib.heuristics import entropy

    expected = class_balanced(entropy(probs), pred, 6, n_classes=3, labelled_counts_c=[5, 0, 0])
    assert picks.tolist() == expected.tolist()
    parts = []
    for s in (0, 60):
        scorer = PoolScorer(get_strategy("class_balanced"))
        scorer.update(probs[s : s + 60])
        parts.append(scorer.result())
    merged = merge_scored_pools(parts, get_strategy("class_balanced"), 6)
    np.testing.assert_array_equal(merged.predicted, pred)


def test_simulate_runs_an_embedding_strategy():
    from al_lib.loop import simulate

    rng = np.random.default_rng(0)
    y = torch.tensor(rng.integers(3, size=120))
    data = TensorDataset(X + y[:, None].float(), y)
    df = simulate(data, lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)),
                  test_set=data, strategy="coreset", initial_labels=6, query_size=4, rounds=2, iterations=3,
                  fit_kwargs={"max_epochs": 2}, progress=False, n_classes=3)
    assert len(df) == 2 and len(df.queried_ids[0]) == 4


def test_probcover_without_delta_uses_the_papers_automatic_radius():
    from al_lib.heuristics.diversity import probcover, probcover_delta

    with pytest.raises(ValueError, match="n_clusters"):
        get_strategy("probcover", delta=None)
    auto = get_strategy("probcover", n_clusters=4)
    picks, _ = acquire(None, POOL, auto, 5, seed=2, features=lambda x: x, progress=False,
                       select_seed=11)
    rng = np.random.default_rng(11)
    delta = probcover_delta(X, 4, seed=rng)
    assert picks.tolist() == probcover(X, 5, delta=delta, seed=rng).tolist()
