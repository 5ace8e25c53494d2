"""Bayesian wrappers: MC dropout, consistent MC dropout, MC DropConnect, deep ensembles."""

from al_lib.bayesian.dropconnect import MCDropConnect
from al_lib.bayesian.dropout import ConsistentMCDropout, MCDropout
from al_lib.bayesian.ensemble import Ensemble
from al_lib.bayesian.mc_aware import MCAwareModule, mc_aware_modules, mc_iterations
from al_lib.bayesian.patch import mc_dropout, patch_module, unpatch_module


def reset_consistent_masks(model, seed: int | None = None) -> int:
    """Draw new masks in every :class:`ConsistentMCDropout` of ``model``; return how many.

    With ``seed``, layer i is reseeded with ``seed + i``.
    """
    layers = [m for m in model.modules() if isinstance(m, ConsistentMCDropout)]
    for i, layer in enumerate(layers):
        layer.reset_masks(None if seed is None else seed + i)
    return len(layers)


__all__ = [
    "ConsistentMCDropout",
    "Ensemble",
    "MCAwareModule",
    "MCDropConnect",
    "MCDropout",
    "mc_aware_modules",
    "mc_dropout",
    "mc_iterations",
    "patch_module",
    "reset_consistent_masks",
    "unpatch_module",
]
