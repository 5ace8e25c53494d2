"""Choose which pool samples to label next, given a model: one entry point for every strategy.

:func:`acquire` is the two-phase use of an :class:`al_lib.strategies.Strategy` — score the pool in
one streaming pass (:class:`~al_lib.strategies.PoolScorer`), then ``strategy.select`` — which is
exactly what the production pipeline runs as its score and query steps, so a library user,
:func:`al_lib.loop.simulate` and the pipeline get the same picks from the same seed.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from al_lib.inference import iter_predict_mc
from al_lib.seeding import check_random_state
from al_lib.strategies import ScoredPool, Strategy, available_strategies, resolve_strategy

logger = logging.getLogger(__name__)

__all__ = ["BATCH_STRATEGIES", "acquire", "available_strategies"]

#: Strategies that select a batch jointly or by sampling rather than by a per-sample top-k.
#: Kept for callers that branch on names; prefer ``get_strategy(name).needs_joint``.
BATCH_STRATEGIES = ("batch_bald", "power_bald", "power_entropy", "softmax_bald", "softrank_bald")


def acquire(
    model: nn.Module,
    pool: Dataset,
    strategy: str | Strategy,
    k: int,
    *,
    iterations: int = 20,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    temperature: float = 1.0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` samples of ``pool`` to label.

    Parameters
    ----------
    model : nn.Module
        Already MC-stochastic (see :func:`~al_lib.bayesian.patch_module`); unused for "random".
    pool : Dataset
        Items ``x`` or ``(x, ...)``.
    strategy : str or Strategy
        A name of :func:`available_strategies` or a :class:`~al_lib.strategies.Strategy`.
        The pool is scored once, batch by batch, holding only the scores [N] (and, for BatchBALD,
        the probs of its top-M candidates by BALD, never [N, C, T]).
    seed : int or None
        Seeds MC sampling and the selection: same seed, same model, same pool → same picks.
        One generator gives first the MC seed, then the selection seed.
    temperature : float
        Of the stochastic samplers given by name (power_bald, ...); ignored by the others.

    Returns
    -------
    positions : ndarray of int64, shape [k]
        Positions in ``pool``, in acquisition order. Map them to sample ids with ``pool.ids``.
    scores : ndarray of float64, shape [k]
        The strategy's own score of each pick (NaN for random, the marginal joint-MI gain for
        BatchBALD).
    """
    strategy = resolve_strategy(strategy, temperature=temperature)
    if not 0 <= k <= len(pool):
        raise ValueError(f"cannot acquire k={k} samples from a pool of {len(pool)}")
    rng = check_random_state(seed)
    mc_seed = int(rng.integers(2**31))
    select_seed = int(rng.integers(2**31))
    if strategy.needs_joint and not _has_consistent_samples(model):
        logger.warning(
            "%s compares MC sample t across inputs, but this model draws independent dropout "
            "masks per input: patch it with patch_module(model, consistent=True)", strategy.name
        )
    if strategy.needs_probs:
        scorer = strategy.pool_scorer(k)
        for probs in iter_predict_mc(model, pool, iterations=iterations, batch_size=batch_size,
                                     device=device, seed=mc_seed, progress=progress):
            scorer.update(probs)
        scored = scorer.result()
    else:
        scored = ScoredPool(np.full(len(pool), np.nan))
    return tuple(strategy.select(scored.scores, k, seed=select_seed, joint=scored.joint))


def _has_consistent_samples(model: nn.Module) -> bool:
    """Whether MC sample t is the same function for every input (consistent dropout, ensembles)."""
    from al_lib.bayesian import ConsistentMCDropout, Ensemble, MCDropout

    modules = list(model.modules())
    if any(isinstance(m, Ensemble) for m in modules):
        return True
    mc = [m for m in modules if isinstance(m, MCDropout)]
    return bool(mc) and all(isinstance(m, ConsistentMCDropout) for m in mc)
