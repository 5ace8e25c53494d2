"""Round step: subsample the pool and score every candidate with the round's strategy.

Scoring is split into plan → score ids → write so the same code runs in one process (the flow's
default, ``dvc repro``) or sharded over Dask workers (``flows/round.py``). Workspace models use
consistent MC dropout seeded by (seed, round), so a sample's scores do not depend on which batch
or shard it lands in: the sharded result equals the single-process one.

Memory is bounded whatever the pool: the step keeps, per scored sample, the strategy's own score
and the predictive distribution ([n] + [n, C] floats); only BatchBALD also keeps the joint MC
probabilities of its top-M candidates ([M, C, T], M = 2048 by default) — never the pool's
[n, C, T].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Subset

from al_lib.heuristics import predictive_distribution
from al_lib.inference import iter_predict_mc
from al_lib.sampling import subsample_indices
from al_lib.strategies import ScoredPool, merge_scored_pools
from tasks.datasets import load_workspace_data
from tasks.scores_file import write_scores
from tasks.seeds import round_rng, round_seed
from tasks.strategy import workspace_strategy
from tasks.train import load_workspace_model
from tasks.workspace import Params, Workspace

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ScorePlan:
    """Which candidate ids this round scores (a seeded subsample)."""

    round: int
    ids: list[str]
    n_candidates: int


def plan_scoring(ws: Workspace, round: int) -> ScorePlan:
    """Draw the seeded subsample of the queryable pool; no image is decoded."""
    inputs = ws.inputs()
    params = inputs.params
    candidates = load_workspace_data(ws, inputs).candidates()
    if len(candidates) == 0:
        raise ValueError("the pool is exhausted: every queryable image is labelled")
    positions = subsample_indices(len(candidates), params.pool_subsample, round_rng(params.seed, round, "subsample"))
    return ScorePlan(round, [str(i) for i in candidates.ids[positions]], len(candidates))


def score_ids(ws: Workspace, round: int, ids: list[str], *, device=None, progress: bool = False) -> dict:
    """Score the pool samples ``ids`` (one shard, or all): ``ids`` [n], ``scores`` [n] (the
    strategy's own score), ``mean_probs`` [n, C] and, for BatchBALD, ``joint_positions`` [M]
    (into ``ids``) with their ``joint`` MC probabilities [M, C, T]."""
    inputs = ws.inputs()
    params = inputs.params
    strategy = workspace_strategy(params)
    data = load_workspace_data(ws, inputs)
    pool = data.state.pool
    position = {sid: i for i, sid in enumerate(pool.ids)}
    subset = Subset(pool, [position[i] for i in ids])
    model = load_workspace_model(ws, params)
    scorer = strategy.pool_scorer(params.query_size)
    means = []
    for batch in iter_predict_mc(model, subset, iterations=params.mc_iterations, device=device,
                                 seed=round_seed(params.seed, round, "mc"),
                                 batch_size=params.inference.get("batch_size", 256), progress=progress):
        scorer.update(batch)
        means.append(predictive_distribution(batch.float().cpu().numpy()))
    scored = scorer.result()
    arrays = {"ids": np.asarray(ids, dtype=str), "scores": scored.scores,
              "mean_probs": np.concatenate(means) if means else np.zeros((0, len(params.classes)))}
    if strategy.needs_joint:
        arrays["joint_positions"] = scored.joint_positions
        arrays["joint"] = scored.joint if scored.joint is not None else np.zeros((0, len(params.classes), 1))
    return arrays


def merge_shards(parts: list[dict], params: Params) -> dict:
    """The arrays of contiguous shards (in plan order) as if scored in one pass."""
    strategy = workspace_strategy(params)
    merged = {key: np.concatenate([p[key] for p in parts]) for key in ("ids", "scores", "mean_probs")}
    if strategy.needs_joint:
        pools = [ScoredPool(p["scores"], p["joint_positions"], p["joint"] if len(p["joint"]) else None)
                 for p in parts]
        scored = merge_scored_pools(pools, strategy, params.query_size)
        merged["joint_positions"], merged["joint"] = scored.joint_positions, scored.joint
    return merged


def shard_ids(ids: list[str], shards: int) -> list[list[str]]:
    """``shards`` contiguous, near-equal slices of ``ids`` (no empty slice)."""
    return [list(chunk) for chunk in np.array_split(np.asarray(ids, dtype=object), min(shards, len(ids)))]


def score_step(ws: Workspace, round: int, *, device=None, progress: bool = False) -> dict:
    """Score a seeded subsample of the queryable pool in this process; see the module docstring.

    Writes ``data/scores/pool_scores.npz``. Returns a summary dict.
    """
    plan = plan_scoring(ws, round)
    return write_scores(ws, plan, ws.params(), score_ids(ws, round, plan.ids, device=device, progress=progress))
