"""Turning scores into a batch: deterministic top-k and stochastic batch acquisition.

Stochastic batch acquisition (Kirsch et al. 2023, "Stochastic Batch Acquisition: A Simple Baseline
for Deep Active Learning", TMLR) draws the batch without replacement with probability proportional
to weights derived from the scores, instead of taking the top k: top-k of a per-sample score piles
up near-duplicates, sampling spreads the batch at the cost of one score pass.

All functions take ``scores [N]`` (numpy or torch) and return int64 indices ``[k]`` of the same
kind (torch on the scores' device). The samplers are the one Gumbel top-k of al_lib
(:class:`al_lib.sampling.GumbelTopK`): for the same seed they pick exactly what the streamed
selectors (``al_lib.inference.score_pool``) and the strategies (:mod:`al_lib.strategies`) pick.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from al_lib.heuristics._arrays import check_k, check_temperature, prepare_scores, to_kind
from al_lib.heuristics.scores import bald, entropy
from al_lib.sampling import GumbelTopK
from al_lib.seeding import SeedLike

__all__ = [
    "power_bald",
    "power_entropy",
    "power_sampling",
    "softmax_bald",
    "softmax_sampling",
    "softrank_bald",
    "softrank_sampling",
    "top_k",
]

# Scores this far below zero are rounding noise of a non-negative score (relative to max |score|).
_NEGATIVE_RTOL = 1e-6


def _top_k(s: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest of ``s [N]``, highest first, ties -> lower index. O(N + k log k)."""
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=s.device)
    kth = torch.topk(s, k, sorted=False).values.min()
    above = torch.nonzero(s > kth).squeeze(1)
    # topk picks an arbitrary subset of the values equal to the k-th: take the lowest indices.
    at = torch.nonzero(s == kth).squeeze(1)[: k - above.numel()]
    winners = torch.cat([above, at]).sort().values
    order = torch.sort(s[winners], descending=True, stable=True).indices
    return winners[order]


def top_k(scores, k: int):
    """Indices of the ``k`` highest scores, highest first; equal scores -> lower index first.

    Parameters
    ----------
    scores : array or tensor ``[N]`` (no NaN)
    k : int, ``0 <= k <= N``

    Returns
    -------
    indices : int64 ``[k]``, same array kind as ``scores``.
    """
    s, was_numpy = prepare_scores(scores)
    return to_kind(_top_k(s, check_k(k, s.shape[0])), was_numpy)


def _gumbel_top_k(log_weights: torch.Tensor, k: int, seed: SeedLike) -> torch.Tensor:
    """Draw k indices without replacement, P ∝ exp(log_weights), in draw order (Gumbel top-k).

    ``-inf`` marks weight 0: such items are drawn only once every positive-weight item is taken,
    and then uniformly among themselves. This is :class:`al_lib.sampling.GumbelTopK` on the whole
    array (noise per index from the seed, on the CPU), so the streamed selectors of
    :mod:`al_lib.sampling` and the strategies of :mod:`al_lib.strategies` pick the same for the
    same seed, on every device.
    """
    draw = GumbelTopK(k, seed=seed)
    n = log_weights.shape[0]
    draw.update(log_weights.detach().cpu().numpy(), np.arange(n, dtype=np.int64))
    return torch.from_numpy(draw.result().positions).to(log_weights.device)


def _sample(scores, k: int, temperature: float, seed: SeedLike, log_weights_fn):
    s, was_numpy = prepare_scores(scores, float64=True)
    k = check_k(k, s.shape[0])
    log_weights = log_weights_fn(s, check_temperature(temperature))
    return to_kind(_gumbel_top_k(log_weights, k, seed), was_numpy)


def _power_log_weights(s: torch.Tensor, temperature: float) -> torch.Tensor:
    tolerance = _NEGATIVE_RTOL * max(1.0, float(s.abs().max())) if s.numel() else 0.0
    if s.numel() and float(s.min()) < -tolerance:
        raise ValueError(
            f"power_sampling needs scores >= 0, got min {float(s.min()):.3g}; "
            "use softmax_sampling or softrank_sampling for signed scores"
        )
    s = s.clamp_min(0)
    return torch.where(s > 0, s.log() / temperature, -math.inf)


def _softmax_log_weights(s: torch.Tensor, temperature: float) -> torch.Tensor:
    return s / temperature


def _average_ranks(s: torch.Tensor) -> torch.Tensor:
    """Rank 1 = highest score; equal scores share their average rank (so equal chances)."""
    _, inverse, counts = torch.unique(-s, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).to(torch.float64)
    return (last - (counts - 1) / 2)[inverse]


def _softrank_log_weights(s: torch.Tensor, temperature: float) -> torch.Tensor:
    return -_average_ranks(s).log() / temperature


def power_sampling(scores, k: int, *, temperature: float = 1.0, seed: SeedLike = None):
    """Sample k indices without replacement with P ∝ ``scores ** (1 / temperature)``.

    The paper's recommended variant for non-negative scores (BALD, entropy). Zero scores have
    probability 0 (drawn uniformly only after every positive one; all zero -> uniform).

    Parameters
    ----------
    scores : ``[N]``, >= 0 (tiny negative rounding noise is clipped; others raise ValueError)
    k : int, ``0 <= k <= N``
    temperature : float > 0; -> 0 tends to ``top_k``, ``inf`` is uniform over positive scores.
    seed : int, numpy Generator or None

    Returns
    -------
    indices : int64 ``[k]`` in draw order (most likely first), same kind as ``scores``.
    """
    return _sample(scores, k, temperature, seed, _power_log_weights)


def softmax_sampling(scores, k: int, *, temperature: float = 1.0, seed: SeedLike = None):
    """Sample k indices without replacement with P ∝ ``exp(scores / temperature)``.

    Works for signed scores (e.g. ``margin``). Parameters and return value as ``power_sampling``.
    """
    return _sample(scores, k, temperature, seed, _softmax_log_weights)


def softrank_sampling(scores, k: int, *, temperature: float = 1.0, seed: SeedLike = None):
    """Sample k indices without replacement with P ∝ ``rank ** (-1 / temperature)``.

    Rank 1 is the highest score; equal scores share their average rank. Only the order of the
    scores matters. Parameters and return value as ``power_sampling``.
    """
    return _sample(scores, k, temperature, seed, _softrank_log_weights)


def _compose(name: str, sampler, scorer):
    """Build ``name(probs, k, ...)``: score with ``scorer``, then sample with ``sampler``."""

    def acquire(
        probs, k: int, *, temperature: float = 1.0, seed: SeedLike = None, reduction="mean"
    ):
        return sampler(scorer(probs, reduction=reduction), k, temperature=temperature, seed=seed)

    acquire.__name__ = acquire.__qualname__ = name
    acquire.__doc__ = (
        f"``{sampler.__name__}({scorer.__name__}(probs, reduction=reduction), k, ...)``.\n\n"
        "Parameters: ``probs [N, C, ..., T]``, ``k``, ``temperature``, ``seed``, ``reduction``.\n"
        "Returns: int64 indices ``[k]`` in draw order, same kind as ``probs``."
    )
    return acquire


power_bald = _compose("power_bald", power_sampling, bald)
power_entropy = _compose("power_entropy", power_sampling, entropy)
softmax_bald = _compose("softmax_bald", softmax_sampling, bald)
softrank_bald = _compose("softrank_bald", softrank_sampling, bald)
