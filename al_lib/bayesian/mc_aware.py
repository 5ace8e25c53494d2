"""The protocols that let one tiled forward pass carry T Monte-Carlo samples, reproducibly.

``predict_mc`` repeats each batch T times along dim 0, t-major (rows ``t*B .. (t+1)*B-1`` are MC
sample t), and for the duration of the pass

- tells every MC-aware module T (:func:`mc_iterations`). Modules whose randomness is per *sample*
  rather than per element (consistent dropout masks, DropConnect weight masks, ensemble members)
  need T to know which rows belong to which MC sample;
- hands every stochastic module its own ``torch.Generator`` (:func:`mc_generator`), derived from the
  pass's seed in module order, so the pass never draws from torch's global RNG and the same seed
  gives the same masks. Outside a pass (training, plain calls) a stochastic module has no
  generator and draws from torch's global RNG, as ``nn.Dropout`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from al_lib.seeding import draw_seed, torch_generator


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


class MCStochasticModule(nn.Module):
    """Base class of modules that draw random numbers at prediction time (MC dropout, DropConnect).

    During an MC pass :attr:`generator` is a CPU ``torch.Generator`` of this module's own (set by
    :func:`mc_generator`); random draws go to it, or to :meth:`generator_on` for draws made on
    another device. Outside a pass it is None and the module draws from torch's global RNG.
    """

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None
        self._device_seed: int | None = None
        self._device_generators: dict[str, torch.Generator] = {}

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Draw from ``generator`` (a CPU generator owned by this module) until reset with None."""
        self.generator = generator
        self._device_generators = {}
        # Taken now, so a device's stream does not depend on what was drawn on the CPU before.
        self._device_seed = None if generator is None else draw_seed(generator)

    def generator_on(self, device: torch.device | str) -> torch.Generator | None:
        """The generator for draws on ``device``: :attr:`generator` itself on the CPU; elsewhere one
        on that device, seeded from it once per pass (so large masks are drawn where they are used).
        None outside a pass."""
        if self.generator is None:
            return None
        device = torch.device(device)
        if device.type == "cpu":
            return self.generator
        key = str(device)
        if key not in self._device_generators:
            self._device_generators[key] = torch_generator(self._device_seed, device)
        return self._device_generators[key]


def mc_aware_modules(model: nn.Module) -> list[MCAwareModule]:
    """All MC-aware modules of ``model``, itself included."""
    return [m for m in model.modules() if isinstance(m, MCAwareModule)]


def stochastic_modules(*models: nn.Module | None) -> list[MCStochasticModule]:
    """Every :class:`MCStochasticModule` of ``models`` (None skipped), each once, in module order."""
    found: dict[int, MCStochasticModule] = {}
    for model in models:
        if model is None:
            continue
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected nn.Module, got {type(model).__name__}")
        for m in model.modules():
            if isinstance(m, MCStochasticModule):
                found.setdefault(id(m), m)
    return list(found.values())


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


@contextlib.contextmanager
def mc_generator(*models: nn.Module | None, generator: torch.Generator) -> Iterator[list[MCStochasticModule]]:
    """Within the block, every stochastic module of ``models`` draws from a generator of its own.

    Module i (in the order of :func:`stochastic_modules`) gets a CPU generator seeded with the i-th
    :func:`~al_lib.seeding.draw_seed` of ``generator``: the same seed and model give the same
    streams whatever the batch size, device or engine, and torch's global RNG is never touched.
    On exit the modules have no generator again (they draw from the global RNG).

    Parameters
    ----------
    *models : nn.Module or None
        Whose stochastic modules to seed (a module shared by several is seeded once).
    generator : torch.Generator on the CPU
        Consumed for one draw per stochastic module.

    Yields
    ------
    list of MCStochasticModule, the modules seeded.
    """
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator, got {generator!r}")
    modules = stochastic_modules(*models)
    try:
        for m in modules:
            m.set_generator(torch_generator(generator))
        yield modules
    finally:
        for m in modules:
            m.set_generator(None)
