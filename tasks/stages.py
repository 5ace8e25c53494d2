"""The dvc.yaml stages: the same step functions as the Prefect flow, run by `al stage NAME`.

``dvc repro`` recomputes the compute half of a round — validate → train → score → query — for
the round of the latest labelled snapshot; ingesting annotations and snapshotting them (git tag
``round-N``) stay with the flow, since a stage must not commit or tag (see tasks/versioning.py).
Every draw is seeded by (seed, round, step), so on the same labels ``dvc repro`` exports exactly
the queries the flow exported for that round. ``prepare`` materialises the demo pool.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks import query, score, train, versioning
from tasks.workspace import Workspace

logger = logging.getLogger(__name__)


def stage_round(ws: Workspace) -> int:
    """The round a stage works on: that of the latest labelled snapshot (0 before the first).

    After the flow's round N (tag ``round-N``) this is N, so ``dvc repro`` reproduces round N;
    on a fresh workspace it is 0, the round the flow's first snapshot will be.
    """
    latest = versioning.latest_round(ws.root)
    return 0 if latest is None else latest


def run_stage(name: str, path: Path, *, device=None) -> None:
    """Run one stage on the workspace at ``path``; raises on failure (dvc then stops)."""
    ws = Workspace(path)
    if name == "prepare":
        from tasks.demo import prepare_demo_workspace

        prepare_demo_workspace(ws)
        return
    if name == "validate":
        from tasks.validation import load_and_validate

        report = load_and_validate(ws.root, ws.params().classes, docs_dir=ws.path("validation/data_docs"))
        print(report.summary())
        if not report.success:
            print(report.to_markdown())
            raise ValueError(report.summary())
        return
    n = stage_round(ws)
    if name == "train":
        train.train_step(ws, n, device=device, progress=True)
    elif name == "score":
        score.score_step(ws, n, device=device, progress=True)
    elif name == "query":
        query.query_step(ws, n, replace=True)
    else:
        raise ValueError(f"unknown stage {name!r}")
