"""The random draws of a round: every step's generator comes from (workspace seed, round, step)."""

from __future__ import annotations

import zlib

import numpy as np



def round_rng(seed: int, round: int, step: str) -> np.random.Generator:
    """The generator of ``step`` in ``round``: same seed, round and step → same draws; another
    round or step → independent draws (SeedSequence over the three, the step by its crc32)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(round), zlib.crc32(step.encode())]))


def round_seed(seed: int, round: int, step: str) -> int:
    """An int seed for APIs that take one (``fit``, ``predict_mc``), derived like :func:`round_rng`."""
    return int(round_rng(seed, round, step).integers(2**31))
