"""Choose which pool samples to label next, given a model: one entry point for every strategy.

:func:`acquire` is the two-phase use of an :class:`al_lib.strategies.Strategy` — score the pool in
one streaming pass (:class:`~al_lib.strategies.PoolScorer`), then ``strategy.select`` — which is
exactly what the production pipeline runs as its score and query steps, so a library user,
:func:`al_lib.loop.simulate` and the pipeline get the same picks from the same seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from al_lib.inference import iter_features, iter_predict_mc, predict_mc
from al_lib.sampling import subsample_indices
from al_lib.seeding import check_random_state
from al_lib.strategies import ScoredPool, Strategy, available_strategies, resolve_strategy

logger = logging.getLogger(__name__)

__all__ = ["BATCH_STRATEGIES", "acquire", "available_strategies"]

#: Strategies that select a batch jointly or by sampling rather than by a per-sample top-k.
#: Kept for callers that branch on names; prefer ``get_strategy(name).needs_joint``.
BATCH_STRATEGIES = ("batch_bald", "power_bald", "power_entropy", "softmax_bald", "softrank_bald")


def acquire(
    model: nn.Module | None,
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
    labelled: Dataset | None = None,
    target: Dataset | None = None,
    features: str | Callable | None = None,
    mc_seed: int | None = None,
    select_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` samples of ``pool`` to label.

    Parameters
    ----------
    model : nn.Module or None
        Already MC-stochastic (see :func:`~al_lib.bayesian.patch_module`); unused for "random";
        None for the cold-start strategies (typiclust, probcover) given ``features=callable``.
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
    labelled : Dataset or None
        The labelled set (items ``(x, y)``; a ``labels`` attribute is used when present): the
        initial centres of coreset, the covered clusters/balls of typiclust and probcover, the
        class counts of class_balanced; ignored by the other strategies.
    target : Dataset or None
        EPIG's target inputs; None: a seeded random subsample of ``strategy.target_size`` pool
        samples. Scored with the same MC seed as the pool (use consistent MC dropout).
    features : None, "penultimate" or callable
        The embedding of the ``needs_features`` strategies (see
        :func:`~al_lib.inference.iter_predict_mc`); default "penultimate" of ``model``, computed in
        the pool's MC pass. The cold-start strategies with ``model=None`` need a callable.
    mc_seed, select_seed : int or None
        Override the two seeds drawn from ``seed`` (the MC passes', and the selection's: the
        candidate subsample, EPIG's pool target sample, the picks). The workspace round derives
        them per step (``tasks/seeds.py``); given them, ``acquire`` picks what the round picks.

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
    drawn = int(rng.integers(2**31)), int(rng.integers(2**31))
    mc_seed = drawn[0] if mc_seed is None else int(mc_seed)
    select_seed = drawn[1] if select_seed is None else int(select_seed)
    if strategy.needs_consistent_samples and not _has_consistent_samples(model):
        logger.warning(
            "%s compares MC sample t across inputs, but this model draws independent dropout "
            "masks per input: patch it with patch_module(model, consistent=True)", strategy.name
        )
    mc = dict(iterations=iterations, batch_size=batch_size, device=device, seed=mc_seed, progress=progress)
    if strategy.needs_features and features is None:
        features = "penultimate"
    if strategy.needs_target and getattr(strategy, "target_probs", None) is None:
        if target is None:
            target = Subset(pool, subsample_indices(len(pool), strategy.target_size, select_seed))
        strategy = strategy.with_target(predict_mc(model, target, **mc))
    if strategy.needs_probs or strategy.needs_features:
        scorer = strategy.pool_scorer(k, seed=select_seed)
        for probs, feats in _passes(model, pool, strategy, features, mc):
            scorer.update(probs, feats)
        scored = scorer.result()
    else:
        scored = ScoredPool(np.full(len(pool), np.nan))
    known = _labelled_set(model, labelled, strategy, features, mc) if strategy.needs_labelled else None
    return tuple(strategy.select(scored.scores, k, seed=select_seed, joint=scored.joint, pool=scored,
                                 labelled=known))


def _passes(model: nn.Module | None, data: Dataset, strategy: Strategy, features, mc: dict) -> Iterator[tuple]:
    """``(probs [B, C, ..., T] or None, features [B, D] or None)`` per batch of ``data``."""
    if strategy.needs_probs or (model is not None and not callable(features)):
        for out in iter_predict_mc(model, data, features=features if strategy.needs_features else None, **mc):
            probs, feats = out if strategy.needs_features else (out, None)
            yield (probs if strategy.needs_probs else None), feats
        return
    if not callable(features):
        raise ValueError(f"{strategy.name} without a model needs features=callable (an embedding of the inputs)")
    for feats in iter_features(features, data, batch_size=mc["batch_size"], device=mc["device"],
                               progress=mc["progress"]):
        yield None, feats


def _labelled_set(model, labelled: Dataset | None, strategy: Strategy, features, mc: dict):
    """The :class:`~al_lib.embedding_strategies.LabelledSet` of ``labelled`` that ``strategy`` uses."""
    from al_lib.embedding_strategies import LabelledSet

    if labelled is None or len(labelled) == 0:
        return None
    feats = None
    if strategy.needs_features:
        feats = np.concatenate([f.cpu().numpy() for _, f in _passes(model, labelled, strategy, features, mc)])
    labels = None
    if strategy.needs_predicted:
        from al_lib.loop import _targets

        labels = np.asarray(labelled.labels) if hasattr(labelled, "labels") else _targets(labelled)
    return LabelledSet(features=feats, labels=labels)


def _has_consistent_samples(model: nn.Module) -> bool:
    """Whether MC sample t is the same function for every input (consistent dropout, ensembles)."""
    from al_lib.bayesian import ConsistentMCDropout, Ensemble, MCDropout

    modules = list(model.modules())
    if any(isinstance(m, Ensemble) for m in modules):
        return True
    mc = [m for m in modules if isinstance(m, MCDropout)]
    return bool(mc) and all(isinstance(m, ConsistentMCDropout) for m in mc)
