"""Round step: choose the next queries and export them for annotators (CSV + Label Studio)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from al_lib import heuristics
from al_lib.export import label_studio_tasks, query_frame, write_queries
from tasks.score import load_scores, round_rng
from tasks.workspace import QUERIES, Workspace

logger = logging.getLogger(__name__)


def select(scored: dict[str, np.ndarray], strategy: str, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions into the scored arrays, in acquisition order."""
    if strategy == "random":
        return rng.choice(len(scored["ids"]), size=k, replace=False).astype(np.int64)
    if strategy == "batch_bald":
        return np.asarray(heuristics.batch_bald(scored["probs"], k, seed=int(rng.integers(2**31))), dtype=np.int64)
    if "probs" in scored:  # the stochastic samplers of Kirsch et al.
        sampler = getattr(heuristics, strategy)
        return np.asarray(sampler(scored["probs"], k, seed=int(rng.integers(2**31))), dtype=np.int64)
    return np.asarray(heuristics.top_k(scored["scores"], k), dtype=np.int64)


def query_step(ws: Workspace, round: int, *, replace: bool = False) -> pd.DataFrame:
    """Pick the top ``query_size`` of the scored pool; write ``data/queries/round-N.{csv,labelstudio.json}``.

    ``replace``: overwrite this round's query files when they differ (``dvc repro`` / ``dvc exp``
    after a parameter change); the flow never replaces queries already handed to annotators.

    Returns the query table ``id,rank,score,predicted_label,predicted_prob``.
    """
    params = ws.params()
    scored = load_scores(ws)
    k = min(params.query_size, len(scored["ids"]))
    order = select(scored, params.heuristic, k, round_rng(params.seed, round, "select"))
    queries = query_frame(scored["ids"][order], scored["scores"][order], scored["mean_probs"][order], params.classes)
    manifest = ws.manifest().set_index("id")["path"]
    tasks = label_studio_tasks(queries, {i: manifest[i] for i in queries["id"]}, model_version=f"round-{round}")
    if replace:
        for old in ws.query_paths(round):
            old.unlink(missing_ok=True)
    csv_path, _ = write_queries(ws.path(QUERIES), round, queries, tasks)
    logger.info("round %d: exported %d queries to %s", round, len(queries), csv_path.relative_to(ws.root))
    return queries
