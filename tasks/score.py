"""Round step: subsample the pool and estimate MC uncertainty for every candidate.

Scoring is split into plan → score ids → write so the same code runs in one process (the flow's
default, ``dvc repro``) or sharded over Dask workers (``flows/round.py``). Workspace models use
consistent MC dropout, so a sample's scores do not depend on which batch or shard it lands in:
the sharded result equals the single-process one.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Subset

from al_lib.acquisition import BATCH_STRATEGIES
from al_lib.heuristics import HEURISTICS
from al_lib.inference import iter_predict_mc
from al_lib.sampling import subsample_indices
from al_lib.seeding import check_random_state
from tasks.datasets import load_workspace_data, mean_probabilities
from tasks.train import load_workspace_model
from tasks.workspace import LABELS, MANIFEST, MODEL, SCORE_PARAMS, SCORES, Params, Workspace, write_file

logger = logging.getLogger(__name__)


def round_rng(seed: int, round: int, step: str) -> np.random.Generator:
    """The generator of one step of one round: same seed, round and step → same draws."""
    return check_random_state(np.random.SeedSequence([seed, round, sum(step.encode())]).generate_state(1)[0])


@dataclass(frozen=True)
class ScorePlan:
    """Which candidate ids this round scores (a seeded subsample), and the inputs' digest."""

    round: int
    ids: list[str]
    n_candidates: int
    digest: str


def plan_scoring(ws: Workspace, round: int) -> ScorePlan:
    """Draw the seeded subsample of the queryable pool; no image is decoded."""
    params = ws.params()
    candidates = load_workspace_data(ws, params).candidates()
    if len(candidates) == 0:
        raise ValueError("the pool is exhausted: every queryable image is labelled")
    positions = subsample_indices(len(candidates), params.pool_subsample, round_rng(params.seed, round, "subsample"))
    digest = ws.file_digest(MODEL, LABELS, MANIFEST) + ws.params_digest(*SCORE_PARAMS) + f":{round}"
    return ScorePlan(round, [str(i) for i in candidates.ids[positions]], len(candidates), digest)


def score_ids(ws: Workspace, round: int, ids: list[str], *, device=None, progress: bool = False) -> dict:
    """MC scores of the pool samples ``ids``: arrays ``ids`` [n], ``scores`` [n], ``mean_probs`` [n, C]
    and, for batch strategies (BatchBALD, PowerBALD...), ``probs`` [n, C, T]."""
    params = ws.params()
    data = load_workspace_data(ws, params)
    pool = data.state.pool
    position = {sid: i for i, sid in enumerate(pool.ids)}
    subset = Subset(pool, [position[i] for i in ids])
    model = load_workspace_model(ws, params)
    keep_probs = params.heuristic in BATCH_STRATEGIES
    scorer = HEURISTICS[params.heuristic if params.heuristic in HEURISTICS and params.heuristic != "random"
                        else "bald"]
    scores, means, probs = [], [], []
    for batch in iter_predict_mc(model, subset, iterations=params.mc_iterations, device=device,
                                 seed=int(round_rng(params.seed, round, "mc").integers(2**31)),
                                 batch_size=params.inference.get("batch_size", 256), progress=progress):
        scores.append(scorer(batch).double().cpu().numpy())
        batch_np = batch.float().cpu().numpy()
        means.append(mean_probabilities(batch_np))
        if keep_probs:
            probs.append(batch_np)
    arrays = {"ids": np.asarray(ids, dtype=str), "scores": _cat(scores, (0,)),
              "mean_probs": _cat(means, (0, len(params.classes)))}
    if keep_probs:
        arrays["probs"] = _cat(probs, (0, len(params.classes), params.mc_iterations))
    return arrays


def _cat(parts: list[np.ndarray], empty_shape: tuple) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape)


def merge_shards(parts: list[dict]) -> dict:
    """Concatenate per-shard arrays in shard order (shards are contiguous slices of the plan)."""
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def shard_ids(ids: list[str], shards: int) -> list[list[str]]:
    """``shards`` contiguous, near-equal slices of ``ids`` (no empty slice)."""
    return [list(chunk) for chunk in np.array_split(np.asarray(ids, dtype=object), min(shards, len(ids)))]


def write_scores(ws: Workspace, plan: ScorePlan, params: Params, arrays: dict) -> dict:
    """Write ``data/scores/pool_scores.npz`` atomically; return the summary."""
    summary = {"round": plan.round, "n_candidates": plan.n_candidates, "n_scored": len(plan.ids),
               "heuristic": params.heuristic, "mc_iterations": params.mc_iterations}
    buffer = io.BytesIO()
    np.savez(buffer, digest=np.array(plan.digest), summary=np.array(json.dumps(summary)), **arrays)
    write_file(ws.path(SCORES), buffer.getvalue())
    logger.info("round %d: scored %d of %d candidate images with %s (T=%d)", plan.round, len(plan.ids),
                plan.n_candidates, params.heuristic, params.mc_iterations)
    return summary


def finished_scores(ws: Workspace, plan: ScorePlan) -> dict | None:
    """The stored summary when the scores on disk were made from exactly this plan's inputs."""
    if not ws.path(SCORES).is_file():
        return None
    stored = load_scores(ws)
    return json.loads(str(stored["summary"])) if str(stored["digest"]) == plan.digest else None


def score_step(ws: Workspace, round: int, *, device=None, progress: bool = False) -> dict:
    """Score a seeded subsample of the queryable pool in this process; see the module docstring.

    Writes ``data/scores/pool_scores.npz`` (skipped when it already holds this round's scores for
    the current model, labels and params). Returns a summary dict.
    """
    plan = plan_scoring(ws, round)
    done = finished_scores(ws, plan)
    if done is not None:
        logger.info("round %d: pool already scored with this model, skipping", round)
        return done
    return write_scores(ws, plan, ws.params(), score_ids(ws, round, plan.ids, device=device, progress=progress))


def load_scores(ws: Workspace) -> dict[str, np.ndarray]:
    path = ws.path(SCORES)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pool scores yet — run the score step first")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
