"""The seed's systematic study as data: experiments, their cells, and running one cell.

The BaaL paper ("Bayesian active learning for production: a systematic study and a reusable
library", Atighehchian et al. 2020) asks what breaks deep active learning on real data. Its
structure is kept here, scaled to MNIST with the Gal et al. (2017) CNN:

=================  ==========================================================  =====================
experiment         conditions (the seed's)                                     strategies
=================  ==========================================================  =====================
baseline           none: learning curves, accuracy and NLL vs labels (Fig. 1)  BALD, Entropy, Random
noise              λ ∈ {0, 0.05, 0.1} of oracle answers flipped (Table 1)      BALD, Entropy, Random
convergence        under-trained / converged / over-trained (Figs. 2, 4)       BALD, Random
query_size         Q ∈ {10, 20, 50, 100} to the same budget (Table 2)          BALD, Random
pool_size          a random 10/25/50/100 % of the pool scored (Fig. 5)         BALD
imbalance          Δ ∈ {0, 2, 5} classes kept at 25 % (Table 3, Figs. 3, 6)    BALD, Entropy, Random
label_efficiency   B=20, Q=10, T=20: labels to 90 % / 95 % (Gal et al. 2017)   BALD, BatchBALD,
                                                                               Entropy, Var-ratio,
                                                                               Random
=================  ==========================================================  =====================

Full scale (:func:`experiments` with ``quick=False``): 5 seeds; a 20 000-image MNIST pool and
the 10 000 test images; 20 random initial labels, 10 per query, 31 rounds (20 → 320 labels,
budgets reported at 120, 220, 320); label efficiency runs 80 rounds (20 → 810 labels); T = 20
MC samples; 2 000 pool images scored per round (Gal et al.); weights reset each round and trained
with al_lib's protocol for few labels, :data:`al_lib.training.ACTIVE_LEARNING_TRAINING`
(fixed-length epochs of at least ``min_samples_per_epoch`` samples; see its comment): 20
epochs for every cell but the convergence experiment's under-trained (2 epochs) and over-trained
(60) regimes, 1/10 and 3 times the converged model's gradient steps at every number of labels.
Quick scale (``quick=True``): 1 seed, an 800-image pool and 200 test images, 20 → 50 labels,
T = 4, ≤ 20 full-batch epochs, 150 images scored: seconds per cell, to check the machinery, not the science.

A :class:`Cell` is one (experiment, condition, strategy, seed); :func:`run_cell` runs it with
:func:`al_lib.loop.simulate` on a :class:`StudySource` and returns a JSON-ready record. Nothing here
imports an orchestrator: flows/study.py runs cells as Prefect tasks and stores each record.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads on first use: `al --help` must stay fast
    import torch
    from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "EXPERIMENTS", "Cell", "Experiment", "Progress", "StudySource", "cells", "experiments", "load_source",
    "partial_path", "progress", "read_records", "record_path", "run_cell", "twin_record", "write_record",
]

#: Experiment names, in the order ``al study all`` runs (and the report shows) them.
EXPERIMENTS = ("baseline", "noise", "convergence", "query_size", "pool_size", "imbalance", "label_efficiency")
#: Version of the cell record; part of every cell's key, so a format change never mixes records.
RECORD_VERSION = 1
#: The model of the built-in sources (Gal et al. 2017's CNN, consistent MC dropout).
GAL_CNN = "gal_cnn"


@dataclass(frozen=True)
class Scale:
    """The budgets of one scale of the study (see the module docstring)."""

    seeds: int
    pool_limit: int | None
    test_limit: int | None
    initial_labels: int
    query_size: int
    rounds: int
    efficiency_rounds: int
    iterations: int
    pool_subsample: int
    fit: dict | None  # None: al_lib.training.ACTIVE_LEARNING_TRAINING (resolved on use: torch loads with it)
    query_sizes: tuple[int, ...]
    imbalance: tuple[int, ...]
    under_epochs: int  # the convergence experiment's regimes: epochs of the scale's protocol
    over_epochs: int  # (converged: its own epochs), no early stopping


FULL = Scale(seeds=5, pool_limit=20_000, test_limit=None, initial_labels=20, query_size=10, rounds=31,
             efficiency_rounds=80, iterations=20, pool_subsample=2000, fit=None,
             query_sizes=(10, 20, 50, 100), imbalance=(0, 2, 5), under_epochs=2, over_epochs=60)
QUICK = Scale(seeds=1, pool_limit=800, test_limit=200, initial_labels=20, query_size=10, rounds=4,
              efficiency_rounds=4, iterations=4, pool_subsample=150,
              fit={"max_epochs": 20, "patience": 4, "val_fraction": 0.2, "batch_size": 64, "lr": 5e-3,
                   "weight_decay": 1e-4},
              query_sizes=(10, 15, 30), imbalance=(0, 3), under_epochs=2, over_epochs=40)


@dataclass(frozen=True)
class Experiment:
    """One experiment of the study.

    Attributes
    ----------
    name : str, one of :data:`EXPERIMENTS`.
    title : str, what it measures and which figure/table of the seed it mirrors.
    conditions : dict of str → dict
        Condition name → the :func:`al_lib.loop.simulate` settings it changes (plus the study's own
        ``minority_classes`` for imbalance and ``pool_fraction`` for pool size).
    strategies : tuple of str, strategy names (:func:`al_lib.strategies.get_strategy`).
    seeds : tuple of int
    budgets : tuple of int, label counts the tables report at.
    settings : dict, the settings shared by every condition.
    """

    name: str
    title: str
    conditions: dict
    strategies: tuple
    seeds: tuple
    budgets: tuple
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One run: (experiment, condition, strategy, seed) with its full settings.

    ``config()`` is everything that determines the result; ``key()`` names the cell's file.
    """

    experiment: str
    condition: str
    strategy: str
    seed: int
    dataset: str
    quick: bool
    settings: Mapping

    def config(self) -> dict:
        """JSON-ready: experiment, condition, strategy, seed, dataset, quick, settings, version."""
        return {"experiment": self.experiment, "condition": self.condition, "strategy": self.strategy,
                "seed": self.seed, "dataset": self.dataset, "quick": self.quick,
                "settings": json.loads(json.dumps(dict(self.settings), sort_keys=True)),
                "version": RECORD_VERSION}

    def run_hash(self) -> str:
        """12 hex digits of everything that determines the result (strategy, seed, dataset, scale,
        settings, record version) — not the experiment's or condition's name, so the same run
        under two experiments (the baseline and noise λ = 0) has the same hash and is computed once."""
        run = {k: v for k, v in self.config().items() if k not in ("experiment", "condition")}
        return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:12]

    def key(self) -> str:
        """``<experiment>.<condition>.<strategy>.s<seed>.<run hash>``: readable, and stable for a
        config (changed settings give a new key, never a stale hit)."""
        slug = re.sub(r"[^A-Za-z0-9_=-]+", "-", self.condition).strip("-") or "none"
        return f"{self.experiment}.{slug}.{self.strategy}.s{self.seed}.{self.run_hash()}"


def experiments(*, quick: bool = False, seeds: int | None = None) -> dict[str, Experiment]:
    """The study's experiments at full or quick scale (see the module docstring).

    Parameters
    ----------
    quick : bool, the quick scale (1 seed, tiny budgets).
    seeds : int, optional, overrides the scale's number of seeds (seeds are 0 .. seeds-1).

    Returns
    -------
    dict name → :class:`Experiment`, in :data:`EXPERIMENTS` order.
    """
    s = QUICK if quick else FULL
    fit = _training(s)
    n_seeds = s.seeds if seeds is None else int(seeds)
    if n_seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds!r}")
    seed_list = tuple(range(n_seeds))
    base = {"initial_labels": s.initial_labels, "query_size": s.query_size, "rounds": s.rounds,
            "iterations": s.iterations, "pool_subsample": s.pool_subsample, "fit_kwargs": dict(fit),
            "pool_limit": s.pool_limit, "test_limit": s.test_limit,
            # the defaults the conditions vary, explicit, so that equal runs have equal settings
            "label_noise": 0.0, "minority_classes": 0, "minority_fraction": 0.25, "pool_fraction": None}
    last = s.initial_labels + s.query_size * (s.rounds - 1)
    budgets = tuple(sorted({s.initial_labels + s.query_size * ((s.rounds - 1) * i // 3) for i in (1, 2, 3)}))
    three = ("bald", "entropy", "random")
    two = ("bald", "random")
    labels_span = last - s.initial_labels
    query = {f"Q={q}": {"query_size": q, "rounds": labels_span // q + 1} for q in s.query_sizes}
    out = [
        Experiment("baseline", "Learning curves: accuracy and NLL vs labels, mean ± std over seeds (seed Fig. 1)",
                   {"standard": {}}, three, seed_list, budgets, base),
        Experiment("noise", "Label noise: λ of the oracle's answers flipped to a wrong class; test NLL (seed Table 1)",
                   {f"lambda={v}": {"label_noise": v} for v in (0.0, 0.05, 0.1)}, three, seed_list, budgets, base),
        Experiment("convergence", "Training regime: active gain NLL(Random) − NLL(BALD) per budget (seed Figs. 2, 4)",
                   {"under-trained": {"fit_kwargs": {**fit, **_regime(s.under_epochs)}},
                    "converged": {},
                    "over-trained": {"fit_kwargs": {**fit, **_regime(s.over_epochs)}}},
                   two, seed_list, budgets, base),
        Experiment("query_size", "Query size Q to the same label budgets: test NLL (seed Table 2)",
                   query, two, seed_list, budgets, base),
        Experiment("pool_size", "Scoring a random fraction of the pool: accuracy, scoring time, speed-up (seed Fig. 5)",
                   {f"pool={int(f * 100)}%": {"pool_fraction": f} for f in (0.1, 0.25, 0.5, 1.0)},
                   ("bald",), seed_list, budgets, base),
        Experiment("imbalance", "Δ classes reduced to 25 % of their samples: NLL and F1 of the reduced classes "
                                "(seed Table 3, Figs. 3, 6)",
                   {f"delta={d}": {"minority_classes": d, "minority_fraction": 0.25} for d in s.imbalance},
                   three, seed_list, budgets, base),
        Experiment("label_efficiency", "Labels needed to reach 90 % and 95 % test accuracy (Gal et al. 2017; "
                                       "BatchBALD, Kirsch et al. 2019)",
                   {"B=20,Q=10": {"rounds": s.efficiency_rounds}},
                   ("bald", "batch_bald", "entropy", "variation_ratio", "random"), seed_list,
                   tuple(sorted({s.initial_labels + s.query_size * ((s.efficiency_rounds - 1) * i // 4)
                                 for i in (1, 2, 4)})), base),
    ]
    return {e.name: e for e in out}


def _training(scale: Scale) -> dict:
    """The ``fit`` options of a scale: its own, or al_lib's protocol for few labels."""
    if scale.fit is not None:
        return dict(scale.fit)
    from al_lib.training import ACTIVE_LEARNING_TRAINING

    return dict(ACTIVE_LEARNING_TRAINING)


def _regime(epochs: int) -> dict:
    """``fit`` options of the convergence experiment's fixed regimes: ``epochs`` epochs of the
    scale's protocol, no early stopping. At full scale the protocol's epochs have a fixed length
    (at least 1 024 samples), so 2 and 60 epochs are 1/10 and 3 times the converged model's
    gradient steps at every number of labels; plain passes over 20-320 labels would not be
    (150 passes over 120 labels are as many steps as the converged model takes)."""
    return {"max_epochs": epochs, "val_fraction": 0.0}


def cells(experiment: Experiment, *, dataset: str, quick: bool) -> list[Cell]:
    """Every (condition, strategy, seed) of ``experiment``, seeds outermost so that the first
    cells to finish already cover every condition and strategy."""
    return [Cell(experiment.name, condition, strategy, seed, dataset, quick,
                 _merge(experiment.settings, overrides))
            for seed in experiment.seeds
            for condition, overrides in experiment.conditions.items()
            for strategy in experiment.strategies]


def _merge(base: Mapping, overrides: Mapping) -> dict:
    merged = {**base, **overrides}
    if "fit_kwargs" in overrides:
        merged["fit_kwargs"] = {**base.get("fit_kwargs", {}), **overrides["fit_kwargs"]}
    return merged


# ---------------------------------------------------------------------- data


@dataclass
class StudySource:
    """The data and model of a study.

    Attributes
    ----------
    name : str, the dataset as the user named it.
    pool : Dataset of ``(x, y)``, with ``targets`` int64 [N]: the pool and the oracle's truth.
    test : Dataset of ``(x, y)``, with ``targets`` [M]: the metrics of each round.
    n_classes : int
    classes : list of str, class names in index order.
    model_factory : callable ``seed -> nn.Module`` (logits; MC-ready).
    fit_defaults : dict, training settings of the source (a workspace's params), overridden by the
        experiment's ``fit_kwargs``; empty for the built-in sources.
    """

    name: str
    pool: Dataset
    test: Dataset
    n_classes: int
    classes: list
    model_factory: Callable[[int], torch.nn.Module]
    fit_defaults: dict = field(default_factory=dict)


def _gal_cnn(input_shape: tuple[int, int, int]):
    """Gal et al.'s CNN with consistent MC dropout; 3 × 3 kernels below 16 pixels a side (8 × 8
    digits keep a 2 × 2 map instead of 1 × 1)."""
    from al_lib.models import ModelSpec

    small = min(input_shape[1:]) < 16
    return ModelSpec.from_config({"name": GAL_CNN, "input_shape": list(input_shape),
                                  **({"kernel_size": 3} if small else {})}, check_files=False)


def _holdout_split(targets: np.ndarray, fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (seeded) pool / test positions of a dataset without a test split: int64 [N - M], [M]."""
    from al_lib.seeding import check_random_state

    order = check_random_state(seed).permutation(len(targets))
    n_test = max(1, int(round(fraction * len(targets))))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _materialised(dataset: Dataset, positions: np.ndarray, targets: np.ndarray):
    """Decode ``dataset[positions]`` once into an in-memory ArrayDataset (the study reads every
    image many times)."""
    import torch

    from al_lib.data import ArrayDataset

    items = [dataset[int(i)] for i in positions]
    x = torch.stack([item[0] if isinstance(item, tuple) else item for item in items])
    return ArrayDataset(x, targets[positions])


@functools.lru_cache(maxsize=4)
def load_source(dataset: str) -> StudySource:
    """The study's data for ``dataset``: ``"mnist"``, ``"digits"``, a folder of images in class
    subfolders, or a manifest CSV ``id,path,label[,split]`` (paths relative to the CSV; its
    ``test`` split is the test set).

    MNIST: its 50 000 training images are the pool (each cell keeps the first ``pool_limit``) and
    its 10 000 test images the test set. Digits and user images without a test split: a fixed
    seeded 25 %. User images are decoded once (greyscale, stretched to
    28 × 28) and trained with the Gal et al. CNN. Cached per process (a Dask worker loads once).

    Workspaces are resolved by the caller (the pipeline knows their layout) and passed to
    :func:`run_cell` as a :class:`StudySource`.

    Raises
    ------
    FileNotFoundError, ValueError
        Unknown dataset name, a missing path, or images without labels.
    """
    from al_lib.data import ImageFolderDataset, ManifestDataset, load_digits, load_mnist

    if dataset == "mnist":
        pool, test = load_mnist("train"), load_mnist("test")
        spec = _gal_cnn((1, 28, 28))
        return StudySource("mnist", pool, test, 10, [str(c) for c in range(10)],
                           lambda seed: spec.build(10, seed=seed))
    if dataset == "digits":
        data = load_digits()
        pool_pos, test_pos = _holdout_split(data.targets)
        spec = _gal_cnn((1, 8, 8))
        return StudySource("digits", _subset(data, pool_pos), _subset(data, test_pos), 10,
                           [str(c) for c in range(10)], lambda seed: spec.build(10, seed=seed))
    path = Path(dataset)
    if not path.exists():
        raise FileNotFoundError(f"{dataset}: no such dataset: give mnist, digits, a workspace, a folder of images "
                                "in class subfolders or a manifest CSV id,path,label[,split]")
    spec = _gal_cnn((1, 28, 28))
    transform = spec.transforms.eval_transform()
    if path.is_dir():
        images = ImageFolderDataset(path, transform=transform, mode="L")
        held_out = None
    else:
        images = ManifestDataset(path, transform=transform, mode="L")
        held_out = None if images.splits is None else [str(v).strip().lower() == "test" for v in images.splits]
    if images.targets is None or images.classes is None:
        raise ValueError(f"{dataset}: the study needs labelled images (class subfolders or a label column)")
    return source_from_images(str(dataset), images, images.targets, images.classes, held_out,
                              lambda seed: spec.build(len(images.classes), seed=seed))


def source_from_images(name: str, images: Dataset, targets, classes, held_out, model_factory,
                       fit_defaults: dict | None = None) -> StudySource:
    """A :class:`StudySource` from labelled images (a workspace's, or a folder's).

    Parameters
    ----------
    images : Dataset of ``x`` or ``(x, y)`` items (decoded once here).
    targets : array-like of int, [N], class index per image; -1 = unlabelled (left out).
    classes : list of str, [C]
    held_out : array-like of bool, [N], or None. The labelled held-out images (a manifest's test
        split; a workspace's held-out splits) are the test set; without any, a fixed seeded 25 %
        of the labelled images.
    model_factory : callable ``seed -> nn.Module``
    fit_defaults : dict, optional, the source's own training settings.
    """
    targets = np.asarray(targets, dtype=np.int64)
    labelled = np.flatnonzero(targets >= 0)
    held = np.zeros(len(targets), bool) if held_out is None else np.asarray(held_out, dtype=bool)
    if held[labelled].any():
        pool_pos, test_pos = labelled[~held[labelled]], labelled[held[labelled]]
    else:
        inner_pool, inner_test = _holdout_split(targets[labelled])
        pool_pos, test_pos = labelled[inner_pool], labelled[inner_test]
    if len(pool_pos) < 2 or len(test_pos) < 1:
        raise ValueError(f"{name}: {len(labelled)} labelled images are too few for a study")
    return StudySource(name, _materialised(images, pool_pos, targets), _materialised(images, test_pos, targets),
                       len(classes), list(classes), model_factory, dict(fit_defaults or {}))


# ---------------------------------------------------------------------- one cell


def run_cell(cell: Cell, source: StudySource | None = None, *, device: str | torch.device | None = None,
             checkpoint: str | os.PathLike | None = None) -> dict:
    """Run ``cell`` with :func:`al_lib.loop.simulate` and return its record.

    The same seed gives the same initial labels, initial weights and training seeds for every
    strategy and condition of that seed, so arms differ only by what the experiment varies.

    Parameters
    ----------
    cell : Cell
    source : StudySource, optional, default ``load_source(cell.dataset)``.
    device : see :func:`al_lib.device.resolve_device` (CUDA when present).
    checkpoint : path, optional, :func:`al_lib.loop.simulate`'s: the cell saves its state after
        every round there and, killed, goes on from its last round (:func:`partial_path`).

    Returns
    -------
    dict, JSON-ready: ``key``, ``config`` (:meth:`Cell.config`), ``rows`` (one per round: round,
    n_labelled, accuracy, nll, ece, macro_f1, minority_f1 (mean F1 of the reduced classes, or
    None), n_noisy_labels, epochs, seconds_train, seconds_eval, seconds_score, n_scored; with a
    ``stopping`` setting, ``stop`` and ``stopping``: the rounds end where a criterion fired),
    ``minority_classes`` (list), ``pool_size``, ``seconds`` (the cell's wall time; for a resumed
    cell, this run's plus the rounds' own seconds before it), ``resumed_rounds`` and ``device``.
    """
    from al_lib.data.imbalance import make_imbalanced
    from al_lib.device import resolve_device
    from al_lib.loop import simulate

    source = source or load_source(cell.dataset)
    s = dict(cell.settings)
    device = resolve_device(device)
    pool, test = source.pool, source.test
    pool = _first(pool, s.get("pool_limit"))
    test = _first(test, s.get("test_limit"))
    minority: list[int] = []
    if s.get("minority_classes"):
        kept, classes = make_imbalanced(_targets_of(pool), minority_classes=int(s["minority_classes"]),
                                        fraction=float(s.get("minority_fraction", 0.25)), seed=cell.seed,
                                        return_classes=True)
        pool, minority = _subset(pool, kept), classes.tolist()
    subsample = s.get("pool_subsample")
    if s.get("pool_fraction") is not None:  # a fraction of the (remaining) pool, as in the seed
        subsample = float(s["pool_fraction"]) if float(s["pool_fraction"]) < 1.0 else None
    fit_kwargs = {**source.fit_defaults, **s.get("fit_kwargs", {})}
    start = time.perf_counter()
    frame = simulate(pool, lambda: source.model_factory(cell.seed), test_set=test, strategy=cell.strategy,
                     initial_labels=int(s["initial_labels"]), query_size=int(s["query_size"]),
                     rounds=int(s["rounds"]), iterations=int(s["iterations"]), pool_subsample=subsample,
                     label_noise=float(s.get("label_noise", 0.0)), n_classes=source.n_classes,
                     calibration=str(s.get("calibration", "none")),
                     fit_kwargs=fit_kwargs, seed=cell.seed, device=device, progress=False,
                     stopping=s.get("stopping"), stop_set_size=int(s.get("stop_set_size", 1000)),
                     checkpoint=None if s.get("stopping") else checkpoint)
    resumed = int(frame.attrs.get("resumed_rounds", 0))
    seconds = time.perf_counter() - start + float(
        frame.iloc[:resumed][["seconds_train", "seconds_eval", "seconds_score"]].to_numpy().sum())
    rows = []
    for record in frame.to_dict("records"):
        f1 = record.get("per_class_f1")
        n_pool = len(pool) - int(record["n_labelled"])
        rows.append({
            "round": int(record["round"]), "n_labelled": int(record["n_labelled"]),
            "accuracy": float(record["accuracy"]), "nll": float(record["nll"]), "ece": float(record["ece"]),
            "macro_f1": float(record["macro_f1"]),
            "minority_f1": float(np.mean([f1[c] for c in minority])) if minority and f1 is not None else None,
            "n_noisy_labels": int(record["n_noisy_labels"]), "epochs": int(record["epochs"]),
            "seconds_train": float(record["seconds_train"]), "seconds_eval": float(record["seconds_eval"]),
            "seconds_score": float(record["seconds_score"]),
            "n_scored": _n_scored(n_pool, subsample),
            # a cell with a ``calibration`` setting: the test metrics before it, and the temperature
            **{k: float(record[k]) for k in ("ece_uncalibrated", "nll_uncalibrated", "temperature") if k in record},
            # a cell with a ``stopping`` setting (al_lib.stopping criteria): the decisions of each round
            **({"stop": bool(record["stop"]), "stopping": list(record["stopping"])} if "stop" in record else {}),
        })
    return {"key": cell.key(), "config": cell.config(), "rows": rows, "minority_classes": minority,
            "pool_size": len(pool), "test_size": len(test), "seconds": seconds, "resumed_rounds": resumed,
            "device": str(device)}


def _n_scored(n_pool: int, subsample) -> int:
    if subsample is None:
        return n_pool
    if isinstance(subsample, float):
        return min(n_pool, int(np.ceil(subsample * n_pool)))
    return min(n_pool, int(subsample))


def _targets_of(dataset: Dataset) -> np.ndarray:
    from al_lib.loop import _targets

    return _targets(dataset)


def _subset(dataset: Dataset, positions):
    from torch.utils.data import Subset

    return Subset(dataset, [int(i) for i in positions])


def _first(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` items of ``dataset`` (all of it when ``limit`` is None or larger)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return _subset(dataset, range(int(limit)))


# ---------------------------------------------------------------------- records on disk


def write_record(folder: str | os.PathLike, record: dict) -> Path:
    """Write a cell's record to ``folder/<key>.json`` atomically; returns the path."""
    from al_lib.atomic import atomic_write_text

    path = Path(folder) / f"{record['key']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=True) + "\n")
    return path


def read_records(folder: str | os.PathLike) -> list[dict]:
    """Every cell record under ``folder`` (``*.json``), sorted by key; a file that is not a record
    raises ValueError naming it."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            record["config"]["experiment"], record["rows"]  # noqa: B018 — the fields every record has
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a study cell record ({err})") from None
        out.append(record)
    return out


def record_path(folder: str | os.PathLike, cell: Cell) -> Path:
    """Where ``cell``'s record lives: its existence means the cell is done."""
    return Path(folder) / f"{cell.key()}.json"


def partial_path(folder: str | os.PathLike, cell: Cell) -> Path:
    """Where ``cell`` keeps its state between rounds while it runs (``partial/`` beside the
    records, so :func:`read_records` never mistakes it for a finished cell)."""
    return Path(folder) / "partial" / f"{cell.key()}.json"


def twin_record(folder: str | os.PathLike, cell: Cell) -> dict | None:
    """The record of the same run stored under another experiment or condition (same
    :meth:`Cell.run_hash`), relabelled as ``cell``'s; None when there is none."""
    for path in sorted(Path(folder).glob(f"*.{cell.run_hash()}.json")):
        record = json.loads(path.read_text())
        return {**record, "key": cell.key(), "config": cell.config(), "reused_from": record["key"]}
    return None


def thousands(x: int) -> str:
    """``x`` with a space between thousands, as the study's texts write numbers: 5 835."""
    return f"{x:,}".replace(",", " ")


@dataclass(frozen=True)
class Progress:
    """How far a study is: its distinct runs (:meth:`Cell.run_hash`; a run shared by two
    experiments counts once) and their rounds, recorded, kept part-way in ``partial/``, or left."""

    runs: int
    runs_recorded: int
    runs_partial: int
    rounds: int
    rounds_recorded: int
    rounds_partial: int

    @property
    def rounds_left(self) -> int:
        return self.rounds - self.rounds_recorded - self.rounds_partial

    def describe(self, partial: bool = True) -> str:
        """One sentence: "981 of 5 835 rounds recorded (19 of 170 distinct runs), 26 more in 2 runs
        stopped part-way (kept in `partial/`); 4 828 rounds left."; ``partial=False``: without the
        rounds kept part-way (which change while a study runs), counted as left."""
        n = thousands
        kept = self.rounds_partial if partial else 0
        left = self.rounds_left + self.rounds_partial - kept
        if left == 0:
            return f"All {n(self.rounds)} rounds of the {n(self.runs)} distinct runs recorded."
        part = (f", {n(kept)} more in {self.runs_partial} run{'s' if self.runs_partial != 1 else ''} "
                "stopped part-way (kept in `partial/`)" if kept else "")
        return (f"{n(self.rounds_recorded)} of {n(self.rounds)} rounds recorded ({self.runs_recorded} of "
                f"{n(self.runs)} distinct runs){part}; {n(left)} rounds left.")


def progress(folder: str | os.PathLike, todo: Sequence[Cell]) -> Progress:
    """The :class:`Progress` of the cells ``todo`` (a study's, e.g. every experiment's) in the
    records folder ``folder``. A partial file that cannot be read counts as no round."""
    recorded = {p.stem.rsplit(".", 1)[-1] for p in Path(folder).glob("*.json")}
    kept = {}  # run hash -> rounds in its partial file (under any of its cells' keys)
    for path in Path(folder).glob("partial/*.json"):
        try:
            kept[path.stem.rsplit(".", 1)[-1]] = len(json.loads(path.read_text())["rows"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    rounds = {c.run_hash(): int(c.settings["rounds"]) for c in todo}
    done = [r for r in rounds if r in recorded]
    part = [r for r in rounds if r not in recorded and r in kept]
    return Progress(len(rounds), len(done), len(part), sum(rounds.values()), sum(rounds[r] for r in done),
                    sum(kept[r] for r in part))
