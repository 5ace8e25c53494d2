"""Choosing pool positions in bounded memory: subsampling before decoding, streamed selection.

* :func:`subsample_indices` picks which positions of a pool to score at all, so that
  ``Subset(pool, positions)`` decodes only those samples.
* :class:`RunningTopK` keeps the k best scores of a stream (deterministic top-k).
* :class:`StreamingGumbelTopK` draws k positions without replacement with P ∝ exp(log-weight)
  from a stream of scores (the power / softmax samplers of Kirsch et al., "Stochastic Batch
  Acquisition"), in O(batch + k) memory; softrank needs global ranks and keeps the O(N) scores.

:func:`make_selector` builds the right one from a name; all selectors share ``update(scores,
positions)`` / ``result() -> (positions, scores)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
import torch

from al_lib.seeding import SeedLike, check_random_state

__all__ = ["SELECTIONS", "RunningTopK", "StreamingGumbelTopK", "gumbel_noise", "make_selector", "subsample_indices"]

#: Names accepted by :func:`make_selector` (and ``score_pool(..., selection=...)``).
SELECTIONS = ("top_k", "power", "softmax", "softrank")


def subsample_indices(n: int, size: int | float | None, seed: SeedLike = None) -> np.ndarray:
    """Sorted positions of a uniform random subsample of ``range(n)``, without replacement.

    Parameters
    ----------
    n : int, the pool size.
    size : int, float or None
        None: every position. int >= 1: that many (all when ``size >= n``). float in (0, 1]: that
        fraction, rounded, at least 1.
    seed : int, numpy Generator or None

    Returns
    -------
    positions : ndarray of int64, shape [min(size, n)], ascending. ``Subset(pool, positions)``
        then decodes only the chosen samples.
    """
    if size is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(size, bool) or not isinstance(size, (numbers.Integral, float)):
        raise TypeError(f"subsample size must be an int, a float fraction or None, got {type(size).__name__}")
    if isinstance(size, float):
        if not 0.0 < size <= 1.0:
            raise ValueError(f"subsample fraction must be in (0, 1], got {size}")
        size = max(1, int(round(size * n)))
    if size <= 0:
        raise ValueError(f"subsample size must be positive, got {size}")
    if size >= n:
        return np.arange(n, dtype=np.int64)
    rng = check_random_state(seed)
    return np.sort(rng.choice(n, size=int(size), replace=False)).astype(np.int64)


class RunningTopK:
    """The k best (score, index) pairs seen so far; ties go to the lower index.

    Exact for any split of the stream into chunks, so shard results merge to the single-pass one.
    Each index may carry a float ``value`` (default: its score), kept with it in :attr:`values`.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.scores = np.empty(0, dtype=np.float64)
        self.indices = np.empty(0, dtype=np.int64)
        self.values = np.empty(0, dtype=np.float64)

    def update(self, scores: np.ndarray, indices: np.ndarray, values: np.ndarray | None = None) -> None:
        """Merge a chunk: ``scores`` [B], ``indices`` [B] (int), optional ``values`` [B]."""
        scores = np.asarray(scores, dtype=np.float64)
        if np.isnan(scores).any():
            raise ValueError("the heuristic returned NaN scores")
        values = scores if values is None else np.asarray(values, dtype=np.float64)
        scores = np.concatenate([self.scores, scores])
        indices = np.concatenate([self.indices, np.asarray(indices, dtype=np.int64)])
        values = np.concatenate([self.values, values])
        # lexsort: last key is primary -> sort by score descending, then index ascending.
        order = np.lexsort((indices, -scores))[: self.k]
        self.scores, self.indices, self.values = scores[order], indices[order], values[order]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices [<=k] int64, scores [<=k] float64)``, best first."""
        return self.indices.copy(), self.scores.copy()


class StreamingGumbelTopK:
    """Sample k positions without replacement, P ∝ exp(log_weight(score)), from a stream of scores.

    Gumbel top-k: the k largest ``log_weight + Gumbel noise`` are an exact sample without
    replacement, and a running top-k of those keys needs O(batch + k) memory. Positions of weight
    0 (``-inf``, e.g. a zero score under power sampling) come only after every positive one,
    uniformly among themselves — as :func:`al_lib.heuristics.power_sampling` does.

    The noise of position i is a fixed function of (seed, i) (Philox, counter = i), so picks do not
    depend on how the stream is chunked. For a given seed they differ in value from the
    non-streaming samplers in :mod:`al_lib.heuristics` (whose noise is one [N] draw); the
    distribution is the same.

    Parameters
    ----------
    k : int
    log_weights : callable ``(scores float64 tensor [B], temperature) -> [B]``
    temperature : float > 0
    seed : int, numpy Generator or None
    """

    def __init__(self, k: int, log_weights: Callable, *, temperature: float = 1.0, seed: SeedLike = None) -> None:
        from al_lib.heuristics._arrays import check_temperature

        self.k = k
        self.log_weights = log_weights
        self.temperature = check_temperature(temperature)
        self.seed = _noise_seed(seed)
        self._positive = RunningTopK(k)
        self._zero = RunningTopK(k)  # weight-0 positions, ranked by noise alone

    def update(self, scores: np.ndarray, positions: np.ndarray) -> None:
        """Merge a chunk: ``scores`` [B] (float), ``positions`` [B] (int, each seen once)."""
        scores = np.asarray(scores, dtype=np.float64)
        positions = np.asarray(positions, dtype=np.int64)
        if np.isnan(scores).any():
            raise ValueError("the heuristic returned NaN scores")
        log_w = self.log_weights(torch.from_numpy(scores), self.temperature).numpy()
        noise = gumbel_noise(self.seed, positions)
        positive = log_w > -np.inf
        self._positive.update(log_w[positive] + noise[positive], positions[positive], scores[positive])
        self._zero.update(noise[~positive], positions[~positive], scores[~positive])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(positions [k] int64 in draw order, their scores [k] float64)``."""
        missing = self.k - len(self._positive.indices)
        positions = np.concatenate([self._positive.indices, self._zero.indices[:missing]])
        scores = np.concatenate([self._positive.values, self._zero.values[:missing]])
        return positions, scores


class _CollectThenSample:
    """Keeps every score (O(N) floats) and samples at the end: for samplers that need global ranks.

    Gives exactly ``sampler(all_scores, k, temperature=..., seed=...)``.
    """

    def __init__(self, k: int, sampler: Callable, *, temperature: float, seed: SeedLike) -> None:
        self.k, self.sampler, self.temperature, self.seed = k, sampler, temperature, seed
        self._scores: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []

    def update(self, scores: np.ndarray, positions: np.ndarray) -> None:
        self._scores.append(np.asarray(scores, dtype=np.float64))
        self._positions.append(np.asarray(positions, dtype=np.int64))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        scores = np.concatenate(self._scores) if self._scores else np.empty(0)
        positions = np.concatenate(self._positions) if self._positions else np.empty(0, dtype=np.int64)
        picks = np.asarray(self.sampler(scores, self.k, temperature=self.temperature, seed=self.seed))
        return positions[picks], scores[picks]


def make_selector(selection: str, k: int, *, temperature: float = 1.0, seed: SeedLike = None):
    """A streaming selector: ``update(scores [B], positions [B])`` per chunk, then ``result()``.

    Parameters
    ----------
    selection : {"top_k", "power", "softmax", "softrank"}
        "top_k": the k highest (ties → lower position), ``temperature``/``seed`` unused. The others
        sample without replacement with P ∝ ``score ** (1/temperature)`` (scores >= 0),
        ``exp(score / temperature)``, ``rank ** (-1/temperature)``; the first two in O(batch + k)
        memory (:class:`StreamingGumbelTopK`), softrank keeping the [N] scores.
    k : int
    temperature : float > 0
    seed : int, numpy Generator or None

    Returns
    -------
    A selector whose ``result()`` is ``(positions [k] int64, scores [k] float64)``: best first for
    top_k, in draw order for the samplers.
    """
    from al_lib.heuristics import selection as samplers

    if selection == "top_k":
        return RunningTopK(k)
    if selection == "power":
        return StreamingGumbelTopK(k, samplers._power_log_weights, temperature=temperature, seed=seed)
    if selection == "softmax":
        return StreamingGumbelTopK(k, samplers._softmax_log_weights, temperature=temperature, seed=seed)
    if selection == "softrank":
        return _CollectThenSample(k, samplers.softrank_sampling, temperature=temperature, seed=seed)
    raise ValueError(f"unknown selection {selection!r}; choose from {SELECTIONS}")


def _noise_seed(seed: SeedLike) -> int:
    """A fixed int for :func:`gumbel_noise` (a shared Generator is consumed once; None → fresh entropy)."""
    return int(check_random_state(seed).integers(2**63))


def gumbel_noise(seed: int, positions: np.ndarray) -> np.ndarray:
    """Standard Gumbel noise [B] (float64) for ``positions`` [B]: a fixed function of (seed, position).

    Philox is counter-based: uniform number i is output i % 4 of block i // 4, so a contiguous run
    of positions is one vectorised draw after a jump; other layouts are split into runs.
    """
    positions = np.asarray(positions, dtype=np.int64)
    out = np.empty(len(positions), dtype=np.float64)
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    for run in np.split(np.arange(len(positions)), breaks):
        if len(run):
            out[run] = _uniforms(seed, int(positions[run[0]]), len(run))
    # Gumbel = -log(Exponential(1)); 1 - U lies in (0, 1], the clamp keeps E > 0 as selection.py does.
    exponential = np.maximum(-np.log1p(-out), np.finfo(np.float64).tiny)
    return -np.log(exponential)


def _uniforms(seed: int, start: int, count: int) -> np.ndarray:
    if start < 0:
        raise ValueError(f"positions must be >= 0, got {start}")
    bits = np.random.Philox(seed)
    bits.advance(start // 4)  # Philox advances in blocks of 4 outputs
    gen = np.random.Generator(bits)
    gen.random(start % 4)
    return gen.random(count)
