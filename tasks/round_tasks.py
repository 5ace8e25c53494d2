"""Prefect task wrappers of the round steps: caching keys, retries, artifacts.

Cache keys are content hashes of what a step reads (labels, manifest, params, checkpoint) and
of the step's code — never run ids — so a rerun of an interrupted round skips the steps that
finished and redoes only what is missing. Each step is also idempotent on disk, so a lost
Prefect cache (another machine, a wiped PREFECT_HOME) costs time, never correctness.
"""

from __future__ import annotations

import base64
import hashlib
import inspect

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext

import al_lib
from tasks import ingest, query, score, train, validation, versioning
from tasks.train import LEARNING_CURVE
from tasks.workspace import (
    LABELS, MANIFEST, MODEL, PARAMS_FILE, QUERY_PARAMS, SCORE_PARAMS, SCORES, TRAIN_PARAMS, Workspace,
)

SNAPSHOT_PATHS = (PARAMS_FILE, MANIFEST, "dvc.yaml", "data/inbox/processed")


class ValidationFailed(RuntimeError):
    """The labelled set or manifest broke an expectation; see the validation-failures artifact."""


def _code_digest(*functions) -> str:
    text = "".join(inspect.getsource(inspect.getmodule(f)) for f in functions) + al_lib.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _content_key(step: str, files: tuple[str, ...], params: tuple[str, ...], code: str):
    """Cache key: the step, the round, the content of the files and params fields it reads, its code."""
    def key(context: TaskRunContext, parameters: dict) -> str:
        ws = Workspace(parameters["workspace"])
        digest = hashlib.sha256((ws.file_digest(*files) + ws.params_digest(*params)).encode()).hexdigest()
        return f"{step}-r{parameters['round']}-{digest[:24]}-{code}"

    return key


@task(name="validate", cache_key_fn=_content_key("validate", (MANIFEST, LABELS), ("classes",),
                                                  _code_digest(validation.load_and_validate)), persist_result=True)
def validate_task(workspace: str, round: int) -> dict:
    """Great Expectations over manifest + labels; a failure stops the round before training."""
    ws = Workspace(workspace)
    report = validation.load_and_validate(ws.root, ws.params().classes, docs_dir=ws.path("validation/data_docs"))
    if not report.success:
        create_markdown_artifact(report.to_markdown(), key="validation-failures",
                                 description=f"round {round}: failing rows")
        raise ValidationFailed(report.summary())
    return report.statistics


@task(name="ingest-annotations", retries=2, retry_delay_seconds=1)
def ingest_task(workspace: str, round: int, source: str = "human") -> dict:
    return ingest.ingest_step(Workspace(workspace), round, source=source)


@task(name="snapshot", retries=2, retry_delay_seconds=2)
def snapshot_task(workspace: str, round: int) -> dict:
    """DVC-track data/labels.csv, commit and tag ``round-N`` (a no-op when already tagged)."""
    ws = Workspace(workspace)
    paths = [p for p in SNAPSHOT_PATHS if ws.path(p).exists()]
    snap = versioning.snapshot(ws.root, round, dvc_targets=(LABELS,), git_paths=paths)
    return {"tag": snap.tag, "commit": snap.commit, "created": snap.created}


@task(name="train", cache_key_fn=_content_key("train", (LABELS, MANIFEST), TRAIN_PARAMS,
                                               _code_digest(train.train_step)), persist_result=True)
def train_task(workspace: str, round: int, device: str | None = None) -> dict:
    return train.train_step(Workspace(workspace), round, device=device)


@task(name="score-pool", cache_key_fn=_content_key("score", (MODEL, LABELS, MANIFEST), SCORE_PARAMS,
                                                    _code_digest(score.score_step)), persist_result=True)
def score_task(workspace: str, round: int, device: str | None = None) -> dict:
    return score.score_step(Workspace(workspace), round, device=device)


@task(name="score-shard", retries=1, retry_delay_seconds=2)
def score_shard_task(workspace: str, round: int, ids: list[str], device: str | None = None) -> dict:
    """MC scores of one shard of the planned pool subsample (runs on a Dask worker)."""
    return score.score_ids(Workspace(workspace), round, ids, device=device)


@task(name="export-queries", cache_key_fn=_content_key("query", (SCORES,), QUERY_PARAMS,
                                                        _code_digest(query.query_step)), persist_result=True)
def query_task(workspace: str, round: int) -> list[dict]:
    return query.query_step(Workspace(workspace), round).to_dict("records")


@task(name="publish-artifacts")
def artifacts_task(workspace: str, round: int, queries: list[dict], metrics: dict) -> None:
    """A table of the queries and a markdown report: metrics, class balance, learning curve."""
    ws = Workspace(workspace)
    create_table_artifact(queries, key="queries", description=f"round {round}: images to label next")
    create_markdown_artifact(round_report(ws, round, metrics), key="round-report",
                             description=f"round {round}: metrics and learning curve")


def round_report(ws: Workspace, round: int, metrics: dict) -> str:
    """Markdown with the round's metrics, the class balance of the labels and the learning curve."""
    labels = ws.labels()
    counts = labels["label"].value_counts().reindex(ws.params().classes, fill_value=0)
    lines = [f"# Round {round}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "## Labels per class", "", "| class | labels |", "|---|---|"]
    lines += [f"| {c} | {n} |" for c, n in counts.items()]
    png = ws.path(LEARNING_CURVE)
    if png.is_file():
        encoded = base64.b64encode(png.read_bytes()).decode()
        lines += ["", "## Learning curve", "", f"![learning curve](data:image/png;base64,{encoded})"]
    return "\n".join(lines)
