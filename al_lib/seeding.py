"""Explicit randomness: every random choice in al_lib goes through these, never the global RNG.

The one exception is code that can only draw from torch's *global* RNG (``nn.Dropout`` in training,
weight initialisers, custom layers calling ``torch.rand*``): :func:`isolated_torch_rng` runs it on a
seeded fork of that RNG, so the caller's RNG state is the same afterwards.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

import numpy as np
import torch

SeedLike = int | np.random.Generator | None

#: Seeds drawn by :func:`draw_seed` lie in ``[0, SEED_BOUND)`` (63 bits: a valid torch seed).
SEED_BOUND = 2**63 - 1


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


def draw_seed(generator: np.random.Generator | torch.Generator) -> int:
    """One seed in ``[0, SEED_BOUND)`` drawn from ``generator`` (numpy, or a CPU torch Generator).

    Seeding a child generator with it gives a new stream tied to the parent's seed.
    """
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(0, SEED_BOUND))
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, SEED_BOUND, (), generator=generator))
    raise TypeError(f"expected a numpy or torch Generator, got {type(generator).__name__}")


def torch_generator(seed: SeedLike | torch.Generator, device: str | torch.device = "cpu") -> torch.Generator:
    """Return a :class:`torch.Generator` on ``device`` seeded from ``seed``.

    ``seed`` may be an int, ``None`` (fresh OS entropy: not reproducible), or a numpy or CPU torch
    Generator, which is consumed for one :func:`draw_seed` so the new stream stays tied to it.
    """
    gen = torch.Generator(device=device)
    if isinstance(seed, (np.random.Generator, torch.Generator)):
        gen.manual_seed(draw_seed(seed))
    elif seed is None:
        gen.seed()
    elif isinstance(seed, numbers.Integral):
        gen.manual_seed(int(seed))
    else:
        raise TypeError(
            f"seed must be an int, a numpy or torch Generator or None, got {type(seed).__name__}"
        )
    return gen


@contextlib.contextmanager
def isolated_torch_rng(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run a block under torch's global RNG seeded with ``seed``, restoring the caller's state after.

    For code that draws from torch's *global* RNG with no way to pass a generator (``nn.Dropout``,
    weight initialisers, foreign random layers): forking makes it deterministic without changing
    what the caller's RNG produces next. Only the CPU RNG and, for a CUDA ``device``, that one
    device's RNG are forked and seeded -- never ``torch.manual_seed``, which would also reseed every
    other GPU, outside the fork.
    """
    device = torch.device(device)
    cuda_index = None
    if device.type == "cuda":
        cuda_index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
        torch.default_generator.manual_seed(seed)
        if cuda_index is not None:
            with torch.cuda.device(cuda_index):
                torch.cuda.manual_seed(seed)
        yield
