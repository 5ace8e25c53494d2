import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from al_lib.bayesian import patch_module
from al_lib.inference import RunningTopK, iter_predict_mc, predict_mc, score_pool


def mlp(out=3):
    torch.manual_seed(0)
    return patch_module(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, out)))


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


def test_shape_probabilities_and_modes_restored():
    m = mlp()
    m.train()
    probs = predict_mc(m, Pairs(torch.randn(11, 4)), iterations=6, batch_size=4, progress=False)
    assert probs.shape == (11, 3, 6) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert m.training


def test_tiled_pass_equals_t_separate_passes():
    """Tiling the batch must give the same distribution as T separate passes: same masks → same numbers."""
    # p=0 MC dropout: an MC layer (so the no-stochastic-layer guard is off) that draws nothing random
    m = patch_module(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.0)))  # every sample equals the plain forward
    x = torch.randn(5, 4)
    probs = predict_mc(m, x, iterations=4, progress=False)
    for t in range(4):
        np.testing.assert_allclose(probs[..., t], torch.softmax(m(x), 1).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_seed_is_reproducible_and_leaves_global_rng_alone():
    m = mlp()
    x = torch.randn(8, 4)
    state = torch.get_rng_state()
    a = predict_mc(m, x, iterations=5, seed=1, progress=False)
    assert torch.equal(state, torch.get_rng_state())
    b = predict_mc(m, x, iterations=5, seed=1, progress=False)
    c = predict_mc(m, x, iterations=5, seed=2, progress=False)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("seed", [None, 7, "numpy"])
def test_the_global_rng_is_neither_used_nor_consumed(seed):
    """Results do not depend on torch's global RNG, and its next draws are what they would have been."""
    m = mlp()
    x = torch.randn(9, 4)
    make = (lambda: np.random.default_rng(7)) if seed == "numpy" else (lambda: seed)
    torch.manual_seed(123)
    expected_next = torch.rand(5)
    torch.manual_seed(123)
    a = predict_mc(m, Pairs(x), iterations=4, batch_size=4, seed=make(), progress=False)
    np.testing.assert_array_equal(torch.rand(5).numpy(), expected_next.numpy())
    torch.manual_seed(456)  # another global state: the same numbers for a fixed seed
    b = predict_mc(m, Pairs(x), iterations=4, batch_size=4, seed=make(), progress=False)
    if seed is None:
        assert not np.allclose(a, b)  # fresh entropy each call, never the (reset) global stream
    else:
        np.testing.assert_array_equal(a, b)


def test_streaming_hands_the_caller_its_own_rng_between_batches():
    """The caller may draw from the global RNG while it holds a batch: that draws what it would anyway."""
    m = nn.Sequential(nn.Linear(4, 8), Noise(), nn.Linear(8, 3))  # a foreign layer on the global RNG
    x = torch.randn(12, 4)
    torch.manual_seed(5)
    expected = [torch.rand(2) for _ in range(3)]
    torch.manual_seed(5)
    got = [torch.rand(2) for _ in iter_predict_mc(m, x, iterations=2, batch_size=4, seed=0, progress=False)]
    torch.testing.assert_close(got, expected)
    # ... and the foreign layer itself is seeded by ``seed``.
    a = predict_mc(m, x, iterations=2, seed=0, progress=False)
    np.testing.assert_array_equal(a, predict_mc(m, x, iterations=2, seed=0, progress=False))
    assert np.abs(a[..., 0] - a[..., 1]).max() > 1e-4


class Noise(nn.Module):
    """A custom random layer that can only use torch's global RNG."""

    def forward(self, x):
        return x + torch.randn_like(x)


def consistent_mlp():
    torch.manual_seed(0)
    return patch_module(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)),
                        consistent=True)


def test_one_call_equals_two_halves_with_the_same_seed():
    """Dask sharding relies on it: with consistent masks a sample's scores do not depend on its shard."""
    from al_lib.heuristics import bald, top_k

    m = consistent_mlp()
    x = torch.randn(30, 4)
    whole = predict_mc(m, x, iterations=6, batch_size=8, seed=9, progress=False)
    halves = [predict_mc(m, part, iterations=6, batch_size=5, seed=9, progress=False) for part in (x[:13], x[13:])]
    np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-5, atol=1e-6)
    picks = [score_pool(m, part, "bald", 4, iterations=6, batch_size=5, seed=9, progress=False)
             for part in (x[:13], x[13:])]
    merged_ids = np.concatenate([picks[0][0], picks[1][0] + 13])
    merged_scores = np.concatenate([picks[0][1], picks[1][1]])
    expected = top_k(bald(whole), 4)
    np.testing.assert_array_equal(merged_ids[top_k(merged_scores, 4)], expected)
    # Another seed draws other masks.
    other = predict_mc(m, x, iterations=6, batch_size=8, seed=10, progress=False)
    assert np.abs(other - whole).max() > 1e-3


def test_binary_single_logit_gives_p_of_class_one():
    m = mlp(out=1)
    probs = predict_mc(m, torch.randn(7, 4), iterations=3, progress=False)
    assert probs.shape == (7, 1, 3)
    assert ((probs > 0) & (probs < 1)).all()


def test_segmentation_outputs_keep_extra_dims_before_t():
    torch.manual_seed(0)
    m = patch_module(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout2d(0.3)))
    probs = predict_mc(m, torch.randn(3, 1, 5, 6), iterations=2, progress=False)
    assert probs.shape == (3, 4, 5, 6, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_streaming_yields_per_batch():
    sizes = [b.shape for b in iter_predict_mc(mlp(), torch.randn(10, 4), iterations=2, batch_size=4, progress=False)]
    assert sizes == [torch.Size([4, 3, 2]), torch.Size([4, 3, 2]), torch.Size([2, 3, 2])]


def test_score_pool_matches_full_prediction_then_top_k():
    from al_lib.heuristics import bald, top_k

    m = mlp()
    x = torch.randn(50, 4)
    full = predict_mc(m, x, iterations=8, batch_size=7, seed=3, progress=False)
    expected = top_k(bald(full), 5)
    idx, scores = score_pool(m, x, "bald", 5, iterations=8, batch_size=7, seed=3, progress=False)
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, bald(full)[expected], rtol=1e-4, atol=1e-6)


def test_score_pool_rejects_unknown_heuristic_and_oversized_k():
    with pytest.raises(ValueError, match="unknown heuristic 'nope'"):
        score_pool(mlp(), torch.randn(3, 4), "nope", 1, progress=False)
    with pytest.raises(ValueError, match="k=4 samples from a pool of 3"):
        score_pool(mlp(), torch.randn(3, 4), "bald", 4, progress=False)


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    k=st.integers(0, 40),
    chunk=st.integers(1, 10),
)
def test_running_top_k_is_exact_for_any_chunking(scores, k, chunk):
    scores = np.asarray(scores, dtype=float)
    k = min(k, len(scores))
    best = RunningTopK(k)
    for start in range(0, len(scores), chunk):
        best.update(scores[start : start + chunk], np.arange(start, min(start + chunk, len(scores))))
    idx, got = best.result()
    expected = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    assert idx.tolist() == expected
    np.testing.assert_array_equal(got, scores[expected])


# ---------------------------------------------------------------- bounded memory, streamed selection


def test_score_pool_keeps_no_batch_of_probabilities_alive():
    """Each [B, C, T] batch must be garbage by the time the next one is scored: O(batch + k) memory."""
    import weakref

    from al_lib.heuristics import bald

    alive = []

    def heuristic(probs):
        assert all(ref() is None for ref in alive), "an earlier batch of probabilities is still referenced"
        alive.append(weakref.ref(probs))
        return bald(probs)

    idx, _ = score_pool(mlp(), torch.randn(40, 4), heuristic, 3, iterations=4, batch_size=8, progress=False)
    assert len(alive) == 5 and len(idx) == 3


def test_score_pool_numpy_peak_memory_does_not_grow_with_the_pool():
    """tracemalloc sees numpy's allocations: [N, C, T] float32 would be 8 MB here; a few KB are allowed."""
    import tracemalloc

    m = mlp(out=10)
    x = torch.randn(20000, 4)
    score_pool(m, x[:64], "entropy", 5, iterations=10, batch_size=256, progress=False)  # warm caches
    tracemalloc.start()
    try:
        score_pool(m, x, "entropy", 5, iterations=10, batch_size=256, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024, f"peak {peak / 1e6:.2f} MB"


@pytest.mark.parametrize("selection", ["power", "softmax", "softrank"])
def test_score_pool_stochastic_selection_matches_the_selector_on_full_scores(selection):
    from al_lib.heuristics import bald
    from al_lib.sampling import make_selector

    m = mlp()
    x = torch.randn(30, 4)
    full = predict_mc(m, x, iterations=6, batch_size=7, seed=2, progress=False)
    offline = make_selector(selection, 4, temperature=0.5, seed=11)
    offline.update(bald(full), np.arange(30))
    idx, scores = score_pool(m, x, "bald", 4, selection=selection, temperature=0.5, selection_seed=11,
                             iterations=6, batch_size=7, seed=2, progress=False)
    np.testing.assert_array_equal(idx, offline.result()[0])
    np.testing.assert_allclose(scores, bald(full)[idx], rtol=1e-4, atol=1e-6)


def test_score_pool_takes_strategies_by_name_or_instance():
    from al_lib.heuristics import bald, power_sampling
    from al_lib.strategies import get_strategy

    m, x = mlp(), torch.randn(30, 4)
    full = predict_mc(m, x, iterations=5, batch_size=8, seed=4, progress=False)
    batches = iter_predict_mc(m, x, iterations=5, batch_size=8, seed=4, progress=False)
    scores = np.concatenate([get_strategy("bald").score_batch(b) for b in batches])
    run = dict(iterations=5, batch_size=8, seed=4, progress=False, selection_seed=2)
    by_name = score_pool(m, x, "power_bald", 6, temperature=0.5, **run)
    by_instance = score_pool(m, x, get_strategy("power_bald", temperature=0.5), 6, **run)
    np.testing.assert_array_equal(by_name[0], power_sampling(scores, 6, temperature=0.5, seed=2))
    np.testing.assert_array_equal(by_instance[0], by_name[0])
    np.testing.assert_allclose(by_name[1], bald(full)[by_name[0]], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="per-sample heuristic"):
        score_pool(m, x, "batch_bald", 2, selection="power", **run)
    with pytest.raises(ValueError, match="unknown selection"):
        score_pool(m, x, "bald", 2, selection="uniform", **run)
