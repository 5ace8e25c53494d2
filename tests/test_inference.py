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
