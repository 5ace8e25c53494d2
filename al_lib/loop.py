"""Active learning simulated with an oracle: the experiment of Gal et al. 2017 and the BaaL study."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from al_lib.acquisition import acquire
from al_lib.bayesian import mc_aware_modules, patch_module
from al_lib.bayesian.dropout import MCDropout
from al_lib.calibration import CALIBRATION_METHODS, calibrate_fitted
from al_lib.data import ActiveLearningDataset
from al_lib.device import resolve_device
from al_lib.heuristics import predictive_distribution
from al_lib.inference import iter_predict_mc, predict_mc
from al_lib.metrics import evaluate
from al_lib.sampling import subsample_indices
from al_lib.seeding import check_random_state, draw_seed
from al_lib.stopping import RoundRecord, check_criteria, criteria_from_config, fired
from al_lib.strategies import Strategy, get_strategy
from al_lib.training import ACTIVE_LEARNING_TRAINING, fit_members, fit_summary, snapshot_state

logger = logging.getLogger(__name__)


class NoisyOracle:
    """Answers label queries from known targets, flipping a fraction ``noise`` to a wrong class.

    The flipped answer is drawn uniformly among the C − 1 wrong classes (the seed study's λ).

    Parameters
    ----------
    targets : array-like of int, shape [N]
        True class of each dataset position.
    n_classes : int
    noise : float in [0, 1]
    seed : int, Generator or None
    """

    def __init__(self, targets, n_classes: int, *, noise: float = 0.0, seed=None) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"label noise must be in [0, 1], got {noise}")
        if n_classes < 2 and noise > 0:
            raise ValueError("label noise needs at least 2 classes")
        self.targets = np.asarray(targets, dtype=np.int64)
        self.n_classes = int(n_classes)
        self.noise = float(noise)
        self.rng = check_random_state(seed)
        self.n_flipped = 0

    def __call__(self, positions) -> np.ndarray:
        """Labels for dataset ``positions`` [k] → int64 array [k]."""
        truth = self.targets[np.asarray(positions, dtype=np.int64)]
        flip = self.rng.random(len(truth)) < self.noise
        # Adding 1..C-1 modulo C moves to a uniformly chosen wrong class.
        shift = self.rng.integers(1, max(self.n_classes, 2), size=len(truth))
        answers = np.where(flip, (truth + shift) % self.n_classes, truth)
        self.n_flipped += int(flip.sum())
        return answers


def simulate(
    dataset: Dataset,
    model_factory: Callable[[], nn.Module],
    *,
    test_set: Dataset,
    val_set: Dataset | None = None,
    strategy: str | Strategy = "bald",
    initial_labels: int = 20,
    initial_ids=None,
    query_size: int = 10,
    rounds: int = 10,
    iterations: int = 20,
    pool_subsample: int | float | None = None,
    label_noise: float = 0.0,
    n_classes: int | None = None,
    fit_kwargs: dict | None = None,
    reset_weights: bool = True,
    calibration: str = "none",
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    stopping: Sequence | None = None,
    stop_set_size: int = 1000,
    checkpoint: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Run an active-learning experiment with an oracle that knows ``dataset``'s targets.

    Round r: train (from the initial weights when ``reset_weights``, Gal et al. 2017) on the
    labels so far → evaluate on ``test_set`` with MC-averaged predictions → subsample the pool →
    score it with ``strategy`` → the oracle labels its ``query_size`` picks. The last round only
    trains and evaluates.

    Parameters
    ----------
    dataset : Dataset
        Items ``(x, y)``; the pool and the oracle's ground truth (``targets`` attribute or item[1]).
    model_factory : callable
        Returns a fresh model (logits). Called once; models without MC layers are patched
        (consistent masks for BatchBALD). An :class:`~al_lib.bayesian.Ensemble` (``iterations``
        = its size) trains each member on its own every round (:func:`~al_lib.training.fit_members`).
    test_set : Dataset
        Items ``(x, y)`` for the metrics of each round.
    val_set : Dataset, optional
        Items ``(x, y)``: a labelled validation set outside the pool, handed to every round's
        :func:`~al_lib.training.fit` for early stopping (not counted in the label budget, as in
        the BatchBALD paper's protocol). None: ``fit`` holds out its ``val_fraction`` of the labels
        (or trains a fixed number of epochs, see ``fit_kwargs``).
    strategy : str or Strategy
        A name of :func:`al_lib.strategies.available_strategies` or a
        :class:`~al_lib.strategies.Strategy` (e.g. ``get_strategy("power_bald", temperature=0.5)``);
        queries are chosen by :func:`al_lib.acquisition.acquire`, as the pipeline chooses them.
    initial_labels : int
        B, labelled uniformly at random before round 0.
    initial_ids : array-like of dataset positions, optional
        Label exactly these before round 0 instead of drawing ``initial_labels`` (a reference
        arm that starts where another run started, e.g. a workspace's first labels).
    pool_subsample : int, float or None
        Score only this many (int) or this fraction (float) of the pool, drawn afresh each round.
    label_noise : float
        λ, fraction of oracle answers flipped to a wrong class.
    calibration : {"none", "temperature", "dirichlet"}
        Fit this calibrator (:mod:`al_lib.calibration`) after each round's training on the
        validation split ``fit`` used, then evaluate and acquire with the calibrated model (rows
        gain ``ece_uncalibrated``, ``nll_uncalibrated`` and, for temperature scaling,
        ``temperature``). No extra draw from the run's generator: the other seeds stay as without.
    fit_kwargs : dict, optional
        Passed to :func:`al_lib.training.fit` (its own defaults for keys not given). None: the
        recommended protocol for few labels, :data:`al_lib.training.ACTIVE_LEARNING_TRAINING`.
    stopping : list, optional
        Stopping criteria (:mod:`al_lib.stopping`): criterion objects or config mappings
        ``{"name": "kappa_average", "threshold": 0.99}``, checked at the end of each round after
        scoring, before the oracle answers: when one fires the simulation stops there (that
        round's picks stay unlabelled). Up to that round the rows equal a run without
        ``stopping`` (the stop set and its MC passes draw from a stream of their own).
    stop_set_size : int
        The stop set of the stop-set criteria: this many pool samples unlabelled before round 0,
        the same every round, predicted with the same MC seed every round. ``low_uncertainty``
        scores the round's candidate subsample in an MC pass of its own.
    checkpoint : path, optional
        A JSON file written atomically after every round with what the next round needs (the
        rows so far, the labels, the generator's state): a run that finds it continues after its
        last round instead of starting over, with the same draws as an uninterrupted run (its
        floats equal up to the noise of CPU training across processes). A file written by a run
        with other settings is refused (ValueError naming it). Not with ``stopping`` or
        ``reset_weights=False`` (their state is not saved). Left in place when the run ends.

    Returns
    -------
    DataFrame
        One row per round: round, n_labelled, n_noisy_labels, accuracy, nll, ece, macro_f1,
        per_class_f1 (list of C floats),
        epochs, seconds_train, seconds_eval, seconds_score, queried_ids (list); with ``stopping``,
        also ``stop`` (bool) and ``stopping`` (each criterion's message); ``attrs["stopped_at"]``:
        the round that stopped, or None.
        ``attrs["initial_ids"]``: the ids labelled before round 0 (the same for every strategy
        run with the same ``seed``: they are the first draw). ``attrs["resumed_rounds"]``: how
        many rows came from ``checkpoint`` (0 without one).
    """
    device = resolve_device(device)
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {list(CALIBRATION_METHODS)}, got {calibration!r}")
    if checkpoint is not None and (stopping or not reset_weights):
        raise ValueError("checkpoint cannot resume a run with stopping criteria or reset_weights=False")
    rng = check_random_state(seed)
    targets = _targets(dataset)
    n_classes = int(n_classes or targets.max() + 1)
    # ProbCover by name: its automatic δ clusters into the number of classes (Yehuda et al.).
    strategy = get_strategy(strategy, **({"n_clusters": n_classes} if strategy == "probcover" else {}))
    test_targets = _targets(test_set)
    oracle = NoisyOracle(targets, n_classes, noise=label_noise, seed=rng)
    state = ActiveLearningDataset(dataset, classes=n_classes)
    model = _mc_model(model_factory(), consistent=strategy.needs_consistent_samples)
    initial = snapshot_state(model)
    fit_kwargs = {"progress": False, **(ACTIVE_LEARNING_TRAINING if fit_kwargs is None else fit_kwargs)}

    first = (np.asarray(initial_ids, dtype=np.int64) if initial_ids is not None
             else rng.choice(state.pool_ids, size=initial_labels, replace=False))
    state.label(first, oracle(first), round=0, source="oracle")
    run = _RunCheckpoint(checkpoint, {
        "strategy": strategy.name, "initial_labels": initial_labels, "initial_ids": first.tolist(),
        "query_size": query_size, "rounds": rounds, "iterations": iterations, "pool_subsample": pool_subsample,
        "label_noise": label_noise, "n_classes": n_classes, "fit_kwargs": fit_kwargs, "calibration": calibration,
        "batch_size": batch_size, "seed": seed, "n_pool": len(dataset), "n_test": len(test_set),
        "val_set": None if val_set is None else len(val_set)})
    rows = run.resume(rng, oracle, state)
    criteria = criteria_from_config(stopping)
    stop_rng = check_random_state(seed).spawn(1)[0]  # not `rng`: stopping leaves the run's draws alone
    stop_history: list[RoundRecord] = []
    stop_set = stop_mc_seed = None
    if any(c.needs_stop_set for c in criteria):
        stop_set = Subset(dataset, state.pool_ids[subsample_indices(state.n_pool, stop_set_size, stop_rng)])
        stop_mc_seed = draw_seed(stop_rng)
    resumed = len(rows)
    stopped_at = None
    for r in tqdm(range(resumed, rounds), desc=f"simulate {strategy.name}", disable=not progress,
                  initial=resumed, total=rounds):
        row = {"round": r, "n_labelled": state.n_labelled, "n_noisy_labels": oracle.n_flipped}
        t0 = time.perf_counter()
        fit_seed = int(rng.integers(2**31))
        results = fit_members(model, state.labelled, val_set=val_set, initial_state=initial if reset_weights else None,
                              device=device, seed=fit_seed, **fit_kwargs)
        scorer = model
        if calibration != "none":
            calibrated = calibrate_fitted(model, state.labelled, calibration, fit_seed=fit_seed, n_classes=n_classes,
                                          val_fraction=fit_kwargs.get("val_fraction"), val_set=val_set,
                                          targets_of=_targets, iterations=iterations, batch_size=batch_size,
                                          device=device, seed=fit_seed)
            scorer = calibrated.model
            row.update({k: v for k, v in calibrated.metrics().items() if k in ("temperature", "calibration_skipped")})
        t1 = time.perf_counter()
        probs = predict_mc(model, test_set, iterations=iterations, batch_size=batch_size, device=device,
                           seed=int(rng.integers(2**31)), progress=False)
        if scorer is not model:  # the same MC samples through the calibrator
            uncalibrated = evaluate(probs, test_targets)
            row.update(ece_uncalibrated=uncalibrated["ece"], nll_uncalibrated=uncalibrated["nll"])
            probs = scorer.calibrate_probs(probs)
        metrics = evaluate(probs, test_targets)
        t2 = time.perf_counter()
        row.update({k: metrics[k] for k in ("accuracy", "nll", "ece", "macro_f1", "per_class_f1")})
        row.update(epochs=fit_summary(results)["epochs"], seconds_train=t1 - t0, seconds_eval=t2 - t1)
        queried: list = []
        pool_scores = None
        if r < rounds - 1 and state.n_pool > 0:
            pool = state.pool
            candidates = subsample_indices(len(pool), pool_subsample, rng)
            k = min(query_size, len(candidates))
            picks, _ = acquire(scorer, Subset(pool, candidates), strategy, k, iterations=iterations,
                               batch_size=batch_size, device=device, seed=int(rng.integers(2**31)),
                               progress=False, labelled=state.labelled if strategy.needs_labelled else None)
            queried = pool.ids[candidates[picks]].tolist()
            if any(c.needs_pool_scores for c in criteria):
                pool_scores = _pool_scores(scorer, Subset(pool, candidates), strategy, iterations, batch_size, device,
                                           draw_seed(stop_rng))
        if criteria:
            decisions = _check_stopping(criteria, stop_history, row, metrics, scorer, stop_set, stop_mc_seed,
                                        pool_scores if queried else None, iterations, batch_size, device)
            row.update(stop=bool(fired(decisions)), stopping=[d.message for d in decisions])
        if queried and not row.get("stop"):
            state.label(queried, oracle(queried), round=r + 1, source="oracle")
        row.update(seconds_score=time.perf_counter() - t2, queried_ids=[] if row.get("stop") else queried)
        logger.info("%s round %d: %d labels, accuracy %.4f, nll %.4f", strategy.name, r,
                    row["n_labelled"], row["accuracy"], row["nll"])
        rows.append(row)
        run.save(rows, rng, oracle, state)
        if row.get("stop"):
            stopped_at = r
            logger.info("%s round %d: stopping — %s", strategy.name, r,
                        "; ".join(m for m in row["stopping"] if " fired — " in m))
            break
    frame = pd.DataFrame(rows)
    frame.attrs["initial_ids"] = first.tolist()
    frame.attrs["stopped_at"] = stopped_at
    frame.attrs["resumed_rounds"] = resumed
    return frame


class _RunCheckpoint:
    """The state a :func:`simulate` run needs to go on after a round, in one JSON file.

    ``settings`` identify the run: a file saved under other settings is refused, never resumed.
    Without a path every method does nothing.
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike | None, settings: dict) -> None:
        self.path = None if path is None else os.fspath(path)
        self.settings = None if path is None else self._plain(settings, "settings")

    def _plain(self, value, what: str):
        try:
            return json.loads(json.dumps(value, sort_keys=True, default=_json_default))
        except TypeError as err:  # e.g. a callable in fit_kwargs: such a run cannot be resumed
            raise ValueError(f"{self.path}: cannot checkpoint this run, its {what} are not plain data: {err}") from None

    def resume(self, rng: np.random.Generator, oracle: NoisyOracle, state: ActiveLearningDataset) -> list[dict]:
        """The rows of the saved rounds (empty without a file), the generator, oracle and labels
        set to where they stood after the last of them."""
        if self.path is None or not os.path.exists(self.path):
            return []
        try:
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("version") != self.VERSION:
                raise ValueError(f"checkpoint version {saved.get('version')!r}, expected {self.VERSION}")
            if saved["settings"] != self.settings:
                changed = sorted(k for k in set(saved["settings"]) | set(self.settings)
                                 if saved["settings"].get(k) != self.settings.get(k))
                raise ValueError(f"it was written by a run with other settings ({', '.join(changed)})")
            state.load_state_dict(saved["labels"])
            rng.bit_generator.state = saved["rng"]
            oracle.n_flipped = int(saved["n_flipped"])
            rows = list(saved["rows"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: cannot resume from this checkpoint: {err}") from None
        logger.info("resuming after round %d of %d from %s", len(rows) - 1, self.settings["rounds"], self.path)
        return rows

    def save(self, rows: list[dict], rng: np.random.Generator, oracle: NoisyOracle,
             state: ActiveLearningDataset) -> None:
        if self.path is None:
            return
        from al_lib.atomic import atomic_write_text

        saved = {"version": self.VERSION, "settings": self.settings, "rows": rows, "rng": rng.bit_generator.state,
                 "n_flipped": oracle.n_flipped, "labels": state.state_dict()}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        atomic_write_text(self.path, json.dumps(saved, default=_json_default) + "\n")


def _json_default(value):
    """numpy scalars and arrays as JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _check_stopping(criteria, history: list, row: dict, metrics: dict, model, stop_set, stop_mc_seed, pool_scores,
                    iterations: int, batch_size: int, device) -> list:
    """This round's :class:`~al_lib.stopping.RoundRecord` appended to ``history``; the criteria's decisions."""
    stop_probs = None
    if stop_set is not None:
        stop_probs = predictive_distribution(predict_mc(model, stop_set, iterations=iterations, batch_size=batch_size,
                                                        device=device, seed=stop_mc_seed, progress=False))
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    history.append(RoundRecord(row["round"], row["n_labelled"], scalars, pool_scores=pool_scores,
                               stop_ids=None if stop_set is None else np.asarray(stop_set.indices),
                               stop_probs=stop_probs))
    return check_criteria(criteria, history)


def _pool_scores(model, candidates: Dataset, strategy: Strategy, iterations: int, batch_size: int, device,
                 seed: int) -> np.ndarray:
    """The strategy's own score [n] of each candidate (NaN for a strategy that scores none)."""
    if not strategy.needs_probs:
        return np.full(len(candidates), np.nan)
    return np.concatenate([np.asarray(strategy.score_batch(b.float().cpu().numpy()), dtype=np.float64)
                           for b in iter_predict_mc(model, candidates, iterations=iterations, batch_size=batch_size,
                                                    device=device, seed=seed, progress=False)])


def simulate_with_baseline(
    dataset: Dataset,
    model_factory: Callable[[], nn.Module],
    *,
    strategy: str | Strategy = "bald",
    baseline: str | Strategy = "random",
    **kwargs,
) -> pd.DataFrame:
    """:func:`simulate` ``strategy`` and a reference arm acquiring with ``baseline`` (random
    acquisition by default) under the same conditions: the same ``seed`` (so the same initial
    labels and per-round training seeds), the same initial weights (``model_factory`` is called
    once and each arm starts from a copy), the same budget, pool subsample size and training.

    Parameters
    ----------
    dataset, model_factory, **kwargs
        As for :func:`simulate` (``test_set`` required).
    strategy, baseline : str or Strategy
        The arm under study and the reference arm; they must differ.

    Returns
    -------
    DataFrame
        Both arms' rows (those of :func:`simulate`), the studied arm first, with a ``strategy``
        column holding each arm's name: ready for
        ``plot_learning_curves(dict(tuple(frame.groupby("strategy"))), reference=baseline_name)``.
        ``attrs["initial_ids"]``: the initial labels both arms started from.
    """
    arms = [get_strategy(strategy), get_strategy(baseline)]
    if arms[0].name == arms[1].name:
        raise ValueError(f"the baseline must differ from the strategy studied, both are {arms[0].name!r}")
    model = model_factory()
    frames = [simulate(dataset, lambda: copy.deepcopy(model), strategy=arm, **kwargs).assign(strategy=arm.name)
              for arm in arms]
    if frames[0].attrs["initial_ids"] != frames[1].attrs["initial_ids"]:  # same seed: cannot differ
        raise RuntimeError("the two arms started from different initial labels")
    both = pd.concat(frames, ignore_index=True)
    both.attrs["initial_ids"] = frames[0].attrs["initial_ids"]
    return both


def _mc_model(model: nn.Module, *, consistent: bool) -> nn.Module:
    """Patch ``model`` for MC sampling unless it already samples (patched layers, ensembles)."""
    if any(isinstance(m, MCDropout) for m in model.modules()) or mc_aware_modules(model):
        return model
    return patch_module(model, consistent=consistent)


def _targets(dataset: Dataset) -> np.ndarray:
    """Ground-truth classes of a dataset of ``(x, y)`` items, as int64 [N]."""
    targets = getattr(dataset, "targets", None)
    if targets is None and isinstance(dataset, Subset):
        targets = np.asarray(_targets(dataset.dataset))[np.asarray(dataset.indices)]
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    return np.asarray(targets if not torch.is_tensor(targets) else targets.cpu(), dtype=np.int64)
