import numpy as np
import pytest
import torch

from al_lib.seeding import SEED_BOUND, check_random_state, draw_seed, isolated_torch_rng, torch_generator


def test_check_random_state_kinds():
    rng = np.random.default_rng(0)
    assert check_random_state(rng) is rng
    assert check_random_state(3).integers(1000) == np.random.default_rng(3).integers(1000)
    with pytest.raises(TypeError, match="seed must be"):
        check_random_state(1.5)


def test_torch_generator_from_an_int_or_none():
    assert torch.equal(torch.rand(4, generator=torch_generator(5)), torch.rand(4, generator=torch_generator(5)))
    assert torch_generator(None).initial_seed() != torch_generator(None).initial_seed()
    with pytest.raises(TypeError, match="seed must be"):
        torch_generator("0")


@pytest.mark.parametrize("parent", [lambda: np.random.default_rng(1), lambda: torch.Generator().manual_seed(1)])
def test_a_parent_generator_spawns_reproducible_distinct_children(parent):
    p, q = parent(), parent()
    first, second = torch_generator(p), torch_generator(p)
    assert first.initial_seed() == torch_generator(q).initial_seed()  # tied to the parent's seed
    assert first.initial_seed() != second.initial_seed()  # the parent's stream advanced


def test_draw_seed_range_and_types():
    seeds = [draw_seed(torch.Generator().manual_seed(i)) for i in range(200)]
    seeds += [draw_seed(np.random.default_rng(i)) for i in range(200)]
    assert all(0 <= s < SEED_BOUND for s in seeds) and len(set(seeds)) == 400
    assert max(seeds) > 2**62  # the full 63-bit range, not 32 bits
    with pytest.raises(TypeError, match="Generator"):
        draw_seed(0)


def test_isolated_torch_rng_is_seeded_and_restores_the_caller_state():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with isolated_torch_rng(42):
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), state)
    with isolated_torch_rng(42):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(42)))
