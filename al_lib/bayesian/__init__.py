"""Bayesian wrappers: MC dropout, consistent MC dropout, MC DropConnect, deep ensembles."""

from al_lib.bayesian.dropconnect import MCDropConnect
from al_lib.bayesian.dropout import ConsistentMCDropout, MCDropout
from al_lib.bayesian.ensemble import Ensemble
from al_lib.bayesian.mc_aware import (
    MCAwareModule,
    MCStochasticModule,
    mc_aware_modules,
    mc_generator,
    mc_iterations,
    stochastic_modules,
)
from al_lib.bayesian.patch import mc_dropout, patch_module, unpatch_module

__all__ = [
    "ConsistentMCDropout",
    "Ensemble",
    "MCAwareModule",
    "MCDropConnect",
    "MCDropout",
    "MCStochasticModule",
    "mc_aware_modules",
    "mc_dropout",
    "mc_generator",
    "mc_iterations",
    "patch_module",
    "stochastic_modules",
    "unpatch_module",
]
