"""Round step: choose the next queries and export them for annotators (CSV + Label Studio)."""

from __future__ import annotations

import logging

from al_lib.export import label_studio_tasks, query_frame, write_queries
from tasks.query_figures import write_query_thumbnails, write_score_histogram
from tasks.scores_file import labelled_set, load_scores, scored_pool
from tasks.seeds import round_seed
from tasks.stopping import stopping_step
from tasks.strategy import workspace_strategy
from tasks.workspace import QUERIES, Workspace

logger = logging.getLogger(__name__)


def query_step(ws: Workspace, round: int, *, device=None, progress: bool = False) -> dict:
    """Select ``query_size`` of the scored pool with the round's strategy; write
    ``data/queries/round-N.{csv,labelstudio.json}`` (``score``: the strategy's own score of each
    pick — BALD, entropy, ..., the joint-MI gain for BatchBALD, EPIG, empty for random and the
    embedding selections badge/coreset/typiclust/probcover), the thumbnail
    grid ``data/queries/round-N.png`` and the pool-score histogram ``metrics/pool_scores.png``.

    When the step runs (its inputs changed since ``dvc.lock`` — a resumed round, a ``--rerun`` or
    ``dvc repro`` after a parameter change) it replaces this round's query files.

    Returns a summary: the number of queries and the CSV path (relative to the workspace).
    """
    params = ws.params()
    scored = load_scores(ws)
    k = min(params.query_size, len(scored["ids"]))
    strategy = workspace_strategy(params)
    pool = scored_pool(scored, strategy)
    if strategy.needs_features:
        k = min(k, len(pool.candidate_positions))
    picks = strategy.select(scored["scores"], k, seed=round_seed(params.seed, round, "select"), joint=pool.joint,
                            pool=pool, labelled=labelled_set(scored))
    order = picks.positions
    queries = query_frame(scored["ids"][order], picks.scores, scored["mean_probs"][order], params.classes)
    manifest = ws.manifest().set_index("id")["path"]
    tasks = label_studio_tasks(queries, {i: manifest[i] for i in queries["id"]}, model_version=f"round-{round}")
    for old in (*ws.query_paths(round), ws.query_thumbnails(round)):
        old.unlink(missing_ok=True)
    csv_path, _ = write_queries(ws.path(QUERIES), round, queries, tasks)
    thumbnails = write_query_thumbnails(ws, round, queries)
    histogram = write_score_histogram(ws, round, scored["scores"], scored["scores"][order], params.heuristic)
    logger.info("round %d: exported %d queries to %s (thumbnails %s)", round, len(queries),
                csv_path.relative_to(ws.root), thumbnails)
    stopping = stopping_step(ws, round, device=device, progress=progress)  # after scoring: tasks/stopping.py
    return {"n_queries": len(queries), "file": str(csv_path.relative_to(ws.root)), "thumbnails": thumbnails,
            "histogram": histogram, "stop": stopping["stop"]}
