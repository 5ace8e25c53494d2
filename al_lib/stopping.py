"""Stopping criteria: when to stop paying for labels.

Every criterion is a small object with one method, ``check(history) -> StopDecision``, where the
history is what the rounds so far know, oldest first, one :class:`RoundRecord` per round (the last
is the round deciding now). A criterion keeps no state between calls: the same history gives the
same decision, so a resumed or re-run round decides as the first run did.

BaaL's criteria (``baal.active.stopping_criteria``):

- ``label_budget`` — the labels reach a budget (BaaL counts labels added since the criterion was
  made: ``count="acquired"``; ``count="total"`` counts all).
- ``low_uncertainty`` — the mean acquisition score (uncertainty) of the round's scored pool is
  below a threshold (strictly, as BaaL).
- ``metric_plateau`` — a metric moved by at most ``epsilon`` over the last ``patience`` rounds
  (``patience + 1`` values within ``epsilon`` of the latest; BaaL's ``EarlyStoppingCriterion``
  also stops after only ``patience`` values, one round earlier).

small-text's (``small_text.stopping_criteria``), on the predictions for a **stop set**: a fixed
subsample of the unlabelled pool, the same ids every round, which needs no labels:

- ``kappa_average`` (Bloodgood & Vijay-Shanker 2009, "stabilizing predictions"): Cohen's kappa
  between consecutive rounds' stop-set predictions; stop when its mean over the last ``window``
  pairs is >= ``threshold`` (0.99, 3). Identical predictions have kappa 1 (scikit-learn gives NaN
  when both rounds predict a single class).
- ``delta_f`` (Altschuler & Bloodgood 2019): the predicted change of F between consecutive rounds,
  ``ΔF = 1 − 2a / (2a + b + c)`` with ``a`` the stop-set samples both rounds predict ``positive``,
  ``b`` only the earlier, ``c`` only the later (``1 − F1`` of the new predictions against the old);
  0 when neither round predicts ``positive``. Stop when every ΔF of the last ``window`` pairs is
  < ``threshold`` (0.05, 3). The papers' binary case is ``positive`` = class 1; with more classes
  it is the F of class ``positive`` against the rest.
- ``overall_uncertainty`` (Zhu, Wang & Hovy 2008): the mean normalised entropy
  ``H(p̄) / log C`` of the stop set's predictive distributions is < ``threshold`` (0.05).
- ``classification_change`` (Zhu, Wang & Hovy 2008): at most a fraction ``threshold`` of the stop
  set changed predicted class since the previous round (0: none did, the paper's criterion).

A criterion that lacks the history it needs (the first rounds, a random strategy's NaN scores, a
metric not recorded) does not stop: its decision says what is missing ("not yet: ...").
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from al_lib.transforms import ConfigError


@dataclass(frozen=True)
class RoundRecord:
    """What one round knows when it decides whether to stop.

    Parameters
    ----------
    round : int
    n_labelled : int
        Labels trained on this round.
    metrics : mapping of str to float
        The round's metrics (``val_accuracy``, ``test_accuracy``, ...).
    pool_scores : array [n] or None
        The acquisition scores of the round's scored pool (higher = more uncertain; NaN = none).
    stop_ids : array [S] or None
        The stop set's sample ids (the same every round).
    stop_predictions : int array [S] or None
        The predicted class of each stop-set sample; the argmax of ``stop_probs`` when not given.
    stop_probs : array [S, C] or None
        The stop set's predictive distributions (MC-averaged).
    """

    round: int
    n_labelled: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    pool_scores: np.ndarray | None = None
    stop_ids: np.ndarray | None = None
    stop_predictions: np.ndarray | None = None
    stop_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.stop_probs is not None:
            probs = np.asarray(self.stop_probs, dtype=np.float64)
            if probs.ndim != 2 or probs.shape[1] < 2:
                raise ValueError(f"round {self.round}: stop_probs must be [S, C] with C >= 2, got {probs.shape}")
            object.__setattr__(self, "stop_probs", probs)
            if self.stop_predictions is None:
                object.__setattr__(self, "stop_predictions", probs.argmax(axis=1))
        if self.stop_predictions is not None:
            preds = np.asarray(self.stop_predictions, dtype=np.int64)
            object.__setattr__(self, "stop_predictions", preds)
            if self.stop_probs is not None and len(self.stop_probs) != len(preds):
                raise ValueError(f"round {self.round}: {len(preds)} stop-set predictions for "
                                 f"{len(self.stop_probs)} stop-set distributions")
            if self.stop_ids is not None and len(self.stop_ids) != len(preds):
                raise ValueError(f"round {self.round}: {len(preds)} stop-set predictions for "
                                 f"{len(self.stop_ids)} stop-set ids")
        if self.pool_scores is not None:
            object.__setattr__(self, "pool_scores", np.asarray(self.pool_scores, dtype=np.float64).reshape(-1))


@dataclass(frozen=True)
class StopDecision:
    """One criterion's answer for a round.

    ``stop``: whether it fired; ``reason``: why, in words, with the numbers; ``value``: the
    quantity compared with the criterion's threshold (None when it could not be computed).
    """

    criterion: str
    stop: bool
    reason: str
    value: float | None = None

    @property
    def message(self) -> str:
        """e.g. ``kappa_average fired — mean kappa 0.993 ≥ 0.99 over the last 3 rounds``."""
        return f"{self.criterion} fired — {self.reason}" if self.stop else f"{self.criterion} not yet: {self.reason}"

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> StopDecision:
        """The inverse of :meth:`as_dict`."""
        return cls(record["criterion"], bool(record["stop"]), record["reason"], record.get("value"))

    def as_dict(self) -> dict[str, Any]:
        value = None if self.value is None or not math.isfinite(self.value) else float(self.value)
        return {"criterion": self.criterion, "stop": bool(self.stop), "reason": self.reason, "value": value}


class StoppingCriterion:
    """Base class: ``check(history) -> StopDecision``; ``name`` is the config name.

    ``needs_stop_set``: reads the stop set's predictions; ``needs_pool_scores``: the pool's scores
    (so callers compute only what the configured criteria read).
    """

    name: ClassVar[str] = ""
    needs_stop_set: ClassVar[bool] = False
    needs_pool_scores: ClassVar[bool] = False

    def check(self, history: Sequence[RoundRecord]) -> StopDecision:
        if len(history) == 0:
            raise ValueError(f"{self.name}: the history is empty (it must hold at least the current round)")
        return self._check(list(history))

    def _check(self, history: list[RoundRecord]) -> StopDecision:
        raise NotImplementedError

    def _decide(self, stop: bool, reason: str, value: float | None = None) -> StopDecision:
        return StopDecision(self.name, bool(stop), reason, None if value is None else float(value))

    def options(self) -> dict[str, Any]:
        """The constructor's arguments, as a config would give them."""
        return {p: getattr(self, p) for p in inspect.signature(type(self).__init__).parameters if p != "self"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"


def _number(key: str, value: Any, *, low: float | None = None, high: float | None = None,
            integer: bool = False, low_open: bool = False) -> float:
    """``value`` checked as a number (an int when ``integer``) in the given bounds; ConfigError naming ``key``."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and (integer or math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = (f" {'>' if low_open else '>='} {low}" if low is not None else "") + \
                 (f" and <= {high}" if high is not None else "")
        raise ConfigError(key, f"must be {'an integer' if integer else 'a number'}{bounds}, got {value!r}")
    return int(value) if integer else float(value)


# --------------------------------------------------------------------------- BaaL's criteria


class LabelBudget(StoppingCriterion):
    """Stop when the labels reach ``budget``: all of them (``count="total"``) or those acquired
    since the first round of the history (``count="acquired"``, as BaaL counts)."""

    name = "label_budget"

    def __init__(self, budget: int, count: str = "total") -> None:
        self.budget = _number("budget", budget, low=1, integer=True)
        if count not in ("total", "acquired"):
            raise ConfigError("count", f"must be 'total' or 'acquired', got {count!r}")
        self.count = count

    def _check(self, history):
        n = history[-1].n_labelled - (history[0].n_labelled if self.count == "acquired" else 0)
        what = "labels" if self.count == "total" else f"labels acquired since round {history[0].round}"
        sign = "≥" if n >= self.budget else "<"
        return self._decide(n >= self.budget, f"{n} {what} {sign} budget {self.budget}", n)


class LowUncertainty(StoppingCriterion):
    """Stop when the mean acquisition score of the round's scored pool is < ``threshold``
    (NaN scores left out; a strategy with no scores, e.g. random, never stops this way)."""

    name = "low_uncertainty"
    needs_pool_scores = True

    def __init__(self, threshold: float) -> None:
        self.threshold = _number("threshold", threshold)

    def _check(self, history):
        scores = history[-1].pool_scores
        finite = scores[~np.isnan(scores)] if scores is not None else np.zeros(0)
        if len(finite) == 0:
            return self._decide(False, "no uncertainty scores this round (the strategy scores none)")
        mean = float(finite.mean())
        sign = "<" if mean < self.threshold else "≥"
        return self._decide(mean < self.threshold,
                            f"mean pool uncertainty {mean:.4g} {sign} {self.threshold:g} ({len(finite)} scored)", mean)


class MetricPlateau(StoppingCriterion):
    """Stop when ``metric`` stayed within ``epsilon`` of its latest value over the last
    ``patience`` rounds (the latest ``patience + 1`` values; NaN or missing values do not count)."""

    name = "metric_plateau"

    def __init__(self, metric: str, patience: int = 10, epsilon: float = 1e-4) -> None:
        if not isinstance(metric, str) or not metric:
            raise ConfigError("metric", f"must name a metric (a string), got {metric!r}")
        self.metric = metric
        self.patience = _number("patience", patience, low=1, integer=True)
        self.epsilon = _number("epsilon", epsilon, low=0)

    def _check(self, history):
        values = [r.metrics.get(self.metric) for r in history[-(self.patience + 1):]]
        known = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if len(known) < len(values) or len(values) < self.patience + 1:
            return self._decide(False, f"needs {self.metric} of {self.patience + 1} rounds in a row, "
                                       f"has {len(known)}")
        spread = max(abs(v - known[-1]) for v in known)
        stop = spread <= self.epsilon
        sign = "≤" if stop else ">"
        return self._decide(stop, f"{self.metric} moved {spread:.4g} {sign} {self.epsilon:g} over the last "
                                  f"{self.patience} rounds (now {known[-1]:.4f})", spread)


# --------------------------------------------------------------------------- small-text's criteria


def cohen_kappa(a, b, n_classes: int | None = None) -> float:
    """Cohen's kappa between two label vectors ``a``, ``b`` [S] (ints in [0, C)); 1.0 when they
    are identical (also when both hold a single class, where the textbook formula is 0/0)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"kappa needs two label vectors of one length >= 1, got {a.shape} and {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    c = int(n_classes or max(a.max(), b.max()) + 1)
    n = len(a)
    observed = float(np.mean(a == b))
    expected = float(np.dot(np.bincount(a, minlength=c), np.bincount(b, minlength=c))) / (n * n)
    return (observed - expected) / (1.0 - expected)


def delta_f(old, new, positive: int = 1) -> float:
    """Altschuler & Bloodgood's ΔF between two rounds' predictions ``old``, ``new`` [S]:
    ``1 − 2a / (2a + b + c)`` for class ``positive`` (0 when neither predicts it)."""
    old, new = np.asarray(old) == positive, np.asarray(new) == positive
    both = int(np.sum(old & new))
    differ = int(np.sum(old ^ new))
    return 0.0 if both + differ == 0 else 1.0 - 2.0 * both / (2.0 * both + differ)


class _StopSetCriterion(StoppingCriterion):
    """Reads the stop-set predictions of the current round (and, with ``pairs``, of the ones before)."""

    needs_stop_set = True

    def _pairs(self, history: list[RoundRecord], pairs: int):
        """The last ``pairs`` (earlier, later) stop-set prediction pairs of consecutive rounds, or
        a "not yet" decision when fewer rounds in a row have stop-set predictions."""
        if history[-1].stop_predictions is None:
            raise ValueError(f"{self.name}: round {history[-1].round} has no stop-set predictions")
        run = []
        for record in reversed(history):
            if record.stop_predictions is None or len(run) == pairs + 1:
                break
            run.append(record)
        run.reverse()
        if len(run) < pairs + 1:
            return None, self._decide(False, f"needs stop-set predictions of {pairs + 1} rounds in a row, has {len(run)}")
        for before, after in zip(run, run[1:]):
            same = (before.stop_ids is None or after.stop_ids is None
                    or np.array_equal(np.asarray(before.stop_ids), np.asarray(after.stop_ids)))
            if not same or len(before.stop_predictions) != len(after.stop_predictions):
                raise ValueError(f"{self.name}: the stop set of round {after.round} differs from round "
                                 f"{before.round}'s (a stop set must hold the same ids every round)")
        return [(x.stop_predictions, y.stop_predictions) for x, y in zip(run, run[1:])], None


class KappaAverage(_StopSetCriterion):
    """Stop when the mean Cohen's kappa of the last ``window`` consecutive stop-set prediction
    pairs is >= ``threshold`` (Bloodgood & Vijay-Shanker 2009)."""

    name = "kappa_average"

    def __init__(self, threshold: float = 0.99, window: int = 3) -> None:
        self.threshold = _number("threshold", threshold, low=-1, high=1)
        self.window = _number("window", window, low=1, integer=True)

    def _check(self, history):
        pairs, not_yet = self._pairs(history, self.window)
        if not_yet:
            return not_yet
        mean = float(np.mean([cohen_kappa(a, b) for a, b in pairs]))
        sign = "≥" if mean >= self.threshold else "<"
        return self._decide(mean >= self.threshold, f"mean kappa {mean:.3f} {sign} {self.threshold:g} over the "
                                                     f"last {self.window} rounds", mean)


class DeltaF(_StopSetCriterion):
    """Stop when ΔF (:func:`delta_f`) of each of the last ``window`` consecutive stop-set
    prediction pairs is < ``threshold`` (Altschuler & Bloodgood 2019)."""

    name = "delta_f"

    def __init__(self, threshold: float = 0.05, window: int = 3, positive: int = 1) -> None:
        self.threshold = _number("threshold", threshold, low=0, high=1)
        self.window = _number("window", window, low=1, integer=True)
        self.positive = _number("positive", positive, low=0, integer=True)

    def _check(self, history):
        pairs, not_yet = self._pairs(history, self.window)
        if not_yet:
            return not_yet
        worst = max(delta_f(a, b, self.positive) for a, b in pairs)
        stop = worst < self.threshold
        sign = "<" if stop else "≥"
        return self._decide(stop, f"largest ΔF {worst:.4f} {sign} {self.threshold:g} over the last "
                                  f"{self.window} rounds (class {self.positive})", worst)


class OverallUncertainty(_StopSetCriterion):
    """Stop when the mean normalised entropy ``H(p̄) / log C`` of the stop set's predictive
    distributions is < ``threshold`` (Zhu, Wang & Hovy 2008)."""

    name = "overall_uncertainty"

    def __init__(self, threshold: float = 0.05) -> None:
        self.threshold = _number("threshold", threshold, low=0, high=1)

    def _check(self, history):
        probs = history[-1].stop_probs
        if probs is None:
            raise ValueError(f"{self.name}: round {history[-1].round} has no stop-set distributions (stop_probs)")
        mean = float(np.mean(normalised_entropy(probs)))
        sign = "<" if mean < self.threshold else "≥"
        return self._decide(mean < self.threshold, f"mean normalised entropy of the stop set {mean:.4f} {sign} "
                                                    f"{self.threshold:g}", mean)


def normalised_entropy(probs) -> np.ndarray:
    """``H(p) / log C`` of each row of ``probs`` [S, C] (C >= 2), in [0, 1]; 0 log 0 = 0."""
    p = np.asarray(probs, dtype=np.float64)
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=1) / math.log(p.shape[1])


class ClassificationChange(_StopSetCriterion):
    """Stop when at most a fraction ``threshold`` of the stop set changed predicted class since
    the previous round (Zhu, Wang & Hovy 2008; 0: none changed)."""

    name = "classification_change"

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = _number("threshold", threshold, low=0, high=1)

    def _check(self, history):
        pairs, not_yet = self._pairs(history, 1)
        if not_yet:
            return not_yet
        (before, after), = pairs
        changed = int(np.sum(before != after))
        stop = changed <= self.threshold * len(after)
        sign = "≤" if stop else ">"
        return self._decide(stop, f"{changed} of {len(after)} stop-set predictions changed class since round "
                                  f"{history[-2].round} ({changed / len(after):.1%} {sign} {self.threshold:.1%})",
                            changed / len(after))


# --------------------------------------------------------------------------- registry and config

CRITERIA: dict[str, type[StoppingCriterion]] = {c.name: c for c in (
    LabelBudget, LowUncertainty, MetricPlateau, KappaAverage, DeltaF, OverallUncertainty, ClassificationChange)}


def available_criteria() -> list[str]:
    return sorted(CRITERIA)


def get_criterion(name: str | StoppingCriterion, **options) -> StoppingCriterion:
    """The criterion ``name`` (:func:`available_criteria`) with ``options``; a criterion object is returned as is.

    Raises ConfigError (``key`` = the option) for an unknown name, option or bad value.
    """
    if isinstance(name, StoppingCriterion):
        return name
    if name not in CRITERIA:
        raise ConfigError("name", f"must be one of {available_criteria()}, got {name!r}")
    cls = CRITERIA[name]
    params = {p: v for p, v in inspect.signature(cls.__init__).parameters.items() if p != "self"}
    for option in options:
        if option not in params:
            raise ConfigError(option, f"is not an option of {name!r} (known: {', '.join(params) or 'none'})")
    for option, p in params.items():
        if p.default is inspect.Parameter.empty and option not in options:
            raise ConfigError(option, f"is required by {name!r}")
    return cls(**options)


def criteria_from_config(entries, key: str = "stopping") -> list[StoppingCriterion]:
    """Criteria from a config list ``[{name: kappa_average, threshold: 0.99}, "label_budget"?, ...]``
    (each a mapping with ``name`` and options, or a criterion object).

    Raises ConfigError whose ``key`` names the entry and field, e.g. ``stopping[1].threshold``.
    """
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(key, f"must be a list of criteria ({{name: ..., <option>: ...}}), got {entries!r}")
    criteria = []
    for i, entry in enumerate(entries):
        if isinstance(entry, StoppingCriterion):
            criteria.append(entry)
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{key}[{i}].name", f"must name a criterion (one of {available_criteria()}), "
                                                  f"got {entry!r}")
        try:
            criteria.append(get_criterion(entry["name"], **{k: v for k, v in entry.items() if k != "name"}))
        except ConfigError as err:
            raise ConfigError(f"{key}[{i}].{err.key}", err.reason) from None
    return criteria


def check_criteria(criteria: Sequence[StoppingCriterion], history: Sequence[RoundRecord]) -> list[StopDecision]:
    """Each criterion's decision for the last round of ``history``, in the order given."""
    return [criterion.check(history) for criterion in criteria]


def fired(decisions: Sequence[StopDecision]) -> list[StopDecision]:
    """The decisions that say stop (any one stops the loop)."""
    return [d for d in decisions if d.stop]


def summary(decisions: Sequence[StopDecision]) -> list[str]:
    """One line per decision, those that fired first: ``stopping: <message>``."""
    return [f"stopping: {d.message}" for d in sorted(decisions, key=lambda d: not d.stop)]
