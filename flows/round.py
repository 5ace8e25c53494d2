"""The production round as a Prefect flow: ingest → validate → snapshot → train → score → export."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks import oracle, versioning
from tasks.round_tasks import (
    artifacts_task, ingest_task, query_task, score_task, snapshot_task, train_task, validate_task,
)
from tasks.rounds import require_training_labels, round_state
from tasks.workspace import Workspace

COMMITTED_OUTPUTS = ("data/queries", "metrics", "data/inbox/processed", "validation/results.json")


@flow(name="al-round", log_prints=True)
def al_round(workspace: str, simulate: bool = False, device: str | None = None,
             allow_empty: bool = False) -> dict:
    """Run (or resume) the next active-learning round of ``workspace``.

    ``simulate``: an oracle answers the previous queries from ``data/oracle/labels.csv``.
    ``allow_empty``: run a round even when the inbox holds no new annotation.

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


def _oracle_fill_inbox(ws: Workspace, round: int) -> None:
    if round == 0:
        oracle.initial_labels(ws)
    else:
        oracle.answer_queries(ws, round - 1)


@flow(name="al-simulate", log_prints=True)
def al_simulate(workspace: str, rounds: int = 3, device: str | None = None) -> list[dict]:
    """Run ``rounds`` unattended rounds, the oracle answering each round's queries."""
    results = []
    for _ in range(rounds):
        results.append(al_round(workspace, simulate=True, device=device))
    return results

