"""Guards against MC passes that return garbage silently.

Two failures give plausible-looking numbers without them:

- **no stochastic layer**: a model that was never patched (:func:`~al_lib.bayesian.patch_module`
  forgotten) runs deterministically in ``eval()`` mode, so its T MC samples are identical and BALD
  is ~1e-7 for every sample — the acquisition is then noise. :func:`check_mc_batches` raises
  :class:`NoStochasticLayerError` on the first batch when the model holds no MC layer
  (:class:`~al_lib.bayesian.mc_aware.MCStochasticModule` or
  :class:`~al_lib.bayesian.mc_aware.MCAwareModule`, e.g. an ensemble) *and* its T > 1 samples are
  bit-identical. A model that is stochastic by other means (a layer of its own drawing random
  numbers in eval mode) passes, as its samples differ. Deterministic models opt out by asking for
  what they give: ``iterations=1`` is never checked.
- **non-finite probabilities**: a diverging model (NaN/Inf weights or activations) yields NaN
  probabilities, and every heuristic turns them into NaN scores, ranked arbitrarily.
  :func:`check_mc_batches` raises :class:`NonFiniteProbabilitiesError`, naming how many samples of
  the batch (and which dataset positions) are affected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from al_lib.bayesian.mc_aware import MCAwareModule, MCStochasticModule

__all__ = ["NoStochasticLayerError", "NonFiniteProbabilitiesError", "check_mc_batches", "has_mc_layer"]


class NoStochasticLayerError(ValueError):
    """An MC pass with T > 1 on a model whose samples are all identical (no active stochastic layer)."""


class NonFiniteProbabilitiesError(ValueError):
    """MC probabilities hold NaN or Inf (a diverged model, or NaN/Inf weights)."""


def has_mc_layer(*modules: nn.Module | None) -> bool:
    """Whether any of ``modules`` (or their submodules) is an MC layer: stochastic in ``eval()``
    mode (MC dropout, DropConnect) or MC-aware (an ensemble, whose members are the samples)."""
    return any(isinstance(m, (MCStochasticModule, MCAwareModule))
               for module in modules if module is not None for m in module.modules())


def check_mc_batches(batches: Iterable[torch.Tensor], model: nn.Module, iterations: int,
                     *, extra_modules: Iterable[nn.Module | None] = ()) -> Iterator[torch.Tensor]:
    """Pass MC probability batches through, checking each (see the module docstring).

    Parameters
    ----------
    batches : iterable of tensors ``[B, C, ..., T]``
        What an MC pass yields, in dataset order.
    model : nn.Module
        The model that produced them (searched for MC layers).
    iterations : int
        T. With T == 1 the identical-samples check is off (deterministic models).
    extra_modules : iterable of nn.Module
        Modules outside ``model`` that ran in the pass (a user-given split's prefix and tail).

    Yields
    ------
    The batches unchanged.

    Raises
    ------
    NonFiniteProbabilitiesError
        A batch holds NaN or Inf; the message says how many of its samples and which positions.
    NoStochasticLayerError
        T > 1, ``model`` has no MC layer and the first batch's T samples are identical.
    """
    check_identical = iterations > 1 and not has_mc_layer(model, *extra_modules)
    start = 0
    for probs in batches:
        finite = torch.isfinite(probs).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().cpu()
            first = start + int(bad[0])
            raise NonFiniteProbabilitiesError(
                f"MC probabilities of {len(bad)} of the {probs.shape[0]} samples at dataset positions "
                f"{start}..{start + probs.shape[0] - 1} are NaN or Inf (the first at position {first}; "
                f"T={probs.shape[-1]} MC samples each): the model diverged or its weights hold NaN/Inf — "
                "retrain it (a lower learning rate) or check the checkpoint")
        if check_identical:
            check_identical = False
            if probs.shape[0] and bool((probs == probs[..., :1]).all()):
                raise NoStochasticLayerError(
                    f"{type(model).__name__} gave {iterations} identical MC samples for every input of the first "
                    "batch: it has no layer that stays stochastic in eval() mode, so every uncertainty score "
                    "(BALD ~ 1e-7) would be noise. Call al_lib.bayesian.patch_module(model) to turn its dropout "
                    "into MC dropout (or use an Ensemble); for a deterministic model, pass iterations=1")
        start += probs.shape[0]
        yield probs
