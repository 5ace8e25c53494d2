"""al_lib.inference: embeddings (``features=``) computed in the same streaming MC pass."""

import numpy as np
import pytest
import torch
from torch import nn

from al_lib.bayesian import patch_module
from al_lib.inference import iter_predict_mc, predict_mc


class Net(nn.Module):
    """Not a Sequential: the split is found by fx tracing; the head runs on tiled rows."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.drop(self.body(x)))


def _model():
    with torch.random.fork_rng():
        torch.manual_seed(0)  # weight init only, in a forked RNG
        return patch_module(Net(), consistent=True)


X = torch.linspace(-2, 2, 50 * 6).reshape(50, 6)


@pytest.mark.parametrize("engine", ["auto", "full"])
@pytest.mark.parametrize("max_rows", [None, 7])
def test_penultimate_is_the_head_input_averaged_over_mc_samples(engine, max_rows):
    """The head is linear: the mean over T of the logits is the head applied to the mean input."""
    m = _model()
    kw = dict(iterations=5, batch_size=16, progress=False, seed=0, engine=engine, max_rows=max_rows)
    logits, feats = predict_mc(m, X, activation=None, features="penultimate", **kw)
    assert feats.shape == (50, 8) and feats.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(m.fc(torch.from_numpy(feats)).numpy(), logits.mean(-1), atol=1e-5)
    # the probabilities are those of the pass without features, and the hook is gone afterwards
    probs = predict_mc(m, X, **kw)
    np.testing.assert_array_equal(predict_mc(m, X, features="penultimate", **kw)[0], probs)
    assert not m.fc._forward_pre_hooks


def test_penultimate_after_deterministic_layers_is_exact():
    seq = patch_module(nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)))
    # the last Linear's input is after a stochastic layer; with p=0 masks keep everything
    seq[1].p = 0.0
    _, feats = predict_mc(seq, X, iterations=3, progress=False, seed=0, features="penultimate")
    with torch.no_grad():
        np.testing.assert_allclose(feats, seq[3](seq[2](seq[0](X))).numpy(), atol=1e-6)


def test_callable_features_stream_batch_by_batch():
    m = _model()
    seen = []
    for probs, feats in iter_predict_mc(m, X, iterations=4, batch_size=16, progress=False, seed=1,
                                        features=lambda x: x[:, :2] * 2):
        assert probs.shape[0] == feats.shape[0] <= 16
        seen.append(feats)
    np.testing.assert_allclose(torch.cat(seen).numpy(), X[:, :2].numpy() * 2)


def test_features_errors():
    conv = patch_module(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Dropout(0.5)))
    with pytest.raises(ValueError, match="nn.Linear"):
        predict_mc(conv, torch.zeros(4, 1, 5), iterations=2, progress=False, features="penultimate")
    with pytest.raises(ValueError, match="features must be"):
        predict_mc(_model(), X, iterations=2, progress=False, features="last")
