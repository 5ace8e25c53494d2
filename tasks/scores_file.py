"""The score step's output, ``data/scores/pool_scores.npz``: what the query step selects from."""

from __future__ import annotations

import io
import json
import logging

import numpy as np

from tasks.workspace import SCORES, Params, Workspace, write_file

logger = logging.getLogger(__name__)


def write_scores(ws: Workspace, plan, params: Params, arrays: dict) -> dict:
    """Write the arrays of the scored ``plan`` (``ids``, ``scores``, ``mean_probs`` [, ``joint_positions``,
    ``joint``]) atomically, with a summary; return the summary."""
    summary = {"round": plan.round, "n_candidates": plan.n_candidates, "n_scored": len(plan.ids),
               "heuristic": params.heuristic, "mc_iterations": params.mc_iterations}
    buffer = io.BytesIO()
    np.savez(buffer, summary=np.array(json.dumps(summary)), **arrays)
    write_file(ws.path(SCORES), buffer.getvalue())
    logger.info("round %d: scored %d of %d candidate images with %s (T=%d)", plan.round, len(plan.ids),
                plan.n_candidates, params.heuristic, params.mc_iterations)
    return summary


def load_scores(ws: Workspace) -> dict[str, np.ndarray]:
    """The arrays :func:`write_scores` wrote (never unpickles: ``allow_pickle=False``)."""
    path = ws.path(SCORES)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pool scores yet — run the score step first")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
