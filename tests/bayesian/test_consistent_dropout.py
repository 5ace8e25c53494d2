import numpy as np
import pytest
import torch
from torch import nn

from al_lib.bayesian import ConsistentMCDropout, mc_generator, mc_iterations, patch_module
from al_lib.bayesian.dropout import _alpha_affine
from al_lib.inference import predict_mc


def model(p=0.5):
    torch.manual_seed(0)
    return patch_module(
        nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, 8), nn.Dropout(p), nn.Linear(8, 4)),
        consistent=True,
    )


def identity_masks(layer, batch, features, iterations, seed):
    """The keep-masks [T, B, F] a consistent layer applies in one seeded pass, read off its output."""
    x = torch.ones(batch, features)
    with mc_generator(layer, generator=torch.Generator().manual_seed(seed)), mc_iterations(layer, iterations):
        out = layer(x.repeat(iterations, 1)).reshape(iterations, batch, features)
    return out


def test_predictions_do_not_depend_on_batch_size_or_position():
    """Sample t is one fixed function: the same whatever minibatch, and wherever in it, a sample falls."""
    m = model()
    x = torch.randn(23, 6)
    a = predict_mc(m, x, iterations=7, batch_size=4, seed=3, progress=False)
    b = predict_mc(m, x, iterations=7, batch_size=23, seed=3, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    order = torch.randperm(23, generator=torch.Generator().manual_seed(1))
    c = predict_mc(m, x[order], iterations=7, batch_size=5, seed=3, progress=False)
    np.testing.assert_allclose(c, a[order.numpy()], rtol=1e-5, atol=1e-6)
    # ... and the T samples differ from one another.
    assert np.abs(a[..., 0] - a[..., 1]).max() > 1e-3


def test_same_seed_same_masks_other_seed_other_masks():
    m = model()
    x = torch.randn(10, 6)
    a = predict_mc(m, x, iterations=5, seed=0, progress=False)
    b = predict_mc(m, x, iterations=5, seed=0, progress=False)
    c = predict_mc(m, x, iterations=5, seed=1, progress=False)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_without_a_seed_each_call_draws_new_masks_and_spares_the_global_rng():
    m = model()
    x = torch.randn(10, 6)
    state = torch.get_rng_state()
    a = predict_mc(m, x, iterations=5, progress=False)
    b = predict_mc(m, x, iterations=5, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.abs(a - b).max() > 1e-3
    # Within one call the masks are still consistent: a sample's scores do not depend on its batch.
    one = predict_mc(m, x.repeat(2, 1), iterations=5, batch_size=3, progress=False)
    np.testing.assert_allclose(one[:10], one[10:], rtol=1e-5, atol=1e-6)


def test_layers_of_one_model_draw_different_masks():
    layers = [m for m in model(p=0.5).modules() if isinstance(m, ConsistentMCDropout)]
    x = torch.ones(40, 8)
    outs = []
    with mc_generator(*layers, generator=torch.Generator().manual_seed(0)):
        for layer in layers:
            with mc_iterations(layer, 4):
                outs.append(layer(x.repeat(4, 1)))
    assert not torch.equal(outs[0], outs[1])


def test_masks_are_exact_inverted_dropout_shared_across_the_batch():
    """Closed form: out[t, b] = x[b] * keep[t] / (1 - p), one keep-mask per MC sample for every row."""
    layer = ConsistentMCDropout(nn.Dropout(0.25))
    x = torch.randn(3, 10)
    tiled = x.repeat(4, 1)
    with mc_generator(layer, generator=torch.Generator().manual_seed(5)), mc_iterations(layer, 4):
        out = layer(tiled).reshape(4, 3, 10)
    keep = out[:, :1] != 0  # read off the first row; x has no zeros
    torch.testing.assert_close(out, x.unsqueeze(0) * keep / 0.75)
    # The same seed gives the same masks to a batch of another size.
    bigger = identity_masks(layer, 9, 10, 4, seed=5)
    torch.testing.assert_close(bigger, keep.expand(4, 9, 10) / 0.75)


def test_mask_rate_matches_p():
    out = identity_masks(ConsistentMCDropout(nn.Dropout(0.3)), 1, 20000, 5, seed=2)
    rate = (out == 0).double().mean().item()
    assert abs(rate - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 100000)


def test_channel_masks_cover_whole_channels():
    layer = ConsistentMCDropout(nn.Dropout2d(0.5))
    x = torch.ones(2, 16, 3, 3)
    with mc_generator(layer, generator=torch.Generator().manual_seed(0)), mc_iterations(layer, 3):
        out = layer(x.repeat(3, 1, 1, 1)).reshape(3, 2, 16, 9)
    assert torch.all((out == 0).all(-1) | (out == 2.0).all(-1))
    assert torch.equal(out[:, 0], out[:, 1])  # the same channel mask for both samples


def test_alpha_dropout_mask_keeps_selu_statistics_and_closed_form():
    layer = ConsistentMCDropout(nn.AlphaDropout(0.2))
    x = torch.randn(20000, 64)
    with mc_generator(layer, generator=torch.Generator().manual_seed(0)), mc_iterations(layer, 1):
        out = layer(x)
    assert abs(out.mean().item()) < 0.05
    assert abs(out.std().item() - 1.0) < 0.05
    a, b = _alpha_affine(0.2)
    kept = torch.isclose(out, a * x + b, atol=1e-6)
    dropped = torch.isclose(out, torch.full_like(out, a * -1.7580993408473766 + b), atol=1e-6)
    assert torch.all(kept | dropped) and torch.equal(kept, kept[:1].expand_as(kept))


def test_a_pass_without_a_generator_draws_from_the_global_rng_and_stays_consistent():
    layer = ConsistentMCDropout(nn.Dropout(0.5))
    x = torch.ones(3, 50)
    torch.manual_seed(0)
    with mc_iterations(layer, 2):
        a = layer(x.repeat(2, 1)).reshape(2, 3, 50)
        again = layer(torch.ones(5, 50).repeat(2, 1)).reshape(2, 5, 50)  # another batch, same pass
    torch.manual_seed(0)
    with mc_iterations(layer, 2):
        b = layer(x.repeat(2, 1)).reshape(2, 3, 50)
    assert torch.equal(a, b)
    assert torch.equal(again, a[:, :1].expand(2, 5, 50))


def test_indivisible_batch_is_a_clear_error():
    layer = ConsistentMCDropout(nn.Dropout(0.5))
    with mc_iterations(nn.Sequential(layer), 3):
        with pytest.raises(ValueError, match="cannot hold 3 tiled MC samples"):
            layer(torch.randn(7, 2))
