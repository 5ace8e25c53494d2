"""The protocol that lets one tiled forward pass carry T Monte-Carlo samples.

``predict_mc`` repeats each batch T times along dim 0, t-major (rows ``t*B .. (t+1)*B-1`` are MC
sample t), and tells every MC-aware module T for the duration of the pass. Modules whose randomness
is per *sample* rather than per element (consistent dropout masks, DropConnect weight masks,
ensemble members) need T to know which rows belong to which MC sample.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class MCAwareModule(nn.Module):
    """Base class of modules that act differently when a forward pass carries T tiled MC samples."""

    def __init__(self) -> None:
        super().__init__()
        self.mc_iterations: int | None = None

    def set_mc_iterations(self, iterations: int | None) -> None:
        """Declare that inputs hold ``iterations`` t-major copies of each batch (None: plain input)."""
        self.mc_iterations = iterations

    def split_iterations(self, x: torch.Tensor) -> torch.Tensor:
        """View ``x`` [T*B, ...] as [T, B, ...] for the declared T."""
        t = self.mc_iterations
        if x.shape[0] % t:
            raise ValueError(
                f"{type(self).__name__}: a batch of {x.shape[0]} rows cannot hold {t} tiled MC samples"
            )
        return x.reshape(t, x.shape[0] // t, *x.shape[1:])


def mc_aware_modules(model: nn.Module) -> list[MCAwareModule]:
    """All MC-aware modules of ``model``, itself included."""
    return [m for m in model.modules() if isinstance(m, MCAwareModule)]


@contextlib.contextmanager
def mc_iterations(model: nn.Module, iterations: int) -> Iterator[list[MCAwareModule]]:
    """Within the block, MC-aware modules of ``model`` expect inputs tiled ``iterations`` times."""
    modules = mc_aware_modules(model)
    for m in modules:
        m.set_mc_iterations(iterations)
    try:
        yield modules
    finally:
        for m in modules:
            m.set_mc_iterations(None)
