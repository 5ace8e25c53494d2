"""DVC plumbing of a workspace: init, track data, the record of each pipeline step (dvc.lock).

DVC is the one record of what each step ran on: a step is up to date when ``dvc status`` finds its
dependencies (files, params, code) and outputs unchanged since the ``dvc.lock`` entry, and
:func:`commit_stage` writes that entry after the step ran in this process (``dvc commit``), so a
flow round and ``dvc repro`` share one record. (Reading a file at a round: ``dvc.api.read``.) Everything runs under the workspace lock, since DVC
itself fails at once on a concurrent command instead of waiting.
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.commands import PathLike, dvc_executable, relative_to_repo, run
from tasks.lock import workspace_lock

logger = logging.getLogger(__name__)


def _dvc_logging_as_a_library() -> None:
    """``import dvc`` installs handlers writing to the sys.stdout/stderr of that moment (a CLI's
    set-up): in a long-lived process they outlive those streams and raise. Route DVC's records
    through the caller's logging instead, warnings only (it logs each lock-file update)."""
    log = logging.getLogger("dvc")
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = True


def dvc(repo: PathLike, *args: str) -> str:
    """Run the environment's ``dvc`` in ``repo`` under the workspace lock; return its stdout."""
    with workspace_lock(repo):
        return run([*dvc_executable(), *args], repo)


@contextlib.contextmanager
def open_repo(repo: PathLike) -> Iterator:
    """DVC's ``Repo`` of the workspace, in this process (saves an interpreter start, ~1-3 s, per query).

    DVC's Python API resolves stage paths against the process's working directory (its CLI
    changes into the repository first), so this does too, under the workspace lock, and changes
    back on exit.
    """
    from dvc.repo import Repo  # heavy: only on use

    _dvc_logging_as_a_library()
    with workspace_lock(repo):
        previous = os.getcwd()
        os.chdir(repo)
        try:
            with Repo(".") as handle:
                yield handle
        finally:
            os.chdir(previous)


def init_dvc(repo: Path) -> None:
    """``dvc init`` unless done; autostage on, analytics off (in ``.dvc/config``)."""
    with workspace_lock(repo):
        if not (repo / ".dvc").is_dir():
            dvc(repo, "init", "-q")
            logger.info("initialised DVC in %s", repo)
        for key, value in (("core.autostage", "true"), ("core.analytics", "false")):
            config_set(repo, key, value)


def config_set(repo: Path, key: str, value: str) -> None:
    """Set a project-level DVC option, unless ``.dvc/config`` already has that value."""
    # `dvc config` costs ~0.5 s per call; its INI-style file parses fine with configparser.
    section, _, option = key.rpartition(".")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(repo / ".dvc" / "config")
        current = parser.get(section, option, fallback=None)
    except configparser.Error:
        current = None
    if current != value:
        dvc(repo, "config", key, value)


def track(path: PathLike, targets: Iterable[PathLike]) -> list[str]:
    """``dvc add`` ``targets`` (files or folders) and ``git add`` what DVC wrote (nothing committed).

    Returns the ``.dvc`` files (relative to the workspace), e.g. ``["data/labels.csv.dvc"]``; the
    ``.gitignore`` files DVC writes beside the targets are staged too. Unchanged data is not
    re-hashed (DVC's state db), so re-tracking a large folder costs what changed.
    """
    from tasks.git_repo import git

    repo = Path(path)
    rel = [relative_to_repo(repo, t) for t in targets]
    if not rel:
        return []
    with workspace_lock(repo):
        dvc(repo, "add", "-q", *rel)
        dvc_files = [f"{t}.dvc" for t in rel]
        ignores = sorted({(Path(t).parent / ".gitignore").as_posix() for t in rel})
        git(repo, "add", "--", *dvc_files, *(f for f in ignores if (repo / f).exists()))
    logger.debug("DVC-tracked %s", ", ".join(rel))
    return dvc_files


def stage_changes(repo: PathLike, stage: str) -> list[str]:
    """Why ``stage`` is out of date, in words (``[]``: up to date per ``dvc.lock``).

    E.g. ``["never run"]``, ``["changed deps: data/labels.csv (modified)"]``, ``["changed deps:
    params.yaml (query_size)"]``, ``["changed outs: models/model.pt (deleted)"]``.
    """
    with open_repo(repo) as handle:
        status = handle.status(targets=[_target(repo, stage)])
    if status and not _recorded(repo, stage):
        return ["never run"]
    reasons = []
    for entry in next(iter(status.values()), []) if status else []:
        if isinstance(entry, str):  # "changed command", "always changed"
            reasons.append(entry)
            continue
        for kind, changes in entry.items():
            if isinstance(changes, dict):
                named = [f"{_short(repo, name)} ({how if isinstance(how, str) else ', '.join(how)})"
                         for name, how in changes.items()]
                more = f" and {len(named) - 3} more" if len(named) > 4 else ""
                reasons.append(f"{kind}: " + ", ".join(named[:3] if more else named) + more)
            else:
                reasons.append(f"{kind}: {changes}")
    if status and not reasons:
        reasons.append("changed")
    return reasons


def _recorded(repo: PathLike, stage: str) -> bool:
    import yaml

    lock = Path(repo) / "dvc.lock"
    return lock.is_file() and stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {})


def _short(repo: PathLike, name: str) -> str:
    """A dependency's path as a person reads it: code deps relative to the project checkout."""
    from tasks.pipeline import CODE_ROOT

    if os.path.isabs(name) and Path(name).is_relative_to(CODE_ROOT):
        return Path(name).relative_to(CODE_ROOT).as_posix()
    return name


def _target(repo: PathLike, stage: str) -> str:
    return f"dvc.yaml:{stage}"


def commit_stage(repo: PathLike, stage: str) -> None:
    """Record ``stage`` in ``dvc.lock`` as run on the current deps, caching its outputs (``dvc commit``)."""
    with open_repo(repo) as handle:
        handle.commit(_target(repo, stage), force=True)
