"""Acquisition strategies: one object per name, used alike by ``acquire``, ``simulate``, the pipeline.

A strategy turns MC probabilities into picks in two phases, so a pool of any size is scored in
one streaming pass and the selection sees only ``[n]`` scores (plus, for BatchBALD, the joint
probabilities of a bounded set of candidates)::

    strategy = get_strategy("power_bald", temperature=1.0)
    scorer = strategy.pool_scorer(k)                 # phase 1: O(n) scores, never [n, C, T]
    for probs in iter_predict_mc(model, pool, ...):  # [B, C, T] batches
        scorer.update(probs)
    scored = scorer.result()                         # ScoredPool(scores [n], joint_positions, joint)
    picks = strategy.select(scored.scores, k, seed=seed, joint=scored.joint)   # phase 2
    positions, scores = picks                        # Selection: [k] in acquisition order

Every strategy has

* ``name``, ``needs_joint`` (BatchBALD only: it needs the joint ``[M, C, T]`` probabilities of its
  candidates), ``needs_probs`` (False for "random": no model pass at all);
* ``score_batch(probs [B, C, ..., T]) -> scores [B]``: its own per-sample score (BALD for bald and
  the BALD samplers and as BatchBALD's pre-filter, entropy for power_entropy, NaN for random);
* ``select(scores [n], k, *, seed, joint=None) -> Selection(positions [k], scores [k])``: top-k
  (ties → lower position) for the per-sample heuristics; Gumbel top-k for the stochastic samplers
  and random (:class:`al_lib.sampling.GumbelTopK`, whose noise is a fixed function of seed and
  position); greedy joint MI over the candidates for BatchBALD, whose scores are the marginal
  joint-MI gains;
* ``joint_candidates(scores [n], k) -> positions [M]`` (ascending) whose joint probs BatchBALD
  needs (empty for the others);
* ``stream(k, *, seed)``: the one-pass, O(batch + k) form of the same selection, used by
  :func:`al_lib.inference.score_pool`; it picks exactly what ``select`` picks for the same seed.

:func:`get_strategy` builds one by name (the registry :data:`STRATEGIES`);
:func:`available_strategies` lists the names. The strategies that also need embeddings, the
labelled set or a target set (badge, coreset, typiclust, probcover, epig, class_balanced:
:data:`EMBEDDING_STRATEGIES`, defined in :mod:`al_lib.embedding_strategies`) say so with
``needs_features`` / ``needs_labelled`` / ``needs_target`` / ``needs_predicted``; phase 1 then gets
``update(probs, features)`` and ``select`` gets ``pool=`` (the whole :class:`ScoredPool`) and
``labelled=``. Their memory bound for large pools is documented in that module.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from al_lib.sampling import RunningTopK, Selection, gumbel_noise, make_selector, noise_seed
from al_lib.seeding import SeedLike

logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDING_STRATEGIES",
    "STRATEGIES",
    "BatchBALDStrategy",
    "PoolScorer",
    "RandomStrategy",
    "SamplingStrategy",
    "ScoredPool",
    "Selection",
    "Strategy",
    "TopKStrategy",
    "available_strategies",
    "get_strategy",
    "merge_scored_pools",
    "resolve_strategy",
]

# Scores of BatchBALD candidates and of the best sample left out are compared within this
# tolerance (float32 BALD of a batch vs float64 BALD inside batch_bald).
_PREFILTER_RTOL = 1e-5


# --- helpers ----------------------------------------------------------------------------------


def _check_k(k, n: int | None = None) -> int:
    """``k`` as an int, checked against a pool of ``n`` (only ``k >= 0`` while n is unknown)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0 or (n is not None and k > n):
        raise ValueError(f"cannot select k={k} samples from a pool of {'?' if n is None else n}")
    return int(k)


def _float64(x) -> np.ndarray:
    """``x`` (numpy or torch, any device) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_scores(scores, *, allow_nan: bool = False) -> np.ndarray:
    """A pool's scores ``[n]`` as float64 numpy, validated."""
    scores = _float64(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D [n], got shape {scores.shape}")
    if not allow_nan and np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores


def _batch_scores(scores, b: int) -> np.ndarray:
    """A scorer's output for a batch of ``b`` as float64 numpy ``[b]``."""
    scores = _float64(scores)
    if scores.shape != (b,):
        raise ValueError(f"the heuristic must return scores [B] = [{b}], got shape {scores.shape}")
    return scores


def _n_rows(probs) -> int:
    return int(probs.shape[0])


def _rows_numpy(probs, rows: np.ndarray) -> np.ndarray:
    """``probs[rows]`` as a numpy array (float32 stays float32), detached from ``probs``."""
    if isinstance(probs, torch.Tensor):
        return probs[torch.as_tensor(rows, dtype=torch.int64, device=probs.device)].detach().cpu().numpy()
    return np.array(np.asarray(probs)[rows])


# --- the strategy interface -------------------------------------------------------------------


class Strategy:
    """Base class: a per-sample score, a selection on scores, and their streamed form.

    Subclasses set ``name`` and implement :meth:`score_batch` and :meth:`_selector`.
    ``needs_joint`` strategies override :meth:`select`, :meth:`joint_candidates` and
    :meth:`stream`, and take as candidates the top ``candidate_count(k, n)`` by score (which is
    what lets :class:`PoolScorer` keep them while streaming and shards merge).
    """

    name: str = ""
    #: Whether :meth:`select` needs the joint ``[M, C, T]`` probs of :meth:`joint_candidates`.
    needs_joint: bool = False
    #: False when the selection ignores the model ("random"): no MC pass is needed.
    needs_probs: bool = True
    #: Whether the selection depends on ``seed``.
    stochastic: bool = False
    #: Whether phase 1 needs each batch's features ``[B, D]`` (``iter_predict_mc(features=...)``)
    #: and keeps those of its candidates (:mod:`al_lib.embedding_strategies`).
    needs_features: bool = False
    #: Whether :meth:`select` uses the labelled set (``labelled=LabelledSet``): its features or labels.
    needs_labelled: bool = False
    #: Whether the score needs a target set's MC probabilities (EPIG).
    needs_target: bool = False
    #: Whether phase 1 keeps the predicted class of every sample (class_balanced).
    needs_predicted: bool = False

    @property
    def needs_consistent_samples(self) -> bool:
        """Whether MC sample t must be the same model for every input (BatchBALD's joint, EPIG's target)."""
        return self.needs_joint or self.needs_target

    def candidate_limit(self) -> int | None:
        """How many candidates' features phase 1 keeps (``needs_features`` only; None = all)."""
        return None

    def score_batch(self, probs) -> np.ndarray:
        """The strategy's own per-sample score.

        Parameters
        ----------
        probs : array or tensor ``[B, C, ..., T]`` (a batch of MC probabilities)

        Returns
        -------
        scores : ndarray of float64, shape [B]; higher = more worth labelling.
        """
        raise NotImplementedError

    def _selector(self, k: int, seed: SeedLike):
        """A streaming selector of :mod:`al_lib.sampling` (``update(scores, positions)``)."""
        raise NotImplementedError

    def select(self, scores, k: int, *, seed: SeedLike = None, joint=None, pool: ScoredPool | None = None,
               labelled=None) -> Selection:
        """Pick ``k`` of ``n`` scored samples.

        Parameters
        ----------
        scores : array or tensor ``[n]``, the concatenated :meth:`score_batch` of the pool.
        k : int, ``0 <= k <= n`` (ValueError otherwise).
        seed : int, numpy Generator or None; used by the stochastic strategies.
        joint : only for ``needs_joint`` strategies (see :class:`BatchBALDStrategy`).
        pool : the whole :class:`ScoredPool` of phase 1; used by the strategies of
            :mod:`al_lib.embedding_strategies` (its candidates' features, the predicted classes).
        labelled : :class:`al_lib.embedding_strategies.LabelledSet` or None; used by the
            ``needs_labelled`` strategies, ignored by the others.

        Returns
        -------
        Selection
            ``positions`` int64 [k] into ``scores``, in acquisition order; ``scores`` float64 [k],
            the strategy's own score of each pick.
        """
        if joint is not None:
            raise ValueError(f"{self.name} takes no joint probabilities")
        scores = _as_scores(scores, allow_nan=not self.needs_probs)
        k = _check_k(k, len(scores))
        selector = self._selector(k, seed)
        selector.update(scores, np.arange(len(scores), dtype=np.int64))
        return Selection(*selector.result())

    def joint_candidates(self, scores, k: int) -> np.ndarray:
        """Positions (ascending) whose joint probs :meth:`select` needs: none unless ``needs_joint``."""
        return np.empty(0, dtype=np.int64)

    def stream(self, k: int, *, seed: SeedLike = None) -> SelectionStream:
        """One-pass selection: ``update(probs [B, C, ..., T], features=None)`` per batch, then ``result()``.

        Memory O(batch + k) (BatchBALD: + its candidates' probs; the embedding strategies: their
        phase-1 memory); the picks equal ``select(concatenated scores, k, seed=seed, joint=...)``
        (without a labelled set). ``k`` is checked against the number of samples seen when
        ``result()`` is called.
        """
        if self.needs_features or self.needs_predicted:
            return _ScoredStream(self, k, seed)
        return SelectionStream(self, self._selector, k, seed)

    def pool_scorer(self, k: int | None = None, *, seed: SeedLike = None) -> PoolScorer:
        """Phase 1 of the two-phase use: keeps the scores [n] (and the joint candidates' probs, or
        the embedding candidates' features, drawn with ``seed``)."""
        return PoolScorer(self, k, seed=seed)

    def __str__(self) -> str:
        return self.name


class SelectionStream:
    """Streams batches of probabilities into a strategy's selector (see :meth:`Strategy.stream`)."""

    def __init__(self, strategy: Strategy, make, k: int, seed: SeedLike) -> None:
        self.strategy, self.k, self.n = strategy, _check_k(k), 0
        self._selector = make(self.k, seed)

    def update(self, probs, features=None) -> np.ndarray:
        """Score a batch ``[B, C, ..., T]`` and fold it in; returns its scores [B] (``features``:
        only the embedding strategies use them)."""
        scores = _batch_scores(self.strategy.score_batch(probs), _n_rows(probs))
        self._fold(scores, probs)
        self.n += len(scores)
        return scores

    def skip(self, n: int) -> None:
        """Add ``n`` samples without probabilities (only for strategies with ``needs_probs=False``)."""
        if self.strategy.needs_probs:
            raise ValueError(f"{self.strategy.name} needs the samples' probabilities")
        self._selector.update(np.full(n, np.nan), np.arange(self.n, self.n + n, dtype=np.int64))
        self.n += n

    def _fold(self, scores: np.ndarray, probs) -> None:
        self._selector.update(scores, np.arange(self.n, self.n + len(scores), dtype=np.int64))

    def result(self) -> Selection:
        _check_k(self.k, self.n)
        return Selection(*self._selector.result())


class _ScoredStream(SelectionStream):
    """A one-pass selection that keeps a :class:`PoolScorer` and selects on its result."""

    def __init__(self, strategy: Strategy, k: int, seed: SeedLike) -> None:
        self.strategy, self.k, self.seed = strategy, _check_k(k), seed
        self._scorer = PoolScorer(strategy, self.k, seed=seed)

    @property
    def n(self) -> int:
        return self._scorer.n

    def update(self, probs, features=None) -> np.ndarray:
        return self._scorer.update(probs, features)

    def skip(self, n: int) -> None:
        raise ValueError(f"{self.strategy.name} needs the samples' features or probabilities")

    def result(self) -> Selection:
        scored = self._scorer.result()
        return self.strategy.select(scored.scores, self.k, seed=self.seed, joint=scored.joint, pool=scored)


# --- per-sample heuristics and stochastic samplers ----------------------------------------------


def _heuristic(heuristic: str | Callable) -> Callable:
    from al_lib.heuristics import HEURISTICS

    if callable(heuristic):
        return heuristic
    if heuristic not in HEURISTICS or heuristic == "random":
        raise ValueError(f"unknown heuristic {heuristic!r}; choose from {sorted(set(HEURISTICS) - {'random'})}")
    return HEURISTICS[heuristic]


@dataclass(frozen=True)
class _Scored(Strategy):
    """A strategy whose score is a per-sample heuristic (a name in ``HEURISTICS`` or a callable)."""

    heuristic: str | Callable = "bald"
    reduction: str | Callable = "mean"

    def __post_init__(self) -> None:
        _heuristic(self.heuristic)  # fail on an unknown name at construction

    def score_batch(self, probs) -> np.ndarray:
        f = _heuristic(self.heuristic)
        # A user's callable gets the batch alone; the library's heuristics also get the reduction.
        scores = f(probs) if callable(self.heuristic) else f(probs, reduction=self.reduction)
        return _batch_scores(scores, _n_rows(probs))


@dataclass(frozen=True)
class TopKStrategy(_Scored):
    """The ``k`` highest per-sample scores, best first; equal scores → lower position.

    Parameters
    ----------
    name : str
    heuristic : str or callable ``probs [B, C, ..., T] -> [B]`` (torch in, torch out)
    reduction : how the heuristics collapse extra (segmentation) dims; see :mod:`al_lib.heuristics`.
    """

    name: str = "bald"

    def _selector(self, k: int, seed: SeedLike):
        return make_selector("top_k", k)


@dataclass(frozen=True)
class SamplingStrategy(_Scored):
    """Stochastic batch acquisition (Kirsch et al. 2023): draw ``k`` without replacement.

    P(first pick = i) ∝ ``score_i ** (1/T)`` ("power", scores >= 0), ``exp(score_i / T)``
    ("softmax"), ``rank_i ** (-1/T)`` ("softrank"); later picks likewise among the rest (Gumbel
    top-k, in draw order). Same seed → same picks as :func:`al_lib.heuristics.power_sampling` & co.
    on the same scores.

    Parameters
    ----------
    name : str
    heuristic : str or callable (see :class:`TopKStrategy`)
    sampler : {"power", "softmax", "softrank"}
    temperature : float > 0
    reduction : see :class:`TopKStrategy`
    """

    name: str = "power_bald"
    sampler: str = "power"
    temperature: float = 1.0
    stochastic = True

    def __post_init__(self) -> None:
        from al_lib.heuristics._arrays import check_temperature

        super().__post_init__()
        if self.sampler not in ("power", "softmax", "softrank"):
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from power, softmax, softrank")
        check_temperature(self.temperature)

    def _selector(self, k: int, seed: SeedLike):
        return make_selector(self.sampler, k, temperature=self.temperature, seed=seed)


@dataclass(frozen=True)
class RandomStrategy(Strategy):
    """``k`` positions uniformly at random without replacement (seeded); no model pass needed.

    The draw is the Gumbel top-k with equal weights, so its order is a uniformly random one too.
    Its per-sample score is NaN: there is none.
    """

    name: str = "random"
    needs_probs = False
    stochastic = True

    def score_batch(self, probs) -> np.ndarray:
        return np.full(_n_rows(probs), np.nan)

    def _selector(self, k: int, seed: SeedLike):
        return make_selector("uniform", k, seed=seed)


# --- BatchBALD ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchBALDStrategy(Strategy):
    """BatchBALD (Kirsch et al. 2019) among the top-M samples by BALD.

    Its per-sample score is BALD, the pre-filter: :meth:`joint_candidates` are the M highest
    (ties → lower position), and :meth:`select` runs :func:`al_lib.heuristics.batch_bald` on
    their joint probabilities ``joint [M, C, T]``; a pick's score is its marginal joint-MI gain
    ``I(y_{S+x}; w) - I(y_S; w)`` (nats), so the scores of a batch sum to its joint MI.

    Why a pre-filter, and M. A pick's gain is at most its BALD (the gain is submodular), so a
    sample left out could only have been picked at a step whose best gain is below its BALD; the
    picks equal full-pool BatchBALD whenever the last pick's gain exceeds the best BALD left out
    (checked by :meth:`select`, logged at INFO when it does not hold). Late gains are small (a
    batch's gains sum to at most log T), so for large k the pre-filter is a deliberate
    approximation: the default ``M = max(2048, 16 k)`` leaves 16 candidates per pick — room to
    skip clusters of near-duplicates, which is what BatchBALD is for — while the joint stays at
    ``M·C·T`` floats (1.6 MB for C=10, T=20, k <= 128) and a 1M pool costs what a 2048 pool does.
    Measured on ``benchmarks.synthetic.latent_mc_probs(20_000)`` (clustered, correlated MC
    samples), k=50: the batch's joint MI is 2.9131 nats with M=2048, 2.9149 with M=800, 2.9117
    with M=200 and 2.8984 with M=100, vs 2.9145 for BatchBALD on the whole pool (stderr 0.0006;
    top-k BALD: 2.8372), although the bound above fails from the 9th pick on.

    Parameters
    ----------
    num_candidates : int, optional
        M (at least k; clipped to n). Default ``max(2048, 16 k)``.
    num_samples, max_exact_configs, device, max_work_bytes
        Passed to :func:`al_lib.heuristics.batch_bald`.
    """

    name: str = "batch_bald"
    num_candidates: int | None = None
    num_samples: int = 10_000
    max_exact_configs: int | None = None
    device: str | torch.device | None = None
    max_work_bytes: int | None = None
    needs_joint = True
    stochastic = True

    #: Default M = max(MIN_CANDIDATES, CANDIDATES_PER_PICK * k).
    MIN_CANDIDATES = 2048
    CANDIDATES_PER_PICK = 16

    def __post_init__(self) -> None:
        if self.num_candidates is not None and (
            isinstance(self.num_candidates, bool) or not isinstance(self.num_candidates, numbers.Integral)
            or self.num_candidates < 1
        ):
            raise ValueError(f"num_candidates must be an int >= 1, got {self.num_candidates!r}")

    def score_batch(self, probs) -> np.ndarray:
        from al_lib.heuristics import bald

        return _batch_scores(bald(probs), _n_rows(probs))

    def candidate_count(self, k: int, n: int) -> int:
        """M for ``k`` picks from ``n``: ``num_candidates`` (or the default), at least k, at most n."""
        m = self.num_candidates or max(self.MIN_CANDIDATES, self.CANDIDATES_PER_PICK * k)
        return min(max(m, k), n)

    def joint_candidates(self, scores, k: int) -> np.ndarray:
        """The top-M positions by BALD (ties → lower position), ascending: ``joint``'s row order.

        Parameters
        ----------
        scores : ``[n]`` BALD scores (:meth:`score_batch` of the pool)
        k : int, the batch size

        Returns
        -------
        positions : int64 ``[M]``, ascending.
        """
        from al_lib.heuristics import top_k

        scores = _as_scores(scores)
        k = _check_k(k, len(scores))
        return np.sort(top_k(scores, self.candidate_count(k, len(scores))))

    def select(self, scores, k: int, *, seed: SeedLike = None, joint=None, pool: ScoredPool | None = None,
               labelled=None) -> Selection:
        """Greedy BatchBALD among :meth:`joint_candidates` (``pool`` and ``labelled`` are not used).

        Parameters
        ----------
        scores : ``[n]`` BALD scores
        k : int, ``0 <= k <= n``
        seed : int, numpy Generator or None (batch_bald's sampled configurations)
        joint : array or tensor ``[M, C, T]``: the probs of ``joint_candidates(scores, k)``, in
            that (ascending) order.

        Returns
        -------
        Selection: positions [k] in acquisition order, scores [k] = the marginal joint-MI gains.
        """
        scores = _as_scores(scores)
        k = _check_k(k, len(scores))
        candidates = self.joint_candidates(scores, k)
        outside = np.ones(len(scores), bool)
        outside[candidates] = False
        best_outside = float(scores[outside].max()) if outside.any() else -np.inf
        return self._select_joint(candidates, joint, k, seed, best_outside)

    def _select_joint(self, candidates: np.ndarray, joint, k: int, seed: SeedLike, best_outside: float) -> Selection:
        from al_lib.heuristics import batch_bald

        if not len(candidates):  # an empty pool
            return Selection(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
        if joint is None:
            raise ValueError("batch_bald needs joint=probs [M, C, T] of strategy.joint_candidates(scores, k)")
        if _n_rows(joint) != len(candidates):
            raise ValueError(
                f"joint has {_n_rows(joint)} rows but joint_candidates(scores, k) are {len(candidates)}: "
                "pass the probs of exactly those positions, in their order"
            )
        picks, gains = batch_bald(joint, k, seed=seed, return_gains=True, num_samples=self.num_samples,
                                  max_exact_configs=self.max_exact_configs, device=self.device,
                                  max_work_bytes=self.max_work_bytes)
        picks = np.asarray(picks.cpu() if isinstance(picks, torch.Tensor) else picks, dtype=np.int64)
        gains = np.asarray(gains.cpu() if isinstance(gains, torch.Tensor) else gains, dtype=np.float64)
        if k and gains[-1] < best_outside * (1 - _PREFILTER_RTOL):
            logger.info(
                "BatchBALD pre-filter: the last pick's gain %.4g nats is below the best BALD left out "
                "(%.4g) of %d candidates: a larger num_candidates might change the picks",
                gains[-1], best_outside, len(candidates),
            )
        return Selection(candidates[picks], gains)

    def stream(self, k: int, *, seed: SeedLike = None) -> SelectionStream:
        return _JointStream(self, k, seed)


class _RunningRows:
    """The ``m`` best (score, position) of a stream, ties → lower position, with their probs rows."""

    def __init__(self, m: int) -> None:
        self.top = RunningTopK(m)
        self.rows: dict[int, np.ndarray] = {}

    def update(self, scores: np.ndarray, positions: np.ndarray, probs) -> None:
        before = self.top.indices
        self.top.update(scores, positions)
        entered = np.flatnonzero(np.isin(positions, self.top.indices))
        if not len(entered):  # the usual case once the top has filled up: nothing moves
            return
        for p in before[~np.isin(before, self.top.indices)].tolist():
            del self.rows[p]
        for p, row in zip(positions[entered].tolist(), _rows_numpy(probs, entered)):
            self.rows[p] = row

    def candidates(self, m: int) -> tuple[np.ndarray, np.ndarray | None, float]:
        """``(positions [<=m] ascending, their rows stacked or None, best score left out)``."""
        best = self.top.indices[:m]
        left_out = float(self.top.scores[m]) if len(self.top.scores) > m else -np.inf
        positions = np.sort(best)
        joint = np.stack([self.rows[p] for p in positions.tolist()]) if len(positions) else None
        return positions, joint, left_out


class _JointStream(SelectionStream):
    """BatchBALD in one pass: the running top-(M+1) by BALD with the probs of the top M."""

    def __init__(self, strategy: BatchBALDStrategy, k: int, seed: SeedLike) -> None:
        self.strategy, self.k, self.n, self.seed = strategy, _check_k(k), 0, seed
        # M is clipped to n at the end; the running top keeps one more for the pre-filter check.
        self._m = strategy.candidate_count(self.k, np.iinfo(np.int64).max)
        self._best = _RunningRows(self._m + 1)

    def _fold(self, scores: np.ndarray, probs) -> None:
        self._best.update(scores, np.arange(self.n, self.n + len(scores), dtype=np.int64), probs)

    def skip(self, n: int) -> None:
        raise ValueError("batch_bald needs the samples' probabilities")

    def result(self) -> Selection:
        _check_k(self.k, self.n)
        m = self.strategy.candidate_count(self.k, self.n)
        positions, joint, left_out = self._best.candidates(m)
        return self.strategy._select_joint(positions, joint, self.k, self.seed, left_out)


# --- phase 1: scoring a pool --------------------------------------------------------------------


@dataclass
class ScoredPool:
    """A scored pool: what phase 1 hands to :meth:`Strategy.select`.

    scores : float64 [n], :meth:`Strategy.score_batch` of every sample, in pool order.
    joint_positions : int64 [M] (ascending) or None: ``joint_candidates(scores, k)``.
    joint : [M, C, T] probs of ``joint_positions`` (numpy, the batches' dtype), or None.
    candidate_positions : int64 [M] (ascending) or None: the embedding strategies' candidates
        (a uniform subsample of at most ``strategy.candidate_limit()``).
    features : float32 [M, D] or None: their features.
    candidate_probs : float32 [M, C] or None: their MC-mean probabilities (None without probs).
    predicted : int64 [n] or None: every sample's predicted class (``needs_predicted``).
    n_classes : int or None: C of the probabilities seen.
    """

    scores: np.ndarray
    joint_positions: np.ndarray | None = None
    joint: np.ndarray | None = None
    candidate_positions: np.ndarray | None = None
    features: np.ndarray | None = None
    candidate_probs: np.ndarray | None = None
    predicted: np.ndarray | None = None
    n_classes: int | None = None


class PoolScorer:
    """Phase 1: ``update(probs [B, C, ..., T])`` per batch, then ``result() -> ScoredPool``.

    Keeps the scores (O(n) floats); for ``needs_joint`` strategies also the probs of the running
    top-M candidates (O(M·C·T)), so no second pass over the pool is needed and the joint rows are
    the very probabilities the scores came from.

    For ``needs_features`` strategies, ``update(probs, features [B, D])`` also keeps the features
    and MC-mean probabilities of a uniform random subsample of at most
    ``strategy.candidate_limit()`` samples: those with the smallest keys
    :func:`al_lib.sampling.gumbel_noise` ``(noise_seed(seed), position)`` (O(M·(D + C)) memory);
    ``probs`` may be None for strategies that need no model (``needs_probs=False``: cold start).
    For ``needs_predicted`` strategies, also the argmax class of every sample (O(n)).

    Parameters
    ----------
    strategy : Strategy
    k : int, the batch size; required when ``strategy.needs_joint`` (M depends on it).
    seed : int, numpy Generator or None: the candidate subsample (``needs_features`` only).
    """

    def __init__(self, strategy: Strategy, k: int | None = None, *, seed: SeedLike = None) -> None:
        if strategy.needs_joint and k is None:
            raise ValueError(f"{strategy.name} needs k to know how many candidates to keep")
        self.strategy, self.k = strategy, k
        self._scores: list[np.ndarray] = []
        self.n = 0
        self.n_classes: int | None = None
        self._best = _RunningRows(strategy.candidate_count(k, np.iinfo(np.int64).max)) if strategy.needs_joint else None
        self._predicted: list[np.ndarray] | None = [] if strategy.needs_predicted else None
        self._limit = strategy.candidate_limit() if strategy.needs_features else None
        self._noise_seed = noise_seed(seed) if strategy.needs_features and self._limit is not None else None
        self._kept = _RunningRows(self._limit) if self._noise_seed is not None else None
        self._all_rows: list[np.ndarray] | None = [] if strategy.needs_features and self._limit is None else None
        self._width: tuple[int, int] | None = None  # (D, C) of the kept rows

    def update(self, probs, features=None) -> np.ndarray:
        """Score a batch and keep its scores (and candidate rows); returns its scores [B].

        ``probs [B, C, ..., T]`` (None for a strategy with ``needs_probs=False``); ``features
        [B, D]``, required by ``needs_features`` strategies.
        """
        if probs is None:
            if self.strategy.needs_probs or features is None:
                raise ValueError(f"{self.strategy.name} needs the samples' probabilities")
            scores = np.full(_n_rows(features), np.nan)
        else:
            scores = _batch_scores(self.strategy.score_batch(probs), _n_rows(probs))
        positions = np.arange(self.n, self.n + len(scores), dtype=np.int64)
        if self._best is not None:
            self._best.update(scores, positions, probs)
        if probs is not None and (self._predicted is not None or self.strategy.needs_features):
            mean = _mean_probs(probs)
            self.n_classes = mean.shape[1]
            if self._predicted is not None:
                self._predicted.append(mean.argmax(1).cpu().numpy().astype(np.int64))
        if self.strategy.needs_features:
            if features is None:
                raise ValueError(f"{self.strategy.name} needs the features of each batch: "
                                 "iter_predict_mc(..., features='penultimate' or a callable)")
            if _n_rows(features) != len(scores):
                raise ValueError(f"features have {_n_rows(features)} rows, the batch {len(scores)}")
            feats = features.detach().float().reshape(len(scores), -1) if isinstance(features, torch.Tensor) \
                else torch.as_tensor(np.asarray(features, dtype=np.float32).reshape(len(scores), -1))
            rows = feats if probs is None else torch.cat([feats, mean.to(feats.device, torch.float32)], 1)
            self._width = (feats.shape[1], 0 if probs is None else mean.shape[1])
            if self._kept is not None:
                self._kept.update(-gumbel_noise(self._noise_seed, positions), positions, rows)
            else:
                self._all_rows.append(rows.cpu().numpy())
        self._scores.append(scores)
        self.n += len(scores)
        return scores

    def _candidates(self) -> dict:
        """The kept candidates as ScoredPool fields."""
        if self._kept is not None:
            positions, rows, _ = self._kept.candidates(len(self._kept.rows))
        else:
            positions = np.arange(self.n, dtype=np.int64)
            rows = np.concatenate(self._all_rows) if self._all_rows else None
        d, c = self._width or (0, 0)
        if rows is None:
            return {"candidate_positions": positions, "features": np.empty((0, d), np.float32),
                    "candidate_probs": np.empty((0, c), np.float32) if c else None}
        return {"candidate_positions": positions, "features": rows[:, :d],
                "candidate_probs": rows[:, d:] if c else None}

    def result(self) -> ScoredPool:
        scores = np.concatenate(self._scores) if self._scores else np.empty(0)
        extra = {"n_classes": self.n_classes}
        if self._predicted is not None:
            extra["predicted"] = np.concatenate(self._predicted) if self._predicted else np.empty(0, np.int64)
        if self.strategy.needs_features:
            extra.update(self._candidates())
        if self._best is None:
            return ScoredPool(scores, **extra)
        m = self.strategy.candidate_count(min(self.k, self.n), self.n)
        positions, joint, _ = self._best.candidates(m)
        return ScoredPool(scores, positions, joint, **extra)


def _mean_probs(probs) -> torch.Tensor:
    """MC-mean probabilities ``[B, C]`` of a batch (extra dims averaged; binary → two classes)."""
    p = probs if isinstance(probs, torch.Tensor) else torch.as_tensor(np.asarray(probs))
    p = p.detach().float()
    mean = p.mean(-1)
    if mean.ndim > 2:
        mean = mean.flatten(2).mean(-1)
    return torch.cat([1 - mean, mean], 1) if mean.shape[1] == 1 else mean


def merge_scored_pools(parts: Sequence[ScoredPool], strategy: Strategy, k: int) -> ScoredPool:
    """Concatenate the :class:`ScoredPool` of contiguous shards (in pool order) into one.

    For ``needs_joint`` strategies the merged candidates are ``strategy.joint_candidates`` of the
    merged scores; every one of them is among its own shard's candidates (a sample in the global
    top M is in its shard's top M), so its probs row comes from that shard. Equals scoring the
    whole pool with one :class:`PoolScorer`.
    """
    scores = np.concatenate([p.scores for p in parts]) if parts else np.empty(0)
    if strategy.needs_features:
        raise ValueError(f"{strategy.name} keeps a subsample of candidates per pool: score the pool in one "
                         "PoolScorer (sharded scoring does not support it)")
    extra = {}
    if strategy.needs_predicted:
        if any(p.predicted is None for p in parts):
            raise ValueError(f"a shard was scored without the predicted classes {strategy.name} needs")
        extra = {"predicted": np.concatenate([p.predicted for p in parts]) if parts else np.empty(0, np.int64),
                 "n_classes": max((p.n_classes or 0 for p in parts), default=0) or None}
    if not strategy.needs_joint:
        return ScoredPool(scores, **extra)
    positions = strategy.joint_candidates(scores, min(k, len(scores)))
    rows: dict[int, np.ndarray] = {}
    offset = 0
    for part in parts:
        if part.joint_positions is None:
            raise ValueError(f"a shard was scored without the joint probs {strategy.name} needs")
        for p, row in zip(part.joint_positions.tolist(), part.joint if part.joint is not None else []):
            rows[p + offset] = row
        offset += len(part.scores)
    missing = [p for p in positions.tolist() if p not in rows]
    if missing:
        raise ValueError(f"shards lack the probs of candidates {missing[:5]}: score them with k >= {k}")
    joint = np.stack([rows[p] for p in positions.tolist()]) if len(positions) else None
    return ScoredPool(scores, positions, joint, **extra)


# --- registry -----------------------------------------------------------------------------------


def _top(name: str) -> Callable[..., Strategy]:
    return lambda **params: TopKStrategy(name=name, heuristic=name, **params)


def _sampling(name: str, heuristic: str, sampler: str) -> Callable[..., Strategy]:
    return lambda **params: SamplingStrategy(name=name, heuristic=heuristic, sampler=sampler, **params)


#: The strategies of :mod:`al_lib.embedding_strategies`: they need features, the labelled set or a
#: target set besides the pool's scores, which ``acquire``, ``simulate`` and the pipeline's
#: score/query steps (tasks/score.py) provide.
EMBEDDING_STRATEGIES = ("badge", "coreset", "typiclust", "probcover", "epig", "class_balanced")

#: Strategy factories by name: ``STRATEGIES[name](**params) -> Strategy``.
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    **{name: _top(name) for name in ("bald", "entropy", "margin", "least_confidence", "variation_ratio", "mean_std")},
    "random": lambda **params: RandomStrategy(**params),
    "power_bald": _sampling("power_bald", "bald", "power"),
    "power_entropy": _sampling("power_entropy", "entropy", "power"),
    "softmax_bald": _sampling("softmax_bald", "bald", "softmax"),
    "softrank_bald": _sampling("softrank_bald", "bald", "softrank"),
    "batch_bald": lambda **params: BatchBALDStrategy(**params),
    **{name: (lambda name: lambda **params: _embedding(name)(**params))(name) for name in EMBEDDING_STRATEGIES},
}


def _embedding(name: str):
    """The strategy class of :mod:`al_lib.embedding_strategies` called ``name`` (imported on use)."""
    from al_lib import embedding_strategies as E

    return {"badge": E.BADGEStrategy, "coreset": E.CoreSetStrategy, "typiclust": E.TypiClustStrategy,
            "probcover": E.ProbCoverStrategy, "epig": E.EPIGStrategy, "class_balanced": E.ClassBalancedStrategy}[name]


def available_strategies() -> list[str]:
    """The names :func:`get_strategy` (and ``acquire``, ``simulate``, ``params.yaml``) accept."""
    return sorted(STRATEGIES)


def get_strategy(strategy: str | Strategy, **params) -> Strategy:
    """The strategy called ``strategy``, built with ``params``; a Strategy is returned as is.

    Parameters
    ----------
    strategy : str or Strategy
        A name of :func:`available_strategies`.
    **params
        Its parameters: ``temperature`` (the samplers), ``reduction`` (all but random and
        batch_bald), ``num_candidates``/``num_samples``/... (batch_bald). Not allowed with an
        instance.

    Raises
    ------
    ValueError : unknown name. TypeError : a parameter the strategy does not take.
    """
    if isinstance(strategy, Strategy):
        if params:
            raise TypeError(f"parameters {sorted(params)} given with a Strategy instance; set them on it")
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown acquisition strategy {strategy!r}; choose from {available_strategies()}")
    return STRATEGIES[strategy](**params)


def resolve_strategy(strategy: str | Strategy, *, temperature: float = 1.0) -> Strategy:
    """``strategy`` as a Strategy, for entry points with a generic ``temperature`` argument.

    A sampler given by name (power_bald, ...) gets ``temperature``; other names ignore it; an
    instance is returned as is (its own parameters win).
    """
    if isinstance(strategy, Strategy):
        return strategy
    resolved = get_strategy(strategy)
    if isinstance(resolved, SamplingStrategy):
        resolved = replace(resolved, temperature=temperature)
    return resolved
