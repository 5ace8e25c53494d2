"""Round step: merge returned annotations from data/inbox/ into data/labels.csv."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from al_lib.annotations import read_annotations
from al_lib.labels import merge_annotations
from tasks.fault_points import fault_point
from tasks.workspace import Workspace

logger = logging.getLogger(__name__)


def ingest_step(ws: Workspace, round: int, *, source: str = "human", files: list[Path] | None = None) -> dict:
    """Read every inbox file, check it, merge all into the labels table, then move the files aside.

    All files are validated before anything is written: one bad file (unknown id, unknown class,
    conflicting labels, malformed CSV/JSON) raises ``AnnotationError`` naming file, row and field,
    and changes nothing. The labels file is written atomically *before* the inbox files move to
    ``data/inbox/processed/round-N/``, so a crash in between only leaves files that re-ingest as
    "already present" — never a lost or duplicated label.

    Returns a summary dict (files, n_new, n_already_present, per-class counts).
    """
    files = ws.inbox_files() if files is None else files
    if not files:
        logger.info("round %d: no annotation files in the inbox", round)
        return {"files": [], "n_new": 0, "n_already_present": 0, "class_counts": {}}
    labels, report = check_inbox(ws, files, round=round, source=source)
    ws.write_labels(labels)
    fault_point("ingest:labels-written")
    _move_aside(files, ws.processed_dir(round))
    logger.info("round %d: ingested %d new labels from %d file(s) (%d already present)", round,
                report.n_new, len(files), report.n_already_present)
    return {"files": [p.name for p in files], "n_new": report.n_new, "n_already_present": report.n_already_present,
            "class_counts": dict(report.class_counts)}


def check_inbox(ws: Workspace, files: list[Path] | None = None, *, round: int = 0, source: str = "human"):
    """Read and check every inbox file and merge them into the labels table, writing nothing.

    Returns ``(labels, report)`` as :func:`al_lib.labels.merge_annotations`; raises
    ``AnnotationError`` (file, row, field) for the first bad file.
    """
    params = ws.params()
    files = ws.inbox_files() if files is None else files
    known_ids = set(ws.manifest()["id"])
    batches = [read_annotations(path, known_ids=known_ids, classes=params.classes) for path in files]
    return merge_annotations(ws.labels(), pd.concat(batches, ignore_index=True), round=round, source=source)


def _move_aside(files: list[Path], target: Path) -> None:
    """Move processed files into ``target`` (never deleting one: same names get a numeric suffix)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        dest = target / path.name
        n = 1
        while dest.exists():
            dest = target / f"{path.stem}.{n}{path.suffix}"
            n += 1
        os.replace(path, dest)
