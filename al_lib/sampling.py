"""Choosing pool positions in bounded memory: subsampling before decoding, streamed selection.

* :func:`subsample_indices` picks which positions of a pool to score at all, so that
  ``Subset(pool, positions)`` decodes only those samples.
* :class:`RunningTopK` keeps the k best scores of a stream (deterministic top-k).
* :class:`GumbelTopK` draws k positions without replacement with P ∝ exp(log-weight) from a
  stream of log-weights, in O(batch + k) memory: the one Gumbel top-k of al_lib. The stochastic
  samplers of Kirsch et al. ("Stochastic Batch Acquisition": power, softmax, softrank), the
  uniform draw of the "random" strategy and the array functions of :mod:`al_lib.heuristics` all
  run through it, and its noise is a fixed function of (seed, position) (:func:`gumbel_noise`),
  so a stream and a whole array give the same picks for the same seed.
* :class:`StreamingGumbelTopK` maps a stream of *scores* to log-weights first (power, softmax).

:func:`make_selector` builds the right one from a name; all selectors share ``update(scores,
positions)`` / ``result() -> Selection(positions, scores)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from al_lib.seeding import SeedLike, check_random_state

__all__ = [
    "SELECTIONS",
    "GumbelTopK",
    "RunningTopK",
    "Selection",
    "StreamingGumbelTopK",
    "gumbel_noise",
    "make_selector",
    "noise_seed",
    "subsample_indices",
]

#: Names accepted by :func:`make_selector` (and ``score_pool(..., selection=...)``).
SELECTIONS = ("top_k", "power", "softmax", "softrank", "uniform")


class Selection(NamedTuple):
    """Picks of a selection, in acquisition order; unpacks as ``positions, scores = selection``.

    positions : ndarray of int64, shape [k] — positions in the scored pool (or dataset).
    scores : ndarray of float64, shape [k] — the strategy's own score of each pick.
    """

    positions: np.ndarray
    scores: np.ndarray


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
    An update costs O(B + k log k) for a chunk of B (a partition, then a sort of the survivors).
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
        if not len(scores):
            return
        values = scores if values is None else np.asarray(values, dtype=np.float64)
        scores = np.concatenate([self.scores, scores])
        indices = np.concatenate([self.indices, np.asarray(indices, dtype=np.int64)])
        values = np.concatenate([self.values, values])
        if len(scores) > self.k:
            # Only scores >= the k-th largest can be among the k best (ties kept: the sort decides).
            keep = scores >= np.partition(scores, -self.k)[-self.k] if self.k else np.zeros(len(scores), bool)
            scores, indices, values = scores[keep], indices[keep], values[keep]
        # lexsort: last key is primary -> sort by score descending, then index ascending.
        order = np.lexsort((indices, -scores))[: self.k]
        self.scores, self.indices, self.values = scores[order], indices[order], values[order]

    def result(self) -> Selection:
        """``Selection(indices [<=k] int64, scores [<=k] float64)``, best first."""
        return Selection(self.indices.copy(), self.scores.copy())


def noise_seed(seed: SeedLike) -> int:
    """The int that fixes :func:`gumbel_noise` for ``seed`` (a Generator is consumed once; None →
    fresh entropy). Same int seed → same noise, wherever it is used."""
    return int(check_random_state(seed).integers(2**63))


def gumbel_noise(seed: int, positions: np.ndarray) -> np.ndarray:
    """Standard Gumbel noise [B] (float64) for ``positions`` [B]: a fixed function of (seed, position).

    Philox is counter-based: uniform number i is output i % 4 of block i // 4, so a contiguous run
    of positions is one vectorised draw after a jump; other layouts are split into runs.
    """
    positions = np.asarray(positions, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    if not len(breaks):  # one contiguous run (a whole array, a batch of a stream): one draw
        out = _uniforms(seed, int(positions[0]), len(positions)) if len(positions) else np.empty(0)
    else:
        out = np.empty(len(positions), dtype=np.float64)
        for run in np.split(np.arange(len(positions)), breaks):
            out[run] = _uniforms(seed, int(positions[run[0]]), len(run))
    # Gumbel = -log(Exponential(1)); 1 - U lies in (0, 1], the clamp keeps E > 0.
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


class GumbelTopK:
    """Sample k positions without replacement, P ∝ exp(log_weight), from a stream of log-weights.

    Gumbel top-k: the k largest ``log_weight + Gumbel noise`` are an exact sample without
    replacement in draw order, and a running top-k of those keys needs O(batch + k) memory.
    Log-weight ``-inf`` (weight 0) positions come only after every positive-weight one, uniformly
    among themselves (ranked by their noise alone); all log-weights 0 is a uniform draw.

    The noise of position i is :func:`gumbel_noise` ``(noise_seed(seed), i)``, so picks depend
    neither on how the stream is chunked nor on its order: a whole array given at once (what
    :func:`al_lib.heuristics.power_sampling` & co. do) picks the same as any stream of it.

    Parameters
    ----------
    k : int
    seed : int, numpy Generator or None
    """

    def __init__(self, k: int, *, seed: SeedLike = None) -> None:
        self.k = k
        self.seed = noise_seed(seed)
        self._positive = RunningTopK(k)
        self._zero = RunningTopK(k)  # weight-0 positions, ranked by noise alone

    def update(self, log_weights: np.ndarray, positions: np.ndarray, values: np.ndarray | None = None) -> None:
        """Merge a chunk: ``log_weights`` [B] (float, no NaN), ``positions`` [B] (int >= 0, each
        seen once), optional ``values`` [B] carried with each pick (default: its log-weight)."""
        log_w = np.asarray(log_weights, dtype=np.float64)
        positions = np.asarray(positions, dtype=np.int64)
        if np.isnan(log_w).any():
            raise ValueError("log-weights contain NaN")
        values = log_w if values is None else np.asarray(values, dtype=np.float64)
        noise = gumbel_noise(self.seed, positions)
        positive = log_w > -np.inf
        self._positive.update(log_w[positive] + noise[positive], positions[positive], values[positive])
        self._zero.update(noise[~positive], positions[~positive], values[~positive])

    def result(self) -> Selection:
        """``Selection(positions [<=k] int64 in draw order, their values [<=k] float64)``."""
        missing = self.k - len(self._positive.indices)
        positions = np.concatenate([self._positive.indices, self._zero.indices[:missing]])
        values = np.concatenate([self._positive.values, self._zero.values[:missing]])
        return Selection(positions, values)


class StreamingGumbelTopK(GumbelTopK):
    """:class:`GumbelTopK` on a stream of scores, P ∝ exp(log_weights(score, temperature)).

    For samplers whose weight is a function of the score alone (power, softmax); softrank needs
    global ranks (see :func:`make_selector`). ``result()`` carries each pick's score.

    Parameters
    ----------
    k : int
    log_weights : callable ``(scores float64 tensor [B], temperature) -> [B]``
    temperature : float > 0
    seed : int, numpy Generator or None
    """

    def __init__(self, k: int, log_weights: Callable, *, temperature: float = 1.0, seed: SeedLike = None) -> None:
        from al_lib.heuristics._arrays import check_temperature

        super().__init__(k, seed=seed)
        self.log_weights = log_weights
        self.temperature = check_temperature(temperature)

    def update(self, scores: np.ndarray, positions: np.ndarray) -> None:
        """Merge a chunk: ``scores`` [B] (float), ``positions`` [B] (int, each seen once)."""
        scores = np.asarray(scores, dtype=np.float64)
        if np.isnan(scores).any():
            raise ValueError("the heuristic returned NaN scores")
        log_w = self.log_weights(torch.from_numpy(scores), self.temperature).numpy()
        super().update(log_w, positions, scores)


class _CollectThenSample:
    """Keeps every score (O(N) floats) and draws at the end: for weights that need global ranks.

    The log-weights of all scores feed one :class:`GumbelTopK` with each score's own position, so
    this picks exactly what :func:`al_lib.heuristics.softrank_sampling` picks on the whole array.
    """

    def __init__(self, k: int, log_weights: Callable, *, temperature: float, seed: SeedLike) -> None:
        from al_lib.heuristics._arrays import check_temperature

        self.k, self.log_weights = k, log_weights
        self.temperature = check_temperature(temperature)
        self.seed = noise_seed(seed)
        self._scores: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []

    def update(self, scores: np.ndarray, positions: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if np.isnan(scores).any():
            raise ValueError("the heuristic returned NaN scores")
        self._scores.append(scores)
        self._positions.append(np.asarray(positions, dtype=np.int64))

    def result(self) -> Selection:
        scores = np.concatenate(self._scores) if self._scores else np.empty(0)
        positions = np.concatenate(self._positions) if self._positions else np.empty(0, dtype=np.int64)
        draw = GumbelTopK(self.k, seed=0)
        draw.seed = self.seed  # the noise seed fixed at construction (a Generator is consumed once)
        draw.update(self.log_weights(torch.from_numpy(scores), self.temperature).numpy(), positions, scores)
        return draw.result()


class _Uniform:
    """k positions uniformly without replacement (every log-weight 0); scores (maybe NaN) carried."""

    def __init__(self, k: int, *, seed: SeedLike) -> None:
        self._draw = GumbelTopK(k, seed=seed)

    def update(self, scores: np.ndarray, positions: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        self._draw.update(np.zeros(len(scores)), positions, scores)

    def result(self) -> Selection:
        return self._draw.result()


def make_selector(selection: str, k: int, *, temperature: float = 1.0, seed: SeedLike = None):
    """A streaming selector: ``update(scores [B], positions [B])`` per chunk, then ``result()``.

    Parameters
    ----------
    selection : {"top_k", "power", "softmax", "softrank", "uniform"}
        "top_k": the k highest (ties → lower position), ``temperature``/``seed`` unused. "power",
        "softmax", "softrank" sample without replacement with P ∝ ``score ** (1/temperature)``
        (scores >= 0), ``exp(score / temperature)``, ``rank ** (-1/temperature)``; the first two
        in O(batch + k) memory (:class:`StreamingGumbelTopK`), softrank keeping the [N] scores.
        "uniform": k positions uniformly at random, the scores ignored (they may be NaN).
    k : int
    temperature : float > 0
    seed : int, numpy Generator or None

    Returns
    -------
    A selector whose ``result()`` is ``Selection(positions [k] int64, scores [k] float64)``: best
    first for top_k, in draw order otherwise. Same seed → the same picks as the array functions
    of :mod:`al_lib.heuristics` (``top_k``, ``power_sampling``, ...) on the whole score array.
    """
    from al_lib.heuristics import selection as samplers

    if selection == "top_k":
        return RunningTopK(k)
    if selection == "power":
        return StreamingGumbelTopK(k, samplers._power_log_weights, temperature=temperature, seed=seed)
    if selection == "softmax":
        return StreamingGumbelTopK(k, samplers._softmax_log_weights, temperature=temperature, seed=seed)
    if selection == "softrank":
        return _CollectThenSample(k, samplers._softrank_log_weights, temperature=temperature, seed=seed)
    if selection == "uniform":
        return _Uniform(k, seed=seed)
    raise ValueError(f"unknown selection {selection!r}; choose from {SELECTIONS}")
