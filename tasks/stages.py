"""`al stage NAME`: one step of tasks/pipeline.py, as ``dvc repro`` runs it.

``dvc repro`` recomputes the steps of the round named in ``round.yaml`` — the flow's round in
progress, or its last finished one — with the same step functions as the Prefect flow; every draw
is seeded by (seed, round, step), so on the same labels it exports exactly the flow's queries.
Ingesting annotations and recording the round (commit + tag ``round-N``) stay with the flow: a
DVC stage must not commit.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.pipeline import STEPS
from tasks.workspace import Workspace

logger = logging.getLogger(__name__)


def run_stage(name: str, path: Path, *, device=None) -> None:
    """Run step ``name`` on the workspace at ``path``; raises on failure (dvc then stops)."""
    if name not in STEPS:
        raise ValueError(f"unknown stage {name!r}; the steps are {', '.join(STEPS)}")
    ws = Workspace(path)
    STEPS[name].function()(ws, ws.round(), device=device, progress=True)
