"""Round step: subsample the pool and estimate MC uncertainty for every candidate."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
from torch.utils.data import Subset

from al_lib.acquisition import BATCH_STRATEGIES
from al_lib.heuristics import HEURISTICS
from al_lib.inference import iter_predict_mc
from al_lib.loop import _subsample
from al_lib.seeding import check_random_state
from tasks.datasets import load_workspace_data, mean_probabilities
from tasks.train import load_workspace_model
from tasks.workspace import LABELS, MANIFEST, MODEL, PARAMS_FILE, SCORES, Workspace, write_file

logger = logging.getLogger(__name__)


def round_rng(seed: int, round: int, step: str) -> np.random.Generator:
    """The generator of one step of one round: same seed, round and step → same draws."""
    return check_random_state(np.random.SeedSequence([seed, round, sum(step.encode())]).generate_state(1)[0])


def score_step(ws: Workspace, round: int, *, device=None, progress: bool = False) -> dict:
    """Score a seeded subsample of the queryable pool; write ``data/scores/pool_scores.npz``.

    The file holds ``ids`` [n], ``scores`` [n] (the per-sample heuristic; BALD for batch
    strategies), ``mean_probs`` [n, C] and, for batch strategies (BatchBALD, PowerBALD...),
    the full ``probs`` [n, C, T] they select from. Images outside the subsample are never decoded.
    """
    params = ws.params()
    digest = ws.file_digest(MODEL, LABELS, MANIFEST, PARAMS_FILE) + f":{round}"
    existing = _finished(ws, digest)
    if existing is not None:
        logger.info("round %d: pool already scored with this model, skipping", round)
        return existing
    data = load_workspace_data(ws, params)
    candidates = data.candidates()
    if len(candidates) == 0:
        raise ValueError("the pool is exhausted: every queryable image is labelled")
    positions = _subsample(len(candidates), params.pool_subsample, round_rng(params.seed, round, "subsample"))
    subset = Subset(candidates, positions)
    ids = candidates.ids[positions]
    model = load_workspace_model(ws, params)
    keep_probs = params.heuristic in BATCH_STRATEGIES
    scorer = HEURISTICS["bald" if keep_probs or params.heuristic == "random" else params.heuristic]
    scores, means, probs = [], [], []
    for batch in iter_predict_mc(model, subset, iterations=params.mc_iterations, device=device,
                                 seed=int(round_rng(params.seed, round, "mc").integers(2**31)),
                                 batch_size=params.inference.get("batch_size", 256), progress=progress):
        scores.append(scorer(batch).double().cpu().numpy())
        batch_np = batch.float().cpu().numpy()
        means.append(mean_probabilities(batch_np))
        if keep_probs:
            probs.append(batch_np)
    arrays = {"ids": ids.astype(str), "scores": np.concatenate(scores), "mean_probs": np.concatenate(means)}
    if keep_probs:
        arrays["probs"] = np.concatenate(probs)
    summary = {"round": round, "n_candidates": len(candidates), "n_scored": len(ids),
               "heuristic": params.heuristic, "mc_iterations": params.mc_iterations}
    buffer = io.BytesIO()
    np.savez(buffer, digest=np.array(digest), summary=np.array(json.dumps(summary)), **arrays)
    write_file(ws.path(SCORES), buffer.getvalue())
    logger.info("round %d: scored %d of %d candidate images with %s (T=%d)", round, len(ids), len(candidates),
                params.heuristic, params.mc_iterations)
    return summary


def load_scores(ws: Workspace) -> dict[str, np.ndarray]:
    path = ws.path(SCORES)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pool scores yet — run the score step first")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _finished(ws: Workspace, digest: str) -> dict | None:
    if not ws.path(SCORES).is_file():
        return None
    stored = load_scores(ws)
    return json.loads(str(stored["summary"])) if str(stored["digest"]) == digest else None
