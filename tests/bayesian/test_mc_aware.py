"""The MC-pass protocols: T via mc_iterations, an explicit generator per stochastic module via mc_generator."""

import pytest
import torch
from torch import nn

from al_lib.bayesian import (
    ConsistentMCDropout,
    Ensemble,
    MCDropConnect,
    MCDropout,
    MCStochasticModule,
    mc_generator,
    mc_iterations,
    patch_module,
    stochastic_modules,
)


def model():
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 64), nn.Dropout(0.5), nn.Linear(64, 64), nn.AlphaDropout(0.3), nn.Linear(64, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return patch_module(net, dropconnect=0.2, dropconnect_layers=(nn.Linear,))


def g(seed):
    return torch.Generator().manual_seed(seed)


def test_stochastic_modules_lists_every_mc_layer_once_in_module_order():
    m = model()
    found = stochastic_modules(m, m[1], None)  # a shared module is listed once
    assert [type(x) for x in found] == [MCDropConnect, MCDropout, MCDropConnect, MCDropout, MCDropConnect]
    assert found == [x for x in m.modules() if isinstance(x, MCStochasticModule)]
    with pytest.raises(TypeError, match="nn.Module"):
        stochastic_modules(torch.zeros(1))


def test_every_module_gets_its_own_generator_and_loses_it_on_exit():
    m = model()
    ens = Ensemble([model(), model()])
    with mc_generator(m, ens, generator=g(0)) as seeded:
        gens = [x.generator for x in seeded]
        assert len(seeded) == 15 and all(isinstance(x, torch.Generator) for x in gens)
        assert len({x.initial_seed() for x in gens}) == len(gens)  # independent streams
    assert all(x.generator is None for x in seeded)


def test_generators_are_removed_when_the_block_raises():
    m = model()
    with pytest.raises(RuntimeError, match="boom"):
        with mc_generator(m, generator=g(0)):
            raise RuntimeError("boom")
    assert all(x.generator is None for x in stochastic_modules(m))


def test_rejects_what_is_not_a_cpu_generator():
    with pytest.raises(TypeError, match="CPU torch.Generator"):
        with mc_generator(model(), generator=0):
            pass


def test_same_seed_same_draws_without_touching_the_global_rng():
    m = model().eval()
    x = torch.randn(5, 6)
    outs = []
    for seed, global_seed in [(1, 10), (1, 20), (2, 10)]:
        torch.manual_seed(global_seed)  # must not matter
        state = torch.get_rng_state()
        with mc_generator(m, generator=g(seed)):
            outs.append(m(x))
        assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_without_a_generator_layers_draw_from_the_global_rng():
    """Training semantics: nn.Dropout-like draws from torch's global RNG, reproducible with it."""
    m = model().eval()
    x = torch.randn(5, 6)
    torch.manual_seed(3)
    a = m(x)
    state = torch.get_rng_state()
    b = m(x)
    assert not torch.equal(torch.get_rng_state(), state)  # the global RNG was consumed
    torch.manual_seed(3)
    assert torch.equal(m(x), a) and not torch.allclose(a, b)


def test_a_generator_stream_advances_within_the_block():
    """Per-element layers draw a fresh mask on every forward, also inside one block."""
    m = model().eval()
    x = torch.randn(5, 6)
    with mc_generator(m, generator=g(4)):
        first, second = m(x), m(x)
    with mc_generator(m, generator=g(4)):
        again = m(x)
    assert not torch.allclose(first, second)
    assert torch.equal(first, again)


def test_consistent_masks_come_from_the_generator_and_live_for_one_pass():
    layer = ConsistentMCDropout(nn.Dropout(0.5))
    x = torch.ones(4, 300)

    def masks(seed):
        with mc_generator(layer, generator=g(seed)), mc_iterations(layer, 3):
            return layer(x.repeat(3, 1)).reshape(3, 4, 300) != 0

    a, b, c = masks(7), masks(7), masks(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, a[:, :1].expand_as(a))  # one mask per MC sample, shared by the batch
    assert layer._masks == {}  # nothing cached beyond the pass
