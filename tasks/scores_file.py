"""The score step's output, ``data/scores/pool_scores.npz``: what the query step selects from."""

from __future__ import annotations

import io
import json
import logging
import zipfile

import numpy as np

from tasks.workspace import SCORES, Params, Workspace, write_file

logger = logging.getLogger(__name__)


def write_scores(ws: Workspace, plan, params: Params, arrays: dict) -> dict:
    """Write the arrays of the scored ``plan`` (``ids``, ``scores``, ``mean_probs`` and those of
    :func:`pool_arrays`, ``labelled_*``) atomically, with a summary; return the summary."""
    summary = {"round": plan.round, "n_candidates": plan.n_candidates, "n_scored": len(plan.ids),
               "heuristic": params.heuristic, "mc_iterations": params.mc_iterations}
    write_file(ws.path(SCORES), npz_bytes({"summary": np.array(json.dumps(summary)), **arrays}))
    logger.info("round %d: scored %d of %d candidate images with %s (T=%d)", plan.round, len(plan.ids),
                plan.n_candidates, params.heuristic, params.mc_iterations)
    return summary


def npz_bytes(arrays: dict) -> bytes:
    """``arrays`` as the bytes of an ``.npz`` file that depend on the arrays alone.

    ``np.savez`` stamps each zip member with the current time, so the same scores saved twice
    differ and DVC sees a changed output. Here every member has the zip format's earliest time
    (1980-01-01), members keep the order of ``arrays``, and nothing is compressed: the same arrays
    give the same bytes in any process, on any day. ``np.load`` reads the result as usual.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def pool_arrays(scored, strategy, n_classes: int) -> dict[str, np.ndarray]:
    """The arrays of an :class:`al_lib.strategies.ScoredPool` beyond the scores that ``strategy``'s
    selection needs (plain arrays: ``np.savez`` without pickles); :func:`scored_pool` reverses it."""
    out: dict[str, np.ndarray] = {}
    if strategy.needs_joint:
        out["joint_positions"] = scored.joint_positions
        out["joint"] = scored.joint if scored.joint is not None else np.zeros((0, n_classes, 1), np.float32)
    if strategy.needs_features:
        out["candidate_positions"] = scored.candidate_positions
        out["features"] = scored.features
        if scored.candidate_probs is not None:
            out["candidate_probs"] = scored.candidate_probs
    if strategy.needs_predicted:
        out["predicted"] = scored.predicted
    if strategy.needs_features or strategy.needs_predicted:
        out["n_classes"] = np.asarray(scored.n_classes or n_classes, dtype=np.int64)
    return out


def scored_pool(arrays: dict[str, np.ndarray], strategy):
    """The :class:`al_lib.strategies.ScoredPool` of the score step's ``arrays`` (for ``strategy``)."""
    from al_lib.strategies import ScoredPool

    joint = arrays.get("joint")
    n_classes = arrays.get("n_classes")
    return ScoredPool(arrays["scores"], arrays.get("joint_positions"),
                      joint if joint is not None and len(joint) else None,
                      candidate_positions=arrays.get("candidate_positions"), features=arrays.get("features"),
                      candidate_probs=arrays.get("candidate_probs"), predicted=arrays.get("predicted"),
                      n_classes=None if n_classes is None else int(n_classes))


def labelled_set(arrays: dict[str, np.ndarray]):
    """The :class:`al_lib.embedding_strategies.LabelledSet` the score step stored, or None."""
    from al_lib.embedding_strategies import LabelledSet

    if "labelled_labels" not in arrays:
        return None
    return LabelledSet(features=arrays.get("labelled_features"), labels=arrays["labelled_labels"])


def load_scores(ws: Workspace) -> dict[str, np.ndarray]:
    """The arrays :func:`write_scores` wrote (never unpickles: ``allow_pickle=False``)."""
    path = ws.path(SCORES)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pool scores yet — run the score step first")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
