"""Round step: subsample the pool and score every candidate with the round's strategy.

Scoring is split into plan → score ids → write so the same code runs in one process (the flow's
default, ``dvc repro``) or sharded over Dask workers (``flows/round.py``). Workspace models use
consistent MC dropout seeded by (seed, round), so a sample's scores do not depend on which batch
or shard it lands in: the sharded result equals the single-process one.

Memory is bounded whatever the pool: the step keeps, per scored sample, the strategy's own score
and the predictive distribution ([n] + [n, C] floats); BatchBALD also keeps the joint MC
probabilities of its top-M candidates ([M, C, T], M = 2048 by default) — never the pool's
[n, C, T]. The embedding strategies (badge, coreset, typiclust, probcover) keep the penultimate
features and mean probs of at most ``max_candidates`` (default 20 000) candidates, a uniform
seeded subsample drawn while streaming, and the features of the training labels [L, D]: for a 1M
pool scored whole (``pool_subsample: null``) with D = 512, C = 10, that is 1M × (8 + 40 + 8) B
(scores, mean probs, predicted class) ≈ 56 MB plus 20 000 × 522 × 4 B ≈ 42 MB of candidates
(also the size they add to ``pool_scores.npz``), whatever n. EPIG adds its target set's
[M*, C, T] probabilities (``target_size`` 1000 × 10 × 20 × 4 B = 0.8 MB). The embedding
strategies score in one process (their candidate subsample spans the pool): ``--workers`` is
ignored for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Subset

from al_lib.heuristics import predictive_distribution
from al_lib.inference import iter_predict_mc, predict_mc
from al_lib.sampling import subsample_indices
from al_lib.strategies import merge_scored_pools
from tasks.datasets import load_workspace_data
from tasks.scores_file import pool_arrays, scored_pool, write_scores
from tasks.seeds import round_rng, round_seed
from tasks.strategy import round_setting, workspace_strategy
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
    strategy's own score), ``mean_probs`` [n, C], plus what the strategy's selection needs
    (:func:`tasks.scores_file.scored_pool` reads them back): for BatchBALD ``joint_positions`` [M]
    (into ``ids``) with their ``joint`` MC probabilities [M, C, T]; for the embedding strategies
    ``candidate_positions`` [M] and their penultimate ``features`` [M, D] (+ ``candidate_probs``
    [M, C]), M <= ``max_candidates``, from the same MC pass; ``predicted`` [n] for class_balanced;
    ``labelled_features`` [L, D] / ``labelled_labels`` [L] of the training labels where the
    strategy uses them.

    The seeds are those of :func:`al_lib.acquisition.acquire` given ``mc_seed=round_seed(seed,
    round, "mc")`` and ``select_seed=round_seed(seed, round, "select")``, and so are the passes:
    the pipeline picks what the library picks for the same model, pool and seeds.
    """
    inputs = ws.inputs()
    params = inputs.params
    strategy = workspace_strategy(params)
    data = load_workspace_data(ws, inputs)
    pool = data.state.pool
    position = {sid: i for i, sid in enumerate(pool.ids)}
    subset = Subset(pool, [position[i] for i in ids])
    model = load_workspace_model(ws, params)
    select_seed = round_seed(params.seed, round, "select")
    mc = dict(iterations=params.mc_iterations, device=device, seed=round_seed(params.seed, round, "mc"),
              batch_size=params.inference.get("batch_size", 256), progress=progress)
    if strategy.needs_target:
        strategy = strategy.with_target(predict_mc(model, _target_set(data, params, subset, select_seed), **mc))
    scorer = strategy.pool_scorer(params.query_size, seed=select_seed)
    features = "penultimate" if strategy.needs_features else None
    means = []
    for out in iter_predict_mc(model, subset, features=features, **mc):
        batch, feats = out if features else (out, None)
        # typiclust / probcover select on features alone (as acquire does: no probs kept)
        scorer.update(None if strategy.needs_features and not strategy.needs_probs else batch, feats)
        means.append(predictive_distribution(batch.float().cpu().numpy()))
    scored = scorer.result()
    arrays = {"ids": np.asarray(ids, dtype=str), "scores": scored.scores,
              "mean_probs": np.concatenate(means) if means else np.zeros((0, len(params.classes)))}
    arrays.update(pool_arrays(scored, strategy, len(params.classes)))
    if strategy.needs_labelled:
        arrays.update(_labelled_arrays(data, model, strategy, mc))
    return arrays


def _target_set(data, params: Params, subset: Subset, seed: int):
    """EPIG's target inputs (params ``heuristic.target``, see tasks/strategy.py ROUND_SETTINGS):
    a seeded sample of ``target_size`` of the scored candidates ("pool", as ``acquire`` without
    ``target=``), or of the held-out inputs ("held_out")."""
    strategy = workspace_strategy(params)
    if round_setting(params, "target", "pool") == "pool":
        return Subset(subset, subsample_indices(len(subset), strategy.target_size, seed))
    where = {sid: i for i, sid in enumerate(data.state.ids)}
    held_out = [where[sid] for sid in data.state.ids if sid in data.held_out]
    if not held_out:
        raise ValueError("heuristic.target 'held_out': the workspace has no held-out images (manifest split "
                         "test/val); use target 'pool'")
    chosen = np.asarray(held_out)[np.sort(subsample_indices(len(held_out), strategy.target_size, seed))]
    return Subset(data.state.dataset, chosen.tolist())


def _labelled_arrays(data, model, strategy, mc: dict) -> dict:
    """``labelled_features`` [L, D] (the strategy's embedding, the pool's MC seed) and
    ``labelled_labels`` [L] (class indices) of the training labels, as far as ``strategy`` uses them."""
    train = data.train_set()
    out = {"labelled_labels": np.asarray(train.dataset.labels, dtype=np.int64)[train.indices]
           if len(train) else np.zeros(0, np.int64)}
    if strategy.needs_features:
        feats = [f.cpu().numpy() for _, f in iter_predict_mc(model, train, features="penultimate", **mc)]
        out["labelled_features"] = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
    return out


def merge_shards(parts: list[dict], params: Params) -> dict:
    """The arrays of contiguous shards (in plan order) as if scored in one pass (not for the
    embedding strategies: their candidate subsample is drawn over the whole pool)."""
    strategy = workspace_strategy(params)
    merged = {key: np.concatenate([p[key] for p in parts]) for key in ("ids", "scores", "mean_probs")}
    pools = [scored_pool(p, strategy) for p in parts]
    merged.update(pool_arrays(merge_scored_pools(pools, strategy, params.query_size), strategy, len(params.classes)))
    if strategy.needs_labelled and parts:
        merged.update({k: v for k, v in parts[0].items() if k.startswith("labelled_")})
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
