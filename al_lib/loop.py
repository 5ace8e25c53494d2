"""Active learning simulated with an oracle: the experiment of Gal et al. 2017 and the BaaL study."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from al_lib.acquisition import acquire
from al_lib.bayesian import mc_aware_modules, patch_module
from al_lib.bayesian.dropout import MCDropout
from al_lib.data import ActiveLearningDataset
from al_lib.device import resolve_device
from al_lib.inference import predict_mc
from al_lib.metrics import evaluate
from al_lib.sampling import subsample_indices
from al_lib.seeding import check_random_state
from al_lib.strategies import Strategy, get_strategy
from al_lib.training import fit, snapshot_state

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
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
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
        (consistent masks for BatchBALD).
    test_set : Dataset
        Items ``(x, y)`` for the metrics of each round.
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
    fit_kwargs : dict
        Passed to :func:`al_lib.training.fit`.

    Returns
    -------
    DataFrame
        One row per round: round, n_labelled, n_noisy_labels, accuracy, nll, ece, macro_f1,
        per_class_f1 (list of C floats),
        epochs, seconds_train, seconds_eval, seconds_score, queried_ids (list).
        ``attrs["initial_ids"]``: the ids labelled before round 0 (the same for every strategy
        run with the same ``seed``: they are the first draw).
    """
    device = resolve_device(device)
    strategy = get_strategy(strategy)
    rng = check_random_state(seed)
    targets = _targets(dataset)
    n_classes = int(n_classes or targets.max() + 1)
    test_targets = _targets(test_set)
    oracle = NoisyOracle(targets, n_classes, noise=label_noise, seed=rng)
    state = ActiveLearningDataset(dataset, classes=n_classes)
    model = _mc_model(model_factory(), consistent=strategy.needs_consistent_samples)
    initial = snapshot_state(model)
    fit_kwargs = {"progress": False, **(fit_kwargs or {})}

    first = (np.asarray(initial_ids, dtype=np.int64) if initial_ids is not None
             else rng.choice(state.pool_ids, size=initial_labels, replace=False))
    state.label(first, oracle(first), round=0, source="oracle")
    rows = []
    for r in tqdm(range(rounds), desc=f"simulate {strategy.name}", disable=not progress):
        row = {"round": r, "n_labelled": state.n_labelled, "n_noisy_labels": oracle.n_flipped}
        t0 = time.perf_counter()
        result = fit(model, state.labelled, initial_state=initial if reset_weights else None,
                     device=device, seed=int(rng.integers(2**31)), **fit_kwargs)
        t1 = time.perf_counter()
        probs = predict_mc(model, test_set, iterations=iterations, batch_size=batch_size, device=device,
                           seed=int(rng.integers(2**31)), progress=False)
        metrics = evaluate(probs, test_targets)
        t2 = time.perf_counter()
        row.update({k: metrics[k] for k in ("accuracy", "nll", "ece", "macro_f1", "per_class_f1")})
        row.update(epochs=result.epochs_run, seconds_train=t1 - t0, seconds_eval=t2 - t1)
        queried: list = []
        if r < rounds - 1 and state.n_pool > 0:
            pool = state.pool
            candidates = subsample_indices(len(pool), pool_subsample, rng)
            k = min(query_size, len(candidates))
            picks, _ = acquire(model, Subset(pool, candidates), strategy, k, iterations=iterations,
                               batch_size=batch_size, device=device, seed=int(rng.integers(2**31)),
                               progress=False, labelled=state.labelled if strategy.needs_labelled else None)
            queried = pool.ids[candidates[picks]].tolist()
            state.label(queried, oracle(queried), round=r + 1, source="oracle")
        row.update(seconds_score=time.perf_counter() - t2, queried_ids=queried)
        logger.info("%s round %d: %d labels, accuracy %.4f, nll %.4f", strategy.name, r,
                    row["n_labelled"], row["accuracy"], row["nll"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["initial_ids"] = first.tolist()
    return frame


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
