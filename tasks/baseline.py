"""The random-acquisition reference of a simulated workspace (``al simulate --baseline random``).

The workspace's own rounds choose their queries with the configured strategy; the reference arm
replays the same study with random acquisition: the same pool (the queryable images, answered by
the oracle's hidden labels), the same held-out test labels, the same first labels (those the
workspace trained on in round 0), the same model and initial weights, training parameters, query
size, pool subsample and seed, for as many rounds as ``metrics/rounds.csv`` holds. It runs in
process through :func:`al_lib.loop.simulate` (no round, commit or tag of its own) and writes
``metrics/baseline-random.csv`` and ``metrics/learning_curve_vs_random.png`` (both arms).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from al_lib.atomic import atomic_write_text
from al_lib.loop import simulate
from al_lib.plotting import plot_learning_curves
from tasks import git_repo
from tasks.datasets import load_workspace_data
from tasks.oracle import oracle_truth
from tasks.train import build_workspace_model
from tasks.workspace import ROUNDS_METRICS, Workspace

logger = logging.getLogger(__name__)

#: Reference arms ``al simulate --baseline`` can run.
BASELINES = ("random",)


class _WithTargets(Dataset):
    """Items ``(x, y)`` of ``images`` at ``positions`` with the oracle's class ``targets`` [n]."""

    def __init__(self, images, positions, targets) -> None:
        self.images, self.positions = images, list(positions)
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        return self.images[self.positions[i]], int(self.targets[i])


def check_baseline(ws: Workspace, baseline: str) -> None:
    """The preconditions of a reference arm (before anything runs): a known baseline, the oracle's
    labels, and held-out test labels to measure both arms on. ValueError naming what is missing."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}: one of {', '.join(BASELINES)}")
    oracle_truth(ws)
    if not set(ws.labels()["id"]) & ws.held_out_ids():
        raise ValueError(f"{ws.root}: a baseline is measured on held-out test labels and this workspace has "
                         "none (create it with `al init --holdout N`)")


def run_baseline(ws: Workspace, baseline: str = "random", *, device=None, progress: bool = False) -> dict:
    """Run the reference arm over the workspace's rounds so far; write its CSV and the plot of both
    arms, and commit them. Returns ``{"baseline", "rounds", "csv", "plot", "rows"}`` (paths relative
    to the workspace, ``rows``: the arm's metrics per round as records)."""
    check_baseline(ws, baseline)
    params = ws.params()
    rounds = pd.read_csv(ws.path(ROUNDS_METRICS))
    data = load_workspace_data(ws, ws.inputs())
    truth = oracle_truth(ws)
    ids = data.state.ids
    keep = [i for i, sid in enumerate(ids) if sid not in data.held_out and sid in truth.index]
    pool = _WithTargets(data.state.dataset, keep, [params.classes.index(str(truth[ids[i]])) for i in keep])
    labels = ws.labels()
    first = set(labels.loc[(labels["round"].astype(int) == 0) & ~labels["id"].isin(data.held_out), "id"])
    start = [n for n, i in enumerate(keep) if ids[i] in first]
    frame = simulate(pool, lambda: build_workspace_model(ws, params), test_set=data.eval_set(), strategy=baseline,
                     initial_ids=start, query_size=params.query_size, rounds=len(rounds),
                     iterations=params.mc_iterations, pool_subsample=params.pool_subsample,
                     n_classes=len(params.classes), fit_kwargs={**params.training, "progress": progress},
                     batch_size=params.inference.get("batch_size", 256), seed=params.seed, device=device,
                     progress=progress)
    arm = frame[["round", "n_labelled"]].assign(
        **{f"test_{k}": frame[k] for k in ("accuracy", "nll", "ece", "macro_f1")}, strategy=baseline)
    csv, png = ws.baseline_paths(baseline)
    atomic_write_text(csv, arm.to_csv(index=False))
    plot_learning_curves({f"{params.heuristic} (this workspace)": rounds, baseline: arm}, y="test_accuracy",
                         reference=baseline, path=png, title=f"learning curve vs {baseline} acquisition")
    git_repo.commit_paths(ws.root, [csv, png], f"{baseline}-acquisition reference over rounds 0-{len(rounds) - 1}")
    logger.info("%s reference over %d rounds: test accuracy %s", baseline, len(arm),
                ", ".join(f"{a:.4f}" for a in arm["test_accuracy"]))
    return {"baseline": baseline, "rounds": len(arm), "csv": str(csv.relative_to(ws.root)),
            "plot": str(png.relative_to(ws.root)), "rows": arm.to_dict("records")}
