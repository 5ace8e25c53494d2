"""Prefect task wrappers of the round's steps: the step runs unless DVC's record says it is up to date.

No cache keys here: whether a step reruns is decided by ``dvc status`` on the step's declared
inputs (tasks/pipeline.py), and a step that ran is recorded with ``dvc commit`` — so the record
lives in the workspace (``dvc.lock``), shared with ``dvc repro``, and nothing another workspace
or a lost file left behind can satisfy it. Prefect keeps orchestration, retries, logs, artifacts.
"""

from __future__ import annotations

import base64
import math
import os
import sys
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from tasks import dvc_repo, ingest
from tasks.pipeline import STEPS
from tasks.validate import ValidationFailed
from tasks.workspace import LEARNING_CURVE, ROUNDS_METRICS, SCORE_HISTOGRAM, Workspace


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
    return run_recorded(workspace, round, step,
                        lambda: STEPS[step].function()(ws, round, device=device, progress=show_progress()))


def show_progress() -> bool:
    """Progress bars (training epochs, scoring batches) on a terminal; quiet when stderr is a file
    or pipe (logs, workers) and in CI (``CI`` set, as CI services do)."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() in ("", "0", "false")


@task(name="ingest-annotations", cache_policy=NONE)
def ingest_task(workspace: str, round: int, source: str = "human") -> dict:
    """Merge the inbox into data/labels.csv (idempotent: a rerun finds the labels already present)."""
    return ingest.ingest_step(Workspace(workspace), round, source=source)


@task(name="publish-artifacts", cache_policy=NONE)
def artifacts_task(workspace: str, round: int, queries: list[dict], metrics: dict) -> None:
    """The round's artifacts: the ``queries`` table (scores rounded), ``query-thumbnails`` (the
    grid of queried images with rank, score and predicted class) and the ``round-report``
    (metrics, class balance, thumbnails, pool-score histogram, learning curve)."""
    ws = Workspace(workspace)
    create_table_artifact([_rounded(q) for q in queries], key="queries",
                          description=f"round {round}: images to label next")
    grid = ws.query_thumbnails(round)
    if grid.is_file():
        create_markdown_artifact(
            f"# Round {round}: images to label next\n\n" + _png_markdown(grid, "queried images", ws),
            key="query-thumbnails", description=f"round {round}: thumbnails of the queries")
    create_markdown_artifact(round_report(ws, round, metrics), key="round-report",
                             description=f"round {round}: metrics, queries and learning curve")


def _rounded(row: dict, digits: int = 4) -> dict:
    """A query row for display: floats to ``digits`` decimals, NaN (no score) as an empty cell."""
    return {k: ("" if isinstance(v, float) and math.isnan(v) else round(v, digits) if isinstance(v, float) else v)
            for k, v in row.items()}


def _png_markdown(png: Path, alt: str, ws: Workspace) -> str:
    """A PNG inlined as a data URI (the UI shows it with no file server), with its workspace path."""
    encoded = base64.b64encode(png.read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})\n\n`{png.relative_to(ws.root).as_posix()}`"


def round_report(ws: Workspace, round: int, metrics: dict) -> str:
    """Markdown with the round's metrics, the class balance of the labels (trained on / held out),
    the queried images, the histogram of pool scores and the learning curve."""
    labels = ws.labels()
    held_out = labels["id"].isin(ws.held_out_ids())
    classes = ws.params().classes
    train = labels[~held_out]["label"].value_counts().reindex(classes, fill_value=0)
    test = labels[held_out]["label"].value_counts().reindex(classes, fill_value=0)
    lines = [f"# Round {round}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    from tasks.stopping import read_stopping, stopping_lines

    lines += ["", "## Stopping", ""] + [f"- {line.removeprefix('stopping: ')}" for line in stopping_lines(read_stopping(ws))]
    lines += ["", "## Labels per class", "", "| class | trained on | held out (measure the model) |", "|---|---|---|"]
    lines += [f"| {c} | {train[c]} | {test[c]} |" for c in classes]
    figures = (("Images to label next", ws.query_thumbnails(round), "queried images",
                "Rank, acquisition score and predicted class of each query (also the `queries` table and "
                "the `query-thumbnails` artifact)."),
               ("Pool scores", ws.path(SCORE_HISTOGRAM), "histogram of pool scores",
                "Scores of the scored pool subsample; the queried images are marked."),
               ("Learning curve", ws.path(LEARNING_CURVE), "learning curve", ""))
    for heading, png, alt, caption in figures:
        if png.is_file():
            lines += ["", f"## {heading}", ""] + ([caption, ""] if caption else []) + [_png_markdown(png, alt, ws)]
    return "\n".join(lines)


@task(name="baseline", cache_policy=NONE)
def baseline_task(workspace: str, baseline: str, device: str | None = None) -> dict:
    """The reference arm of a simulation (:func:`tasks.baseline.run_baseline`) and an artifact
    ``learning-curve-vs-<baseline>`` with both arms' curves and the reference's accuracy per round."""
    from tasks.baseline import run_baseline

    ws = Workspace(workspace)
    result = run_baseline(ws, baseline, device=device, progress=show_progress())
    ours = pd.read_csv(ws.path(ROUNDS_METRICS)).set_index("round")["test_accuracy"]
    ours_name = f"{ws.params().heuristic} (this workspace)"
    lines = [f"# Learning curve vs {baseline} acquisition", "",
             f"| round | labels | test accuracy, {ours_name} | test accuracy, {baseline} |", "|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['n_labelled']} | {ours[r['round']]:.4f} | {r['test_accuracy']:.4f} |"
              for r in result["rows"]]
    lines += ["", _png_markdown(ws.path(result["plot"]), f"learning curve vs {baseline}", ws)]
    create_markdown_artifact("\n".join(lines), key=f"learning-curve-vs-{baseline}",
                             description=f"{result['rounds']} rounds: {ours_name} and the {baseline} reference")
    return result


@task(name="score-shard", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def score_shard_task(workspace: str, round: int, ids: list[str], device: str | None = None) -> dict:
    """MC scores of one shard of the planned pool subsample (runs on a Dask worker)."""
    from tasks.score import score_ids

    return score_ids(Workspace(workspace), round, ids, device=device)
