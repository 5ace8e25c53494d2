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
    m = nn.Sequential(nn.Linear(4, 3))  # deterministic: every sample equals the plain forward
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


@pytest.mark.parametrize("strategy", ["power_bald", "power_entropy", "softmax_bald", "softrank_bald"])
def test_acquire_streams_the_stochastic_samplers(strategy, monkeypatch):
    import al_lib.acquisition as acquisition

    def no_full_array(*args, **kwargs):
        raise AssertionError("the stochastic samplers must not build the [N, C, T] array")

    monkeypatch.setattr(acquisition, "predict_mc", no_full_array)
    m, x = mlp(), torch.randn(25, 4)
    a = acquisition.acquire(m, x, strategy, 5, iterations=4, seed=3, progress=False)
    b = acquisition.acquire(m, x, strategy, 5, iterations=4, seed=3, progress=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert len(set(a[0].tolist())) == 5 and np.all(a[1] >= -1e-6)
