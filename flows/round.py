"""The production round as a Prefect flow: ingest → validate → train → score → query → record.

The steps are those of tasks/pipeline.py, the same ``dvc.yaml`` stages ``dvc repro`` runs; each is
run only when DVC's record (``dvc.lock``) says it is out of date, and recorded when it ran. The
round is committed and tagged ``round-N`` when it is complete (tasks/rounds.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import pandas as pd
from prefect import flow, get_run_logger, unmapped
from prefect.runtime import flow_run

from tasks import oracle, pipeline
from tasks.cold_start import needs_cold_start
from tasks.ingest import check_inbox
from tasks.lock import workspace_lock
from tasks.prefect_tasks import artifacts_task, baseline_task, ingest_task, step_task
from tasks.rounds import (
    labels_to_train_on, plan_round, record_round, round_state, round_tag, snapshot_labels, start_round,
)
from tasks.stopping import read_stopping
from tasks.train import trained_metrics
from tasks.workspace import Workspace


def _run_name() -> str:
    """``<workspace folder> round N``: the round an ``al round`` would work on now."""
    workspace = flow_run.parameters.get("workspace", ".")
    try:
        return f"{Path(workspace).resolve().name} round {round_state(Workspace(workspace)).next_round}"
    except Exception:  # noqa: BLE001 — a name must never fail the run; the flow reports the real error
        return f"{Path(workspace).name} round ?"


@flow(name="al-round", flow_run_name=_run_name, log_prints=True)
def al_round(workspace: str, simulate: bool = False, device: str | None = None, allow_empty: bool = False,
             workers: int = 1, dask_address: str | None = None, rerun: bool = False) -> dict:
    """Run (or resume) the next active-learning round of ``workspace``.

    ``simulate``: an oracle answers the previous queries from ``data/oracle/labels.csv``.
    ``allow_empty``: start a new round even when the inbox holds no new annotation.
    ``rerun``: when the last round is finished and nothing is waiting, re-run its steps that are
    out of date (after a params or code change) and move its tag to the result.
    ``workers`` / ``dask_address``: score the pool in ``workers`` shards on Dask — an existing
    cluster's scheduler address, or a local cluster of ``workers`` processes when no address is
    given. The merged scores equal the single-process ones.

    Returns a summary: round, resumed, ingest report, steps run, metrics, tag, the query file and
    the wall time of each phase (``seconds``: ingest, validate, train, score, query, record).
    """
    log = get_run_logger()
    ws = Workspace(workspace)
    ws.params()  # fail fast, before touching anything, on a broken params.yaml
    with workspace_lock(ws.root):
        if simulate:
            _oracle_fill_inbox(ws, round_state(ws).next_round)
        plan = plan_round(ws, allow_empty=allow_empty, rerun=rerun)
        n = plan.round
        if plan.action == "nothing":
            log.info("round %d is finished and %s holds no new annotations: nothing to do (%s)", n,
                     ws.path("data/inbox"), plan.reason)
            return {"round": n, "skipped": True, "reason": plan.reason}
        if not simulate and needs_cold_start(ws, plan):  # a scheduled run on a workspace with no label yet
            from tasks.cold_start import cold_start_query

            exported = cold_start_query(ws, device=device)
            reason = ("cold-start query exported" if exported else "cold-start query still unanswered") + \
                f" ({ws.query_paths(0)[0].relative_to(ws.root)}): no label to train on yet"
            log.info("round 0: %s", reason)
            return {"round": 0, "skipped": True, "reason": reason}
        if plan.action == "start":
            check_inbox(ws, round=n)  # a bad file is refused before the round starts: nothing changes
            start_round(ws, n)
            log.info("starting round %d", n)
        elif plan.action == "rerun":
            log.info("re-running round %d's out-of-date steps: %s", n, ", ".join(plan.stale))
        else:
            log.info("round %d is in progress (not tagged yet): running what is left of it", n)
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        ingested = ingest_task(str(ws.root), n, source="oracle" if simulate else "human")
        labels_to_train_on(ws)
        pipeline.write_dvc_yaml(ws.root)
        seconds["ingest"] = time.perf_counter() - start
        ran = []
        for step in pipeline.ROUND_STEPS:
            start = time.perf_counter()
            if step is pipeline.SCORE and (workers > 1 or dask_address) and _shardable(ws):
                outcome = _score_on_dask(str(ws.root), n, device, workers, dask_address)
            else:
                outcome = step_task.with_options(name=step.name)(str(ws.root), n, step.name, device)
            if outcome["ran"]:
                ran.append(step.name)
            if step is pipeline.VALIDATE:
                snapshot_labels(ws)  # the labels validated are in DVC's cache before anything trains on them
            seconds[step.name] = time.perf_counter() - start
        start = time.perf_counter()
        commit = record_round(ws, n, "labels, model, metrics and queries" if ran else "recorded")
        seconds["record"] = time.perf_counter() - start
        metrics = trained_metrics(ws)
        query_csv = ws.query_paths(n)[0]
        queries = pd.read_csv(query_csv, dtype={"id": str}, keep_default_na=False).to_dict("records")
        artifacts_task(str(ws.root), n, queries, metrics)
        stopping = read_stopping(ws)
    log.info("round %d done: %d queries in %s; steps run: %s; tagged %s at %s", n, len(queries),
             query_csv.relative_to(ws.root), ", ".join(ran) or "none (all up to date)", round_tag(n), commit[:7])
    paused = _act_on_stopping(ws, n, stopping)
    return {"round": n, "resumed": plan.action == "resume", "ingested": ingested, "steps_run": ran, "metrics": metrics,
            "tag": round_tag(n), "commit": commit, "queries": str(query_csv), "seconds": seconds, "skipped": False,
            "stopping": stopping, "paused": paused}


def _act_on_stopping(ws: Workspace, round: int, record: dict | None) -> bool:
    """Log the round's stopping decisions (metrics/stopping.json). When one fired and params.yaml
    says ``stopping_action: pause``, pause the schedules of the deployment this run belongs to:
    Prefect deletes their scheduled runs and creates no more until a schedule is resumed. Returns
    whether it paused any."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    from tasks.stopping import stopping_lines

    log = get_run_logger()
    for line in stopping_lines(record):
        log.info("round %d: %s", round, line)
    if not (record and record["stop"]) or ws.params().stopping_action != "pause":
        return False
    why = "; ".join(line.removeprefix("stopping: ") for line in stopping_lines(record) if " fired — " in line)
    if deployment.id is None:
        log.warning("round %d says stop (%s) and stopping_action is 'pause', but this run belongs to no "
                    "deployment: no schedule to pause", round, why)
        return False
    with get_client(sync_client=True) as client:
        own = client.read_deployment(UUID(str(deployment.id)))
        schedules = [s for s in own.schedules if s.active]
        for schedule in schedules:
            client.update_deployment_schedule(own.id, schedule.id, active=False)
    log.warning("round %d says stop (%s): paused %d schedule(s) of deployment %r — no further scheduled rounds "
                "(resume in the UI, or `prefect deployment schedule resume %s/%s <schedule id>`)", round, why,
                len(schedules), deployment.name, flow_run.flow_name, deployment.name)
    return bool(schedules)


def _shardable(ws: Workspace) -> bool:
    """Whether the score step can run in shards: not for the embedding strategies, whose candidate
    subsample spans the whole pool (they score in this process, said in the log)."""
    from tasks.strategy import workspace_strategy

    if workspace_strategy(ws.params()).needs_features:
        get_run_logger().info("score: %s keeps a candidate subsample of the whole pool: scoring in one "
                              "process (workers ignored)", ws.params().heuristic)
        return False
    return True


def _score_on_dask(workspace: str, round: int, device: str | None, workers: int, address: str | None) -> dict:
    from flows.dask_runner import dask_task_runner, workers_report_here

    with workers_report_here():
        return score_pool_sharded.with_options(task_runner=dask_task_runner(workers, address))(
            workspace, round, max(workers, 1), device)


@flow(name="al-score-sharded")
def score_pool_sharded(workspace: str, round: int, shards: int, device: str | None = None) -> dict:
    """The score step, in ``shards`` pieces on the flow's task runner (run when DVC says it is out of date)."""
    from tasks.prefect_tasks import run_recorded, score_shard_task
    from tasks.score import merge_shards, plan_scoring, shard_ids
    from tasks.scores_file import write_scores

    ws = Workspace(workspace)

    def run() -> dict:
        plan = plan_scoring(ws, round)
        pieces = shard_ids(plan.ids, shards)
        get_run_logger().info("score: %d images in %d shards", len(plan.ids), len(pieces))
        futures = score_shard_task.map(workspace, round, pieces, unmapped(device))
        return write_scores(ws, plan, ws.params(), merge_shards([f.result() for f in futures], ws.params()))

    return run_recorded(workspace, round, pipeline.SCORE.name, run)


def _oracle_fill_inbox(ws: Workspace, round: int) -> None:
    """The oracle's answers for ``round``: the initial labels, or the previous round's queries (idempotent)."""
    if round == 0:
        oracle.initial_labels(ws)
    else:
        oracle.answer_queries(ws, round - 1)


@flow(name="al-simulate", log_prints=True)
def al_simulate(workspace: str, rounds: int = 3, device: str | None = None, workers: int = 1,
                dask_address: str | None = None, baseline: str | None = None) -> list[dict]:
    """Run ``rounds`` unattended rounds, the oracle answering each round's queries.

    ``baseline``: then replay the study with this reference acquisition ("random") from the same
    start (tasks/baseline.py); its summary is the last item of the returned list
    (``{"baseline": ...}``), and its learning curve beside the workspace's is an artifact.
    """
    results = [al_round(workspace, simulate=True, device=device, workers=workers, dask_address=dask_address)
               for _ in range(rounds)]
    if baseline:
        results.append(baseline_task(workspace, baseline, device))
    return results
