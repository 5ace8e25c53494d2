"""Explicit randomness: every random choice in al_lib goes through these, never the global RNG."""

from __future__ import annotations

import numbers

import numpy as np
import torch

SeedLike = int | np.random.Generator | None


def check_random_state(seed: SeedLike) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` for ``seed``.

    ``seed`` may be an int (a fresh generator seeded with it), an existing Generator (returned as
    is, so callers can share one stream) or ``None`` (fresh OS entropy: not reproducible).
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, numbers.Integral):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be an int, a numpy Generator or None, got {type(seed).__name__}")


def torch_generator(seed: SeedLike, device: str | torch.device = "cpu") -> torch.Generator:
    """Return a :class:`torch.Generator` on ``device`` seeded from ``seed``.

    A numpy Generator is consumed for one 63-bit integer so torch draws stay tied to it.
    """
    gen = torch.Generator(device=device)
    if isinstance(seed, np.random.Generator):
        gen.manual_seed(int(seed.integers(0, 2**63 - 1)))
    elif seed is None:
        gen.seed()
    elif isinstance(seed, numbers.Integral):
        gen.manual_seed(int(seed))
    else:
        raise TypeError(f"seed must be an int, a numpy Generator or None, got {type(seed).__name__}")
    return gen
