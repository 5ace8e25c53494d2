"""Strategies that need more than per-sample scores: embeddings, the labelled set, a target set.

Registered in :data:`al_lib.strategies.STRATEGIES` (``get_strategy("badge")`` & co.) and used by
:func:`al_lib.acquisition.acquire` and :func:`al_lib.loop.simulate` like every strategy:

=================  ==========================================================================
``badge``          :func:`~al_lib.heuristics.diversity.badge` on (MC-mean probs, penultimate features)
``coreset``        :func:`~al_lib.heuristics.diversity.kcenter_greedy`, the labelled set as centres
``typiclust``      :func:`~al_lib.heuristics.diversity.typiclust` (cold start: no model needed)
``probcover``      :func:`~al_lib.heuristics.diversity.probcover` (cold start: no model needed)
``epig``           top-k :func:`~al_lib.heuristics.epig.epig` against a target set's MC probs
``class_balanced`` :func:`~al_lib.heuristics.diversity.class_balanced` over a base heuristic
=================  ==========================================================================

Memory, for pools of any size (1M included). Phase 1 (:class:`~al_lib.strategies.PoolScorer`)
keeps the per-sample scores ``[n]`` (and, for class_balanced, the predicted classes ``[n]``) plus
the features and MC-mean probabilities of at most ``max_candidates`` samples (default
:data:`DEFAULT_MAX_CANDIDATES` = 20 000): a uniform random subsample of the pool, drawn while
streaming as the ``max_candidates`` smallest keys of :func:`al_lib.sampling.gumbel_noise` (a fixed
function of the seed and the position, so shards merge and a stream equals a whole array). With
D = 512 features and C = 10 classes that is 20 000 × 522 × 4 B ≈ 42 MB whatever n; the
selection then works on the candidates only (BADGE and CoreSet in O(M (C + D)) per pick, ProbCover
in O(M + E) for its δ-ball graph, TypiClust's k-means on M + L rows). The labelled set's features
are computed in a second pass over it (only when the strategy uses them). ``max_candidates=None``
keeps every sample (exact, O(n D) memory). EPIG needs no features: its memory is the scores plus
the target set's ``[M*, C, T]`` probabilities (keep M* to a few thousand).
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from al_lib.sampling import Selection
from al_lib.seeding import SeedLike
from al_lib.strategies import ScoredPool, Strategy, _as_scores, _batch_scores, _check_k, _heuristic, _n_rows

__all__ = [
    "DEFAULT_MAX_CANDIDATES",
    "BADGEStrategy",
    "ClassBalancedStrategy",
    "CoreSetStrategy",
    "EPIGStrategy",
    "EmbeddingStrategy",
    "LabelledSet",
    "ProbCoverStrategy",
    "TypiClustStrategy",
]

logger = logging.getLogger(__name__)

#: Default number of candidates (a uniform subsample of the pool) whose features are kept.
DEFAULT_MAX_CANDIDATES = 20_000


@dataclass
class LabelledSet:
    """What the labelled set tells a selection.

    features : float32 ``[L, D]`` or None: its embeddings (the same embedding as the pool's).
    labels : int ``[L]`` or None: its classes (class_balanced counts them).
    """

    features: np.ndarray | None = None
    labels: np.ndarray | None = None


def _check_candidates(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"max_candidates must be an int >= 1 or None, got {value!r}")


def _pool_part(pool: ScoredPool | None, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(candidate positions [M], features [M, D], mean probs [M, C] or None)`` of a scored pool."""
    if pool is None or pool.features is None:
        raise ValueError(f"{name} needs pool=ScoredPool with the candidates' features: score the pool with "
                         f"strategy.pool_scorer(k, seed=...) fed (probs, features) batches")
    return pool.candidate_positions, pool.features, pool.candidate_probs


def _labelled_features(labelled: LabelledSet | None, d: int, name: str) -> np.ndarray | None:
    if labelled is None or labelled.features is None:
        return None
    feats = np.asarray(labelled.features)
    if feats.ndim != 2 or (len(feats) and feats.shape[1] != d):
        raise ValueError(f"{name}: the labelled features must be [L, {d}], got shape {feats.shape}")
    return feats if len(feats) else None


class EmbeddingStrategy(Strategy):
    """Base of the strategies that select on the candidates' embeddings (not a per-sample top-k).

    ``score_batch`` is NaN (there is no per-sample score); :meth:`select` takes the
    :class:`~al_lib.strategies.ScoredPool` of phase 1 as ``pool`` and the labelled set as
    ``labelled``. The scores of a selection are NaN too.
    """

    needs_features = True
    stochastic = True
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES

    def score_batch(self, probs) -> np.ndarray:
        return np.full(_n_rows(probs), np.nan)

    def candidate_limit(self) -> int | None:
        return self.max_candidates

    def select(self, scores, k: int, *, seed: SeedLike = None, joint=None, pool: ScoredPool | None = None,
               labelled: LabelledSet | None = None) -> Selection:
        """Pick ``k`` of the pool.

        Parameters
        ----------
        scores : ``[n]`` (NaN: only n is used)
        k : int, ``0 <= k <= number of candidates``
        seed : int, numpy Generator or None
        pool : ScoredPool with ``candidate_positions [M]``, ``features [M, D]`` and
            ``candidate_probs [M, C]`` (phase 1's result)
        labelled : LabelledSet or None

        Returns
        -------
        Selection: positions [k] into the pool, in acquisition order; scores [k] NaN.
        """
        if joint is not None:
            raise ValueError(f"{self.name} takes no joint probabilities")
        n = len(_as_scores(scores, allow_nan=True))
        positions, feats, probs = _pool_part(pool, self.name)
        if len(pool.scores) != n:
            raise ValueError(f"scores has {n} samples, the scored pool {len(pool.scores)}")
        k = _check_k(k, len(positions))
        if k == 0:
            return Selection(np.empty(0, dtype=np.int64), np.empty(0))
        picks = np.asarray(self._pick(feats, probs, k, seed, _labelled_features(labelled, feats.shape[1], self.name)),
                           dtype=np.int64)
        return Selection(positions[picks], np.full(k, np.nan))

    def _pick(self, feats: np.ndarray, probs: np.ndarray | None, k: int, seed, labelled: np.ndarray | None):
        raise NotImplementedError


def _torch(x: np.ndarray) -> torch.Tensor:
    """float32 features as a CPU tensor (the selections then compute in float32: fast, O(M) extra)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


@dataclass(frozen=True)
class BADGEStrategy(EmbeddingStrategy):
    """BADGE (Ash et al. 2020) on the candidates: MC-mean probs and penultimate features.

    Parameters
    ----------
    max_candidates : int or None, the uniform subsample kept in phase 1 (module docstring).
    """

    name: str = "badge"
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES

    def __post_init__(self) -> None:
        _check_candidates(self.max_candidates)

    def _pick(self, feats, probs, k, seed, labelled):
        from al_lib.heuristics.diversity import badge

        return badge(_torch(probs), _torch(feats), k, seed=seed)


@dataclass(frozen=True)
class CoreSetStrategy(EmbeddingStrategy):
    """CoreSet (Sener & Savarese 2018): greedy k-centre on the candidates, the labelled set's
    features as the initial centres (none: a seeded random first centre).

    Parameters
    ----------
    max_candidates : int or None (module docstring)
    """

    name: str = "coreset"
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES
    needs_labelled = True

    def __post_init__(self) -> None:
        _check_candidates(self.max_candidates)

    def _pick(self, feats, probs, k, seed, labelled):
        from al_lib.heuristics.diversity import kcenter_greedy

        return kcenter_greedy(_torch(feats), k, labelled_ld=None if labelled is None else _torch(labelled), seed=seed)


@dataclass(frozen=True)
class TypiClustStrategy(EmbeddingStrategy):
    """TypiClust (Hacohen et al. 2022) on the candidates; cold start: needs no model, only features.

    Parameters
    ----------
    n_neighbors, min_cluster_size : see :func:`al_lib.heuristics.diversity.typiclust`
    max_candidates : int or None (module docstring)
    """

    name: str = "typiclust"
    n_neighbors: int = 20
    min_cluster_size: int = 5
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES
    needs_probs = False
    needs_labelled = True

    def __post_init__(self) -> None:
        _check_candidates(self.max_candidates)

    def _pick(self, feats, probs, k, seed, labelled):
        from al_lib.heuristics.diversity import typiclust

        return typiclust(_torch(feats), k, labelled_ld=None if labelled is None else _torch(labelled),
                         n_neighbors=self.n_neighbors, min_cluster_size=self.min_cluster_size, seed=seed)


@dataclass(frozen=True)
class ProbCoverStrategy(EmbeddingStrategy):
    """ProbCover (Yehuda et al. 2022) on the candidates; cold start: needs no model, only features.

    Parameters
    ----------
    delta : float > 0 or None, the ball radius in the embedding (Euclidean). None: the paper's
        choice, :func:`~al_lib.heuristics.diversity.probcover_delta` on the candidates (the largest
        δ whose balls stay ``alpha``-pure on a k-means clustering into ``n_clusters``), then
        needs ``n_clusters``. The δ used is logged.
    n_clusters : int >= 2 or None, the k-means clusters of the automatic δ (the number of classes)
    alpha : float in (0, 1], the purity of the automatic δ (the paper's 0.95)
    max_candidates : int or None (module docstring); the graph costs O(M + E) more.
    """

    name: str = "probcover"
    delta: float | None = None
    n_clusters: int | None = None
    alpha: float = 0.95
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES
    needs_probs = False
    needs_labelled = True

    def __post_init__(self) -> None:
        _check_candidates(self.max_candidates)
        if self.delta is not None and (isinstance(self.delta, bool) or not isinstance(self.delta, numbers.Real)
                                       or not self.delta > 0):
            raise ValueError(f"probcover's delta must be a number > 0 (the ball radius in the embedding) or None "
                             f"(automatic), got {self.delta!r}")
        if self.delta is None and (isinstance(self.n_clusters, bool) or not isinstance(self.n_clusters, numbers.Integral)
                                   or self.n_clusters < 2):
            raise ValueError(f"probcover without delta chooses it automatically and needs n_clusters >= 2 "
                             f"(the number of classes), got {self.n_clusters!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real) or not 0 < self.alpha <= 1:
            raise ValueError(f"probcover's alpha must be a number in (0, 1], got {self.alpha!r}")

    def _pick(self, feats, probs, k, seed, labelled):
        from al_lib.heuristics.diversity import probcover, probcover_delta
        from al_lib.seeding import check_random_state

        rng = check_random_state(seed)
        delta = self.delta
        if delta is None:
            delta = probcover_delta(_torch(feats), self.n_clusters, alpha=self.alpha, seed=rng)
            logger.info("probcover: automatic delta %.4g (%d%% pure balls on %d clusters of %d candidates)",
                        delta, round(100 * self.alpha), self.n_clusters, len(feats))
        return probcover(_torch(feats), k, delta=float(delta),
                         labelled_ld=None if labelled is None else _torch(labelled), seed=rng)


@dataclass(frozen=True)
class EPIGStrategy(Strategy):
    """EPIG (Bickford Smith et al. 2023): the top k by EPIG against a target set.

    Its per-sample score needs the target inputs' MC probabilities ``target_probs [M*, C, T]``
    from the same T parameter samples as the pool's (consistent MC dropout, the same MC seed):
    :func:`al_lib.acquisition.acquire` computes them from ``target=`` (or, without one, from a
    seeded random subsample of ``target_size`` pool samples, the paper's fallback when no target
    distribution is known) and binds them with :meth:`with_target`.

    Parameters
    ----------
    target_probs : array ``[M*, C, T]`` or None
    target_size : int, the pool subsample used as the target set when none is given
    max_work_bytes : see :func:`al_lib.heuristics.epig.epig`
    """

    name: str = "epig"
    target_probs: np.ndarray | None = field(default=None, compare=False, repr=False)
    target_size: int = 1000
    max_work_bytes: int | None = None
    needs_target = True

    def with_target(self, target_probs) -> EPIGStrategy:
        """This strategy scoring against ``target_probs [M*, C, T]``."""
        return replace(self, target_probs=target_probs)

    def score_batch(self, probs) -> np.ndarray:
        from al_lib.heuristics.epig import epig

        if self.target_probs is None:
            raise ValueError("epig needs target_probs [M*, C, T]: pass target= to acquire, or strategy.with_target(probs)")
        target = self.target_probs
        if isinstance(probs, torch.Tensor):  # in float64: EPIG is a small difference of entropies
            probs = probs.double()
            target = torch.as_tensor(target, device=probs.device, dtype=torch.float64)
        return _batch_scores(epig(probs, target, max_work_bytes=self.max_work_bytes), _n_rows(probs))

    def _selector(self, k: int, seed: SeedLike):
        from al_lib.sampling import make_selector

        return make_selector("top_k", k)


@dataclass(frozen=True)
class ClassBalancedStrategy(Strategy):
    """Class-balanced selection (as small-text's ``ClassBalancer``) over a per-sample heuristic.

    The k picks are spread over the classes the model predicts (argmax of the MC-mean
    probabilities), each to the class with the fewest labels so far (:func:`~al_lib.heuristics.
    diversity.balanced_quotas`, counting the labelled set's labels when given), and within a class
    the best by ``heuristic``. Phase 1 keeps the predicted class of every sample (O(n) ints).

    Parameters
    ----------
    heuristic : str or callable, the base score (default "entropy")
    reduction : see :class:`~al_lib.strategies.TopKStrategy`
    """

    name: str = "class_balanced"
    heuristic: str = "entropy"
    reduction: str = "mean"
    needs_predicted = True
    needs_labelled = True

    def __post_init__(self) -> None:
        _heuristic(self.heuristic)

    def score_batch(self, probs) -> np.ndarray:
        f = _heuristic(self.heuristic)
        scores = f(probs) if callable(self.heuristic) else f(probs, reduction=self.reduction)
        return _batch_scores(scores, _n_rows(probs))

    def select(self, scores, k: int, *, seed: SeedLike = None, joint=None, pool: ScoredPool | None = None,
               labelled: LabelledSet | None = None) -> Selection:
        """The class-balanced picks; ``pool.predicted [n]`` is required. Scores: the base scores."""
        from al_lib.heuristics.diversity import class_balanced

        if joint is not None:
            raise ValueError(f"{self.name} takes no joint probabilities")
        scores = _as_scores(scores)
        if pool is None or pool.predicted is None or len(pool.predicted) != len(scores):
            raise ValueError("class_balanced needs pool=ScoredPool with the predicted class of every scored sample")
        n_classes = pool.n_classes or int(pool.predicted.max(initial=-1)) + 1
        counts = None
        if labelled is not None and labelled.labels is not None:
            counts = np.bincount(np.asarray(labelled.labels, dtype=np.int64), minlength=n_classes)[:n_classes]
        picks = np.asarray(class_balanced(scores, pool.predicted, _check_k(k, len(scores)), n_classes=n_classes,
                                          labelled_counts_c=counts), dtype=np.int64)
        return Selection(picks, scores[picks])
