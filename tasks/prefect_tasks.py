"""Prefect task wrappers of the round's steps: the step runs unless DVC's record says it is up to date.

No cache keys here: whether a step reruns is decided by ``dvc status`` on the step's declared
inputs (tasks/pipeline.py), and a step that ran is recorded with ``dvc commit`` — so the record
lives in the workspace (``dvc.lock``), shared with ``dvc repro``, and nothing another workspace
or a lost file left behind can satisfy it. Prefect keeps orchestration, retries, logs, artifacts.
"""

from __future__ import annotations

import base64
import sys

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from tasks import dvc_repo, ingest
from tasks.pipeline import STEPS
from tasks.validate import ValidationFailed
from tasks.workspace import LEARNING_CURVE, Workspace


def run_recorded(workspace: str, round: int, step: str, run) -> dict:
    """Call ``run()`` when DVC finds ``step`` out of date, then record it in ``dvc.lock``.

    The one place that decides whether a step reruns, whichever way it runs (in this process, or
    sharded on Dask). Returns ``{"step", "ran", "reasons", "result"}`` (``result``: what ``run``
    returned, when it ran).
    """
    log = get_run_logger()
    reasons = dvc_repo.stage_changes(workspace, step)
    if not reasons:
        log.info("%s: up to date (recorded in dvc.lock), not rerun", step)
        return {"step": step, "ran": False, "reasons": [], "result": None}
    log.info("%s: running (%s)", step, "; ".join(reasons))
    try:
        result = run()
    except ValidationFailed as failure:
        create_markdown_artifact(failure.report.to_markdown(), key="validation-failures",
                                 description=f"round {round}: failing rows")
        raise
    dvc_repo.commit_stage(workspace, step)
    return {"step": step, "ran": True, "reasons": reasons, "result": result}


@task(name="step", cache_policy=NONE)
def step_task(workspace: str, round: int, step: str, device: str | None = None) -> dict:
    """Run ``step`` of ``round`` in this process when DVC finds it out of date (:func:`run_recorded`)."""
    ws = Workspace(workspace)
    # Progress bars (training epochs, scoring batches) on a terminal; quiet in logs and CI.
    return run_recorded(workspace, round, step,
                        lambda: STEPS[step].function()(ws, round, device=device, progress=sys.stderr.isatty()))


@task(name="ingest-annotations", cache_policy=NONE)
def ingest_task(workspace: str, round: int, source: str = "human") -> dict:
    """Merge the inbox into data/labels.csv (idempotent: a rerun finds the labels already present)."""
    return ingest.ingest_step(Workspace(workspace), round, source=source)


@task(name="publish-artifacts", cache_policy=NONE)
def artifacts_task(workspace: str, round: int, queries: list[dict], metrics: dict) -> None:
    """A table of the queries and a markdown report: metrics, class balance, learning curve."""
    ws = Workspace(workspace)
    create_table_artifact(queries, key="queries", description=f"round {round}: images to label next")
    create_markdown_artifact(round_report(ws, round, metrics), key="round-report",
                             description=f"round {round}: metrics and learning curve")


def round_report(ws: Workspace, round: int, metrics: dict) -> str:
    """Markdown with the round's metrics, the class balance of the labels and the learning curve."""
    labels = ws.labels()
    held_out = labels["id"].isin(ws.held_out_ids())
    classes = ws.params().classes
    train = labels[~held_out]["label"].value_counts().reindex(classes, fill_value=0)
    test = labels[held_out]["label"].value_counts().reindex(classes, fill_value=0)
    lines = [f"# Round {round}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "## Labels per class", "", "| class | trained on | held out (measure the model) |", "|---|---|---|"]
    lines += [f"| {c} | {train[c]} | {test[c]} |" for c in classes]
    png = ws.path(LEARNING_CURVE)
    if png.is_file():
        encoded = base64.b64encode(png.read_bytes()).decode()
        lines += ["", "## Learning curve", "", f"![learning curve](data:image/png;base64,{encoded})"]
    return "\n".join(lines)


@task(name="score-shard", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def score_shard_task(workspace: str, round: int, ids: list[str], device: str | None = None) -> dict:
    """MC scores of one shard of the planned pool subsample (runs on a Dask worker)."""
    from tasks.score import score_ids

    return score_ids(Workspace(workspace), round, ids, device=device)
