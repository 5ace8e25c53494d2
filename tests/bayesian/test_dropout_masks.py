"""Statistical checks of MCDropout's fast element-wise masks (random 64-bit words cut into lanes)."""

import math

import pytest
import torch
from torch import nn

from al_lib.bayesian import patch_module
from al_lib.bayesian.dropout import (
    FAST_DROPOUT_MIN_NUMEL,
    MCDropout,
    _use_fast_path,
    dropout_from,
    fast_dropout,
    quantised_p,
)

N = 400_000


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_keep_rate_matches_one_minus_p(p):
    torch.manual_seed(0)
    x = torch.ones(N)
    assert _use_fast_path(x, p)
    out = MCDropout(nn.Dropout(p))(x)
    keep = out != 0
    rate = keep.double().mean().item()
    se = math.sqrt(p * (1 - p) / N)
    assert abs(rate - (1 - p)) < 5 * se
    # Kept elements carry the inverted-dropout scale of the (quantised) p.
    assert torch.allclose(out[keep], torch.full_like(out[keep], 1 / (1 - quantised_p(p))))


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_p_exact_for_dyadic_rates(p):
    assert quantised_p(p) == p


def test_quantisation_error_is_small():
    for p in (0.1, 0.3, 0.05, 0.9, 1e-3):
        assert abs(quantised_p(p) - p) <= 0.5 / 65536


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_masks_independent_across_elements(p):
    torch.manual_seed(1)
    keep = (fast_dropout(torch.ones(N), p) != 0).double()
    centred = keep - keep.mean()
    var = (centred**2).mean()
    # Neighbours in the same 64-bit word (lags 1..7) and across words (lag 8, 64).
    for lag in (1, 2, 3, 4, 7, 8, 64):
        corr = (centred[:-lag] * centred[lag:]).mean() / var
        assert abs(corr.item()) < 5 / math.sqrt(N), lag


def test_masks_differ_between_calls():
    torch.manual_seed(2)
    layer = MCDropout(nn.Dropout(0.5))
    x = torch.ones(8192)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_expected_value_preserved(p):
    torch.manual_seed(3)
    x = torch.rand(64, 64) + 0.5
    layer = MCDropout(nn.Dropout(p))
    draws = torch.stack([layer(x) for _ in range(300)])
    n = draws.numel()
    se = x.mean().item() * math.sqrt(p / (1 - p) / n) * 1.5
    assert abs(draws.mean().item() - x.mean().item()) < 5 * se


def test_seeded_reproducibility():
    layer = MCDropout(nn.Dropout(0.3))
    x = torch.randn(32, 16, 12, 12)
    torch.manual_seed(7)
    a = layer(x)
    torch.manual_seed(7)
    b = layer(x)
    assert torch.equal(a, b)


def test_gradient_flows_through_mask():
    torch.manual_seed(4)
    x = torch.randn(FAST_DROPOUT_MIN_NUMEL * 2, requires_grad=True)
    out = MCDropout(nn.Dropout(0.5))(x)
    out.sum().backward()
    assert torch.equal(x.grad, (out.detach() != 0).float() * 2.0)


def test_small_and_degenerate_inputs_use_functional_path():
    assert not _use_fast_path(torch.ones(10), 0.5)
    assert not _use_fast_path(torch.ones(N), 0.0)
    assert not _use_fast_path(torch.ones(N), 1.0)
    assert not _use_fast_path(torch.ones(N), 1e-7)  # rounds to 0/65536
    assert torch.equal(MCDropout(nn.Dropout(0.0))(torch.ones(N)), torch.ones(N))
    assert torch.equal(MCDropout(nn.Dropout(1.0))(torch.ones(N)), torch.zeros(N))


def test_channelwise_dropout_still_drops_whole_channels():
    torch.manual_seed(5)
    out = MCDropout(nn.Dropout2d(0.5))(torch.ones(64, 32, 8, 8))
    per_channel = out.flatten(2)
    assert torch.all((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1))


def test_alpha_dropout_keeps_functional_semantics():
    torch.manual_seed(6)
    x = torch.randn(200_000)
    out = MCDropout(nn.AlphaDropout(0.2))(x)
    # Alpha dropout keeps mean ~0 / std ~1 for standard-normal input and never zeroes units.
    assert abs(out.mean().item()) < 0.02 and abs(out.std().item() - 1) < 0.02
    assert (out == 0).sum() == 0


def test_patched_model_uses_fast_path_and_is_stochastic():
    torch.manual_seed(8)
    model = patch_module(nn.Sequential(nn.Linear(100, 100), nn.Dropout(0.5)))
    x = torch.randn(64, 100)
    assert not torch.equal(model(x), model(x))


# ---------------------------------------------------------------- masks from an explicit generator


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_fast_dropout_with_a_generator_is_reproducible_and_spares_the_global_rng():
    x = torch.ones(N)
    state = torch.get_rng_state()
    a = fast_dropout(x, 0.1, generator=gen(0))
    b = fast_dropout(x, 0.1, generator=gen(0))
    c = fast_dropout(x, 0.1, generator=gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    rate = (a != 0).double().mean().item()
    assert abs(rate - 0.9) < 5 * math.sqrt(0.09 / N)


def test_generator_dropout_of_nn_dropout_takes_the_fast_path():
    x = torch.randn(FAST_DROPOUT_MIN_NUMEL * 2)
    assert torch.equal(dropout_from(gen(3), x, 0.5), fast_dropout(x, 0.5, generator=gen(3)))


@pytest.mark.parametrize(
    "kind,shape,channelwise",
    [
        (nn.Dropout, (50, 40), False),  # below the fast-path size: exact p from uniform floats
        (nn.Dropout1d, (40, 25, 6), True),
        (nn.Dropout2d, (40, 25, 3, 3), True),
        (nn.Dropout3d, (40, 25, 2, 2, 2), True),
    ],
)
def test_generator_dropout_is_inverted_dropout_of_the_right_shape(kind, shape, channelwise):
    p = 0.3
    state = torch.get_rng_state()
    out = dropout_from(gen(0), torch.ones(shape), p, kind)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.all((out == 0) | torch.isclose(out, torch.tensor(1 / (1 - p))))
    units = out.flatten(2) if channelwise else out.unsqueeze(-1)
    assert torch.all((units == 0).all(-1) | (units != 0).all(-1))  # whole channels or single elements
    dropped = (units[..., 0] == 0).double()
    assert abs(dropped.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / dropped.numel())
    assert torch.equal(out, dropout_from(gen(0), torch.ones(shape), p, kind))


def test_generator_dropout_of_unbatched_channel_inputs_drops_whole_channels():
    out = dropout_from(gen(1), torch.ones(64, 5, 5, 5), 0.5, nn.Dropout3d)  # [C, D, H, W]
    per_channel = out.flatten(1)
    assert torch.all((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1))
    assert 0 < (per_channel[:, 0] == 0).sum() < 64


@pytest.mark.parametrize("kind", [nn.AlphaDropout, nn.FeatureAlphaDropout])
def test_generator_alpha_dropout_matches_the_closed_form(kind):
    p = 0.2
    x = torch.randn(4000, 16, 2)
    out = dropout_from(gen(2), x, p, kind)
    # torch's alpha dropout: kept units -> a*x + b, dropped ones -> a*alpha' + b.
    a = 1 / math.sqrt((1 - p) * (1 + p * 1.7580993408473766**2))
    b = a * 1.7580993408473766 * p
    kept = torch.isclose(out, a * x + b, atol=1e-5)
    dropped = torch.isclose(out, torch.full_like(out, -a * 1.7580993408473766 + b), atol=1e-5)
    assert torch.all(kept | dropped)
    if kind is nn.FeatureAlphaDropout:
        assert torch.equal(kept, kept[..., :1].expand_as(kept))  # whole [n, c] slices
    assert abs(out.mean().item()) < 0.03 and abs(out.std().item() - 1) < 0.03


def test_generator_dropout_degenerate_rates():
    x = torch.randn(30, 4)
    assert torch.equal(dropout_from(gen(0), x, 0.0), x)
    assert torch.equal(dropout_from(gen(0), x, 1.0), torch.zeros_like(x))
    assert torch.equal(dropout_from(gen(0), x, 1.0, nn.AlphaDropout), torch.zeros_like(x))


def test_mc_dropout_draws_from_its_pass_generator():
    layer = MCDropout(nn.Dropout(0.5))
    x = torch.ones(8192)
    state = torch.get_rng_state()
    layer.set_generator(gen(0))
    a = layer(x)
    layer.set_generator(gen(0))
    b = layer(x)
    layer.set_generator(None)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
