"""Which round a workspace is in: derived from its git tags and query files, nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from tasks import versioning
from tasks.workspace import HELD_OUT_SPLITS, LABELS, Workspace


@dataclass(frozen=True)
class RoundState:
    """``round``: the round to run; ``resume``: its snapshot exists but its queries do not."""

    round: int
    resume: bool


def round_state(ws: Workspace) -> RoundState:
    """Round N is finished once ``data/queries/round-N.csv`` exists; an unfinished tagged round resumes."""
    latest = versioning.latest_round(ws.root)
    if latest is None:
        return RoundState(0, False)
    if ws.query_paths(latest)[0].is_file():
        return RoundState(latest + 1, False)
    return RoundState(latest, True)


def require_training_labels(ws: Workspace) -> int:
    """The number of labels a model can train on; ValueError (before any snapshot) when there are none."""
    manifest = ws.manifest()
    splits = manifest["split"].str.lower() if "split" in manifest else None
    held_out = set(manifest["id"][splits.isin(HELD_OUT_SPLITS)]) if splits is not None else set()
    n = int((~ws.labels()["id"].isin(held_out)).sum())
    if n == 0:
        raise ValueError(f"{ws.path(LABELS)}: no label to train on yet — put annotations in data/inbox/ "
                         "(`al import-labels`), or run `al simulate` on a workspace made with --labels oracle")
    return n
