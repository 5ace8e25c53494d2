"""MC passes that would return garbage silently raise instead (al_lib.bayesian.guards)."""

import numpy as np
import pytest
import torch
from torch import nn

from al_lib.bayesian import Ensemble, patch_module
from al_lib.bayesian.guards import NonFiniteProbabilitiesError, NoStochasticLayerError, has_mc_layer
from al_lib.inference import iter_predict_mc, predict_mc, score_pool
from al_lib.seeding import torch_generator


def net(dropout=0.5):
    g = torch_generator(0)
    m = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


X = torch.randn(10, 4, generator=torch_generator(1))


def test_forgotten_patch_module_raises_instead_of_bald_near_zero():
    with pytest.raises(NoStochasticLayerError, match="patch_module"):
        predict_mc(net(), X, iterations=5, progress=False)
    with pytest.raises(NoStochasticLayerError):
        score_pool(net(), X, "bald", 3, iterations=5, progress=False)


def test_patched_models_and_ensembles_pass():
    probs = predict_mc(patch_module(net()), X, iterations=5, seed=0, progress=False)
    assert probs.shape == (10, 3, 5) and np.ptp(probs, axis=-1).max() > 0
    assert has_mc_layer(Ensemble([net(), net()]))
    assert predict_mc(Ensemble([net(), net()]), X, iterations=2, progress=False).shape == (10, 3, 2)


def test_a_deterministic_model_with_one_iteration_is_allowed():
    """The documented opt-out: a deterministic model asks for what it gives, T = 1."""
    probs = predict_mc(net(), X, iterations=1, progress=False)
    assert probs.shape == (10, 3, 1)


class OwnNoise(nn.Module):
    """Stochastic in eval mode by its own means (no MC layer of ours): its samples differ, so it passes."""

    def forward(self, x):
        return x + torch.rand_like(x)


def test_a_model_stochastic_by_other_means_passes():
    probs = predict_mc(nn.Sequential(net(), OwnNoise()), X, iterations=4, seed=0, progress=False)
    assert np.ptp(probs, axis=-1).max() > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_probabilities_name_how_many_samples(bad):
    model = patch_module(net())
    x = X[:8].clone()
    x[[1, 2]] = bad  # two samples of the first batch diverge
    with pytest.raises(NonFiniteProbabilitiesError, match=r"2 of the 4 samples at dataset positions 0\.\.3"):
        list(iter_predict_mc(model, x, iterations=3, batch_size=4, seed=0, progress=False))
    x = X[:8].clone()
    x[6] = bad  # one of the second batch: its dataset position is named
    with pytest.raises(NonFiniteProbabilitiesError, match=r"1 of the 4 samples at dataset positions 4\.\.7 .*"
                                                          r"first at position 6"):
        list(iter_predict_mc(model, x, iterations=3, batch_size=4, seed=0, progress=False))


def test_nan_weights_raise():
    model = patch_module(net())
    with torch.no_grad():
        model[-1].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteProbabilitiesError, match="10 of the 10 samples"):
        predict_mc(model, X, iterations=2, progress=False)
