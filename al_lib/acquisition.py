"""Choose which pool samples to label next, given a model: one entry point for every strategy."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from al_lib.inference import predict_mc, score_pool
from al_lib.seeding import check_random_state

logger = logging.getLogger(__name__)

# Strategies that select a batch jointly rather than by a per-sample top-k.
BATCH_STRATEGIES = ("batch_bald", "power_bald", "power_entropy", "softmax_bald", "softrank_bald")
# Stochastic batch acquisition (Kirsch et al.): a per-sample score, then a streamed sampler, so the
# pool is scored in O(batch + k) memory (softrank keeps the [N] scores for its global ranks).
STREAMED_SAMPLERS = {
    "power_bald": ("bald", "power"),
    "power_entropy": ("entropy", "power"),
    "softmax_bald": ("bald", "softmax"),
    "softrank_bald": ("bald", "softrank"),
}


def available_strategies() -> list[str]:
    """Names accepted by :func:`acquire`."""
    from al_lib.heuristics import HEURISTICS

    return sorted(set(HEURISTICS) | set(BATCH_STRATEGIES))


def acquire(
    model: nn.Module,
    pool: Dataset,
    strategy: str,
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
    strategy : str
        A per-sample heuristic of :data:`al_lib.heuristics.HEURISTICS` (streamed, running top-k),
        one of the stochastic samplers of Kirsch et al. (``STREAMED_SAMPLERS``: streamed,
        running Gumbel top-k; same distribution as :func:`al_lib.heuristics.power_bald` & co.,
        not the same draws for a given seed, except softrank), or "batch_bald" (needs the
        whole [N, C, T] array).
    seed : int or None
        Seeds MC sampling and stochastic selection: same seed, same model, same pool → same picks.

    Returns
    -------
    positions : ndarray of int64, shape [k]
        Positions in ``pool``, in acquisition order. Map them to sample ids with ``pool.ids``.
    scores : ndarray of float64, shape [k]
        The per-sample score of each pick (NaN for BatchBALD, whose scores are joint).
    """
    from al_lib import heuristics

    if not 0 <= k <= len(pool):
        raise ValueError(f"cannot acquire k={k} samples from a pool of {len(pool)}")
    rng = check_random_state(seed)
    mc_seed = int(rng.integers(2**31))
    mc = dict(iterations=iterations, batch_size=batch_size, device=device, seed=mc_seed, progress=progress)
    if strategy == "random":
        positions = np.sort(rng.choice(len(pool), size=k, replace=False)).astype(np.int64)
        return positions, np.full(k, np.nan)
    if strategy in heuristics.HEURISTICS:
        return score_pool(model, pool, strategy, k, **mc)
    if strategy not in BATCH_STRATEGIES:
        raise ValueError(f"unknown acquisition strategy {strategy!r}; choose from {available_strategies()}")
    if strategy == "batch_bald" and not _has_consistent_samples(model):
        logger.warning(
            "BatchBALD compares MC sample t across inputs, but this model draws independent dropout "
            "masks per input: patch it with patch_module(model, consistent=True)"
        )
    if strategy in STREAMED_SAMPLERS:
        scorer, selection = STREAMED_SAMPLERS[strategy]
        return score_pool(model, pool, scorer, k, selection=selection, temperature=temperature,
                          selection_seed=int(rng.integers(2**31)), **mc)
    probs = predict_mc(model, pool, **mc)
    select_seed = int(rng.integers(2**31))
    positions = np.asarray(heuristics.batch_bald(probs, k, seed=select_seed), dtype=np.int64)
    return positions, np.full(k, np.nan)


def _has_consistent_samples(model: nn.Module) -> bool:
    """Whether MC sample t is the same function for every input (consistent dropout, ensembles)."""
    from al_lib.bayesian import ConsistentMCDropout, Ensemble, MCDropout

    modules = list(model.modules())
    if any(isinstance(m, Ensemble) for m in modules):
        return True
    mc = [m for m in modules if isinstance(m, MCDropout)]
    return bool(mc) and all(isinstance(m, ConsistentMCDropout) for m in mc)
