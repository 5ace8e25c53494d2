import numpy as np
import pytest
import torch
from torch import nn

from al_lib.bayesian import ConsistentMCDropout, mc_iterations, patch_module, reset_consistent_masks
from al_lib.inference import predict_mc


def model():
    torch.manual_seed(0)
    return patch_module(
        nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4)),
        consistent=True,
        seed=3,
    )


def test_predictions_do_not_depend_on_batch_size():
    """Sample t is one fixed function: the same whatever minibatch a sample falls in."""
    m = model()
    x = torch.randn(23, 6)
    a = predict_mc(m, x, iterations=7, batch_size=4, progress=False)
    b = predict_mc(m, x, iterations=7, batch_size=23, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # ... and the T samples differ from one another.
    assert np.abs(a[..., 0] - a[..., 1]).max() > 1e-3


def test_masks_match_a_hand_applied_mask():
    layer = ConsistentMCDropout(nn.Dropout(0.25), seed=5)
    x = torch.randn(3, 10)
    tiled = x.repeat(4, 1)
    with mc_iterations(nn.Sequential(layer), 4):
        out = layer(tiled).reshape(4, 3, 10)
    keep = torch.rand((4, 10), generator=torch.Generator().manual_seed(5)) >= 0.25
    expected = x.unsqueeze(0) * keep.unsqueeze(1) / 0.75
    torch.testing.assert_close(out, expected)


def test_alpha_dropout_mask_keeps_selu_statistics():
    layer = ConsistentMCDropout(nn.AlphaDropout(0.2), seed=0)
    x = torch.randn(20000, 1).repeat(1, 8)
    with mc_iterations(nn.Sequential(layer), 1):
        out = layer(torch.randn(20000, 64))
    assert abs(out.mean().item()) < 0.05
    assert abs(out.std().item() - 1.0) < 0.05


def test_reset_masks_draws_new_masks():
    m = model()
    x = torch.randn(10, 6)
    a = predict_mc(m, x, iterations=5, progress=False)
    assert reset_consistent_masks(m, seed=99) == 1
    b = predict_mc(m, x, iterations=5, progress=False)
    assert not np.allclose(a, b)


def test_indivisible_batch_is_a_clear_error():
    layer = ConsistentMCDropout(nn.Dropout(0.5))
    with mc_iterations(nn.Sequential(layer), 3):
        with pytest.raises(ValueError, match="cannot hold 3 tiled MC samples"):
            layer(torch.randn(7, 2))
