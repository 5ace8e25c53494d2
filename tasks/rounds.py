"""The round policy: which round a workspace is in, and how a finished round is recorded.

One place holds the round's state: ``round.yaml`` names the round in progress (or the last one),
and the annotated git tag ``round-N`` marks round N as finished. So:

- no tag ``round-N`` for the round in ``round.yaml``: round N is in progress (or not started) —
  whatever happened to it (annotations ingested, validation failed, killed mid-training), the next
  ``al round`` resumes it; it is never skipped, and its labels are trained on;
- tag ``round-N`` exists: round N is finished; round N+1 starts when annotations wait in the inbox.

The tag is set at the end of the round, on the commit that holds all of it: the labels it trained
on (``data/labels.csv.dvc``), params, ``dvc.yaml`` + ``dvc.lock`` (so the model and scores come back
with ``dvc checkout``), metrics, validation results, queries and the processed inbox files. So
``dvc metrics diff round-0 round-1``, ``dvc plots diff round-0 round-3`` and ``git checkout round-2``
work, and ``dvc.api.read("data/labels.csv", rev="round-N")`` gives exactly round N's labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tasks import dvc_repo, git_repo
from tasks.commands import VersioningError
from tasks.fault_points import fault_point
from tasks.workspace import (
    IMAGES_DIR, LABELS, MANIFEST, PARAMS_FILE, PROCESSED, QUERIES, ROUND_FILE, VALIDATION_RESULTS,
    Workspace,
)

logger = logging.getLogger(__name__)

#: What the round's commit holds besides ``.dvc`` files (paths that do not exist are skipped;
#: git-ignored ones — DVC-cached outputs — are recorded through dvc.lock instead).
ROUND_PATHS = (PARAMS_FILE, ROUND_FILE, "dvc.yaml", "dvc.lock", MANIFEST, LABELS + ".dvc", IMAGES_DIR + ".dvc",
               "data/.gitignore", "data/pool/.gitignore", PROCESSED, QUERIES, "metrics", VALIDATION_RESULTS,
               ".gitignore")


def round_tag(round: int) -> str:
    """The git tag of round ``round``: ``"round-<round>"``."""
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ValueError(f"round must be a non-negative int, got {round!r}")
    return f"round-{round}"


@dataclass(frozen=True)
class RoundState:
    """``round``: the round of ``round.yaml``; ``finished``: it has its tag."""

    round: int
    finished: bool

    @property
    def next_round(self) -> int:
        """The round an ``al round`` works on: this one while unfinished, else the next."""
        return self.round + 1 if self.finished else self.round


def round_state(ws: Workspace) -> RoundState:
    """Read the round state (see the module docstring); cheap: one file and one ``git rev-parse``."""
    n = ws.round()
    return RoundState(n, git_repo.tag_commit(ws.root, round_tag(n)) is not None)


@dataclass(frozen=True)
class RoundPlan:
    """What an ``al round`` does now: ``action`` is "resume" (round in progress), "start" (the next
    round: annotations wait, or ``allow_empty``), "rerun" (re-run the finished round's out-of-date
    steps) or "nothing"; ``stale`` maps out-of-date steps to DVC's reasons."""

    action: str
    round: int
    stale: dict
    reason: str = ""


def plan_round(ws: Workspace, *, allow_empty: bool = False, rerun: bool = False) -> RoundPlan:
    """Decide what the next ``al round`` does, reading the workspace only (nothing is written).

    Cheap when there is work; when the last round is finished and the inbox is empty it asks DVC
    which steps are out of date (a params or code change), to say so — they re-run with ``rerun``.
    """
    from tasks.pipeline import ROUND_STEPS

    state = round_state(ws)
    if not state.finished:
        return RoundPlan("resume", state.round, {})
    if ws.inbox_files() or allow_empty:
        return RoundPlan("start", state.next_round, {})
    stale = {s.name: r for s in ROUND_STEPS if (r := dvc_repo.stage_changes(ws.root, s.name))}
    if stale and rerun:
        return RoundPlan("rerun", state.round, stale)
    reason = "no new annotations"
    if stale:
        reason += (f"; round {state.round}'s steps {', '.join(stale)} are out of date "
                   f"({'; '.join(r[0] for r in stale.values())}): `al round --rerun` re-runs them")
    return RoundPlan("nothing", state.round, stale, reason)


def start_round(ws: Workspace, round: int) -> None:
    """Make ``round`` the round in progress (``round.yaml``), before anything of it is ingested."""
    state = round_state(ws)
    if round != state.next_round:
        raise VersioningError(f"cannot start round {round}: the workspace is at round {state.round}"
                              f"{' (finished)' if state.finished else ' (in progress)'}")
    ws.write_round(round)


def snapshot_labels(ws: Workspace) -> list[str]:
    """Put the labels in DVC's cache (``dvc add data/labels.csv``); staged, committed by :func:`record_round`."""
    return dvc_repo.track(ws.root, [LABELS])


def record_round(ws: Workspace, round: int, message: str) -> str:
    """Commit the round's state and point the annotated tag ``round-N`` at that commit.

    Re-recording a finished round whose outputs changed (a param edited, then ``al round`` or
    ``dvc repro`` re-ran some steps) commits the change and moves the tag: ``round-N`` always holds
    the round's final state. Returns the tagged commit.
    """
    snapshot_labels(ws)
    paths = [p for p in ROUND_PATHS if ws.path(p).exists() or _tracked(ws, p)]
    sha = git_repo.commit_paths(ws.root, paths, f"round {round}: {message}")
    fault_point("record:committed")
    tag = round_tag(round)
    commit = sha or git_repo.head_commit(ws.root)
    if git_repo.tag_commit(ws.root, tag) != commit:
        labels = ws.labels()
        git_repo.set_tag(ws.root, tag, commit, f"round {round} ({len(labels)} labels): {message}")
        logger.info("tagged %s at %s", tag, commit[:7])
    return commit


def _tracked(ws: Workspace, path: str) -> bool:
    return bool(git_repo.git(ws.root, "ls-files", "--", path).strip())


def trainable_labels(ws: Workspace, labels=None) -> int:
    """The number of labels (``labels``: a labels table, default data/labels.csv) a model can train
    on: those of images not held out for testing."""
    return int((~(ws.labels() if labels is None else labels)["id"].isin(ws.held_out_ids())).sum())


def queryable_ids(ws: Workspace, labels=None):
    """The pool ids a round may query, in manifest order: in the manifest, not held out and not
    labelled in ``labels`` (default data/labels.csv)."""
    labelled = set((ws.labels() if labels is None else labels)["id"])
    ids = ws.manifest()["id"]
    return ids[~ids.isin(ws.held_out_ids()) & ~ids.isin(labelled)]


def labels_to_train_on(ws: Workspace, labels=None) -> int:
    """The number of labels (``labels``: a labels table, default data/labels.csv) a model can train
    on; ValueError (before anything runs) when there are none."""
    n = trainable_labels(ws, labels)
    if n == 0:
        raise ValueError(f"{ws.path(LABELS)}: no label to train on yet — put annotations in data/inbox/ "
                         "(`al import-labels`), or run `al simulate` on a workspace made with --labels oracle")
    return n


def pool_left_to_query(ws: Workspace, labels=None) -> int:
    """The number of pool images a round can still query: in the manifest, not held out and not
    labelled in ``labels`` (default data/labels.csv); ValueError (before anything runs) when none."""
    n = len(queryable_ids(ws, labels))
    if n == 0:
        raise ValueError(f"{ws.path(MANIFEST)}: the pool is exhausted — every one of its "
                         f"{len(ws.manifest()) - len(ws.held_out_ids())} "
                         f"queryable images is labelled ({ws.path(LABELS)} and the inbox): add images with "
                         "`al add-images` before the next round")
    return n

