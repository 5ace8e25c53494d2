"""The production round as a Prefect flow: ingest → validate → snapshot → train → score → export."""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from tasks import oracle, versioning
from tasks.round_tasks import (
    artifacts_task, ingest_task, query_task, score_shard_task, score_task, snapshot_task, train_task,
    validate_task,
)
from tasks.score import finished_scores, merge_shards, plan_scoring, shard_ids, write_scores
from tasks.rounds import require_training_labels, round_state
from tasks.workspace import Workspace

COMMITTED_OUTPUTS = ("data/queries", "metrics", "data/inbox/processed", "validation/results.json")


@flow(name="al-round", log_prints=True)
def al_round(workspace: str, simulate: bool = False, device: str | None = None,
             allow_empty: bool = False, workers: int = 1, dask_address: str | None = None) -> dict:
    """Run (or resume) the next active-learning round of ``workspace``.

    ``simulate``: an oracle answers the previous queries from ``data/oracle/labels.csv``.
    ``allow_empty``: run a round even when the inbox holds no new annotation.
    ``workers`` / ``dask_address``: score the pool in ``workers`` shards on Dask — an existing
    cluster's scheduler address, or a local cluster of ``workers`` processes when no address is
    given. The merged scores equal the single-process ones.

    Returns a summary: round, resumed, ingest report, snapshot, metrics and the query file.
    """
    log = get_run_logger()
    ws = Workspace(workspace)
    ws.params()  # fail fast, before touching anything, on a broken params.yaml
    with versioning.workspace_lock(ws.root):
        state = round_state(ws)
        n = state.round
        ingested = {"files": [], "n_new": 0}
        if state.resume:
            log.info("resuming round %d: its snapshot exists, finishing the remaining steps", n)
        else:
            if simulate:
                _oracle_fill_inbox(ws, n)
            if not ws.inbox_files() and n > 0 and not allow_empty:
                log.info("no new annotations in %s since round %d: nothing to do", ws.path("data/inbox"), n - 1)
                return {"round": n, "skipped": True, "reason": "no new annotations"}
            ingested = ingest_task(str(ws.root), n, source="oracle" if simulate else "human")
            require_training_labels(ws)
        validate_task(str(ws.root), n)
        snap = snapshot_task(str(ws.root), n)
        metrics = train_task(str(ws.root), n, device)
        if workers > 1 or dask_address:
            _score_on_dask(str(ws.root), n, device, workers, dask_address)
        else:
            score_task(str(ws.root), n, device)
        queries = query_task(str(ws.root), n)
        versioning.commit_paths(ws.root, [p for p in COMMITTED_OUTPUTS if ws.path(p).exists()],
                                f"round {n}: queries and metrics")
        artifacts_task(str(ws.root), n, queries, metrics)
    query_csv = ws.query_paths(n)[0]
    log.info("round %d done: %d queries in %s; labelled snapshot tagged %s", n, len(queries),
             query_csv.relative_to(ws.root), snap["tag"])
    return {"round": n, "resumed": state.resume, "ingested": ingested, "snapshot": snap, "metrics": metrics,
            "queries": str(query_csv), "skipped": False}


def _score_on_dask(workspace: str, round: int, device: str | None, workers: int, address: str | None) -> dict:
    from prefect_dask import DaskTaskRunner

    runner = (DaskTaskRunner(address=address) if address else
              DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                             "host": "127.0.0.1", "dashboard_address": None}))
    return score_pool_sharded.with_options(task_runner=runner)(workspace, round, max(workers, 1), device)


@flow(name="al-score-sharded")
def score_pool_sharded(workspace: str, round: int, shards: int, device: str | None = None) -> dict:
    """Score the round's planned pool subsample in ``shards`` pieces on the flow's task runner."""
    log = get_run_logger()
    ws = Workspace(workspace)
    plan = plan_scoring(ws, round)
    done = finished_scores(ws, plan)
    if done is not None:
        log.info("round %d: pool already scored with this model, skipping", round)
        return done
    pieces = shard_ids(plan.ids, shards)
    log.info("scoring %d images in %d shards", len(plan.ids), len(pieces))
    futures = score_shard_task.map(workspace, round, pieces, unmapped(device))
    return write_scores(ws, plan, ws.params(), merge_shards([f.result() for f in futures]))


def _oracle_fill_inbox(ws: Workspace, round: int) -> None:
    if round == 0:
        oracle.initial_labels(ws)
    else:
        oracle.answer_queries(ws, round - 1)


@flow(name="al-simulate", log_prints=True)
def al_simulate(workspace: str, rounds: int = 3, device: str | None = None, workers: int = 1,
                dask_address: str | None = None) -> list[dict]:
    """Run ``rounds`` unattended rounds, the oracle answering each round's queries."""
    results = []
    for _ in range(rounds):
        results.append(al_round(workspace, simulate=True, device=device, workers=workers,
                                dask_address=dask_address))
    return results

