"""Git + DVC versioning of a workspace: init, snapshot + tag per round, read a file at a round.

A workspace is a git repository with DVC initialised in it. Every labelled snapshot is a git
commit tagged ``round-N`` (an annotated tag), so::

    read_at(workspace, "data/labels.csv", "round-3")

returns exactly the labels round 3 trained on, whether the file is DVC-tracked (read from the
local DVC cache) or git-tracked.

Everything here shells out to ``git`` and to the ``dvc`` executable of the running interpreter's
environment, never to a remote; failures raise :class:`VersioningError` carrying the command,
its exit code and its stderr.

Concurrency
-----------
Every mutating sequence (init, track, snapshot, commit, ``dvc repro``) and ``dvc status`` runs
under an exclusive ``fcntl.flock`` on ``.git/al-pipeline.lock`` (:func:`workspace_lock`), so two
rounds on the same workspace cannot interleave, and DVC commands wait for each other instead of
failing on DVC's own lock. The lock is re-entrant within a thread, so a flow may hold it around
a whole round while calling these functions. Reads (:func:`read_at`, tags, ``is_clean``) do not
take it, so a DVC stage may read history while ``dvc repro`` holds the lock; a stage must not
call the mutating functions (it runs in another process and would wait forever).
"""

from __future__ import annotations

import configparser
import contextlib
import csv
import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "DEFAULT_GIT_PATHS",
    "Snapshot",
    "VersioningError",
    "commit_paths",
    "dvc_repro",
    "dvc_status",
    "head_commit",
    "init_workspace_repo",
    "is_clean",
    "latest_round",
    "list_round_tags",
    "read_at",
    "round_tag",
    "snapshot",
    "track",
    "workspace_lock",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Identity used for commits and tags when neither the repository nor the global git config
#: has one (a bare CI machine).
DEFAULT_USER_NAME = "al-pipeline"
DEFAULT_USER_EMAIL = "al-pipeline@localhost"
#: What a round snapshot commits besides the ``.dvc`` files; paths that do not exist are skipped.
DEFAULT_GIT_PATHS = ("params.yaml", "data/pool/manifest.csv", "data/queries", "metrics")
#: Lines :func:`init_workspace_repo` makes sure the workspace ``.gitignore`` has.
GITIGNORE_ENTRIES = ("__pycache__/", "*.py[cod]", ".venv/", ".pytest_cache/")
LOCK_NAME = "al-pipeline.lock"
_TAG_RE = re.compile(r"^round-(\d+)$")
# Set by git hooks; inherited, they would point our commands at another repository or index.
_GIT_HOOK_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX")


class VersioningError(RuntimeError):
    """A git/DVC command failed, or a round snapshot conflicts with the existing history."""


@dataclass(frozen=True)
class Snapshot:
    """A labelled snapshot: the commit tagged ``round-<round>``.

    ``created`` is False when the tag already existed (a resumed round) and nothing was done.
    """

    round: int
    tag: str
    commit: str
    created: bool


def round_tag(round: int) -> str:
    """The git tag of round ``round``: ``"round-<round>"``."""
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ValueError(f"round must be a non-negative int, got {round!r}")
    return f"round-{round}"


# --------------------------------------------------------------------------- running commands


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_HOOK_ENV}
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _run(
    cmd: Sequence[str], repo: PathLike, *, stdin: str | None = None, ok_codes=(0,)
) -> str:
    """Run ``cmd`` in ``repo``; return its stdout, or raise VersioningError when the exit
    code is not in ``ok_codes``."""
    cmd = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            cmd, cwd=repo, input=stdin, check=False, capture_output=True, text=True, env=_env()
        )
    except OSError as exc:  # executable missing, cwd missing
        raise VersioningError(f"could not run `{' '.join(cmd)}` in {repo}: {exc}") from exc
    if proc.returncode not in ok_codes:
        raise VersioningError(
            f"`{' '.join(cmd)}` failed in {repo} with exit code {proc.returncode}:\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def _git(repo: PathLike, *args: str, **kwargs) -> str:
    return _run(["git", *args], repo, **kwargs)


def _dvc_command() -> list[str]:
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dvc"]


def _dvc(repo: PathLike, *args: str) -> str:
    # DVC fails at once on its own repo lock; ours makes concurrent callers wait instead.
    with workspace_lock(repo):
        return _run([*_dvc_command(), *args], repo)


def _identity_args(repo: PathLike) -> list[str]:
    """``-c`` options that give git an identity (and no signing) for a commit or tag."""
    args = ["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    for key, default in (("user.name", DEFAULT_USER_NAME), ("user.email", DEFAULT_USER_EMAIL)):
        if not _git_config(repo, key):
            args += ["-c", f"{key}={default}"]
    return args


def _git_config(repo: PathLike, key: str) -> str | None:
    # exit code 1: unset
    return _git(repo, "config", "--get", key, ok_codes=(0, 1)).strip() or None


def _git_write(repo: PathLike, *args: str) -> str:
    """A git command that creates a commit or tag, with an identity that always works."""
    return _git(repo, *_identity_args(repo), *args)


# --------------------------------------------------------------------------- locking

_held = threading.local()


def _lock_path(repo: Path) -> Path:
    git_dir = repo / ".git"
    if not git_dir.is_dir():  # a worktree or submodule: .git is a file pointing elsewhere
        git_dir = Path(_git(repo, "rev-parse", "--absolute-git-dir").strip())
    return git_dir / LOCK_NAME


@contextlib.contextmanager
def workspace_lock(path: PathLike, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the workspace's exclusive lock (``flock`` on ``.git/al-pipeline.lock``).

    Re-entrant within a thread. Other threads and processes wait; with ``timeout`` (seconds)
    a VersioningError is raised when the lock is not acquired in time.
    """
    lock_file = _lock_path(Path(path)).resolve()
    depths: dict[Path, int] = _held.__dict__.setdefault("depths", {})
    if depths.get(lock_file):
        depths[lock_file] += 1
        try:
            yield
        finally:
            depths[lock_file] -= 1
        return
    with open(lock_file, "a") as fh:
        _acquire(fh, lock_file, timeout)
        depths[lock_file] = 1
        try:
            yield
        finally:
            depths.pop(lock_file, None)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _acquire(fh, lock_file: Path, timeout: float | None) -> None:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        logger.info("waiting for %s: another process is working on this workspace", lock_file)
    if timeout is None:
        fcntl.flock(fh, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise VersioningError(
                    f"could not lock {lock_file} within {timeout} s"
                ) from None
            time.sleep(0.05)


# --------------------------------------------------------------------------- init / track


def init_workspace_repo(path: PathLike, *, initial_files: Iterable[PathLike] = ()) -> str:
    """Make ``path`` a git + DVC workspace and commit its skeleton; return the HEAD sha.

    Creates the directory, runs ``git init`` (branch ``main``) and ``dvc init``, sets DVC's
    ``core.autostage`` true and ``core.analytics`` false, adds :data:`GITIGNORE_ENTRIES` to
    ``.gitignore`` and commits these together with ``initial_files`` (paths inside the
    workspace, git-tracked; do not list files you will DVC-track).

    Idempotent: an existing repository is never re-initialised; only what is missing is added
    and committed (nothing is committed when nothing changed).
    """
    repo = Path(path)
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        _git(repo, "init", "-q")
        # `git init -b` needs git >= 2.28; setting HEAD works everywhere.
        _git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
        logger.info("initialised git repository in %s", repo)
    with workspace_lock(repo):
        if not (repo / ".dvc").is_dir():
            _dvc(repo, "init", "-q")
            logger.info("initialised DVC in %s", repo)
        for key, value in (("core.autostage", "true"), ("core.analytics", "false")):
            _dvc_config_set(repo, key, value)
        _ensure_gitignore(repo / ".gitignore", GITIGNORE_ENTRIES)
        skeleton = [".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore"]
        paths = skeleton + [_relative(repo, f) for f in initial_files]
        sha = _commit(repo, paths, "initialise active-learning workspace")
        if sha:
            logger.info("committed workspace skeleton at %s", sha[:7])
        return head_commit(repo)


def _dvc_config_set(repo: Path, key: str, value: str) -> None:
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
        _dvc(repo, "config", key, value)


def _ensure_gitignore(gitignore: Path, entries: Iterable[str]) -> None:
    text = gitignore.read_text() if gitignore.exists() else ""
    present = set(text.splitlines())
    missing = [e for e in entries if e not in present]
    if missing:
        if text and not text.endswith("\n"):
            text += "\n"
        gitignore.write_text(text + "".join(f"{e}\n" for e in missing))


def _relative(repo: Path, target: PathLike) -> str:
    """``target`` relative to the workspace (POSIX), refusing paths outside it."""
    p = Path(target)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(repo.resolve())
        except ValueError:
            raise VersioningError(f"{target} is outside the workspace {repo}") from None
    if ".." in p.parts:
        raise VersioningError(f"{target} is outside the workspace {repo}")
    return p.as_posix()


def track(path: PathLike, targets: Iterable[PathLike]) -> list[str]:
    """``dvc add`` ``targets`` (files or directories) and ``git add`` what DVC wrote.

    Returns the ``.dvc`` files (relative to the workspace), e.g. ``["data/labels.csv.dvc"]``.
    The ``.gitignore`` files DVC writes beside the targets are staged too. Nothing is
    committed. A target that git already tracks cannot be DVC-tracked (DVC refuses).
    """
    repo = Path(path)
    rel = [_relative(repo, t) for t in targets]
    if not rel:
        return []
    with workspace_lock(repo):
        _dvc(repo, "add", "-q", *rel)
        dvc_files = [_dvc_file(t) for t in rel]
        _git(repo, "add", "--", *dvc_files, *_dvc_gitignores(repo, rel))
    logger.info("DVC-tracked %s", ", ".join(rel))
    return dvc_files


def _dvc_file(target: str) -> str:
    """The ``.dvc`` file ``dvc add`` writes beside ``target``."""
    return f"{target}.dvc"


def _dvc_gitignores(repo: Path, targets: Iterable[str]) -> list[str]:
    files = {(Path(t).parent / ".gitignore").as_posix() for t in targets}
    return sorted(f for f in files if (repo / f).exists())


# --------------------------------------------------------------------------- commits


def _stage(repo: Path, paths: Iterable[str]) -> list[str]:
    """Stage the current state of ``paths``; return those git may commit.

    Missing paths stage a deletion if git tracked them and are dropped otherwise; paths that
    ``.gitignore`` ignores (typically DVC outputs) are skipped with a log line.
    """
    present, missing = [], []
    for p in dict.fromkeys(paths):  # de-duplicate, keep order
        (present if (repo / p).exists() else missing).append(p)
    ignored = _ignored(repo, present)
    for p in ignored:
        logger.info("not committing %s: ignored by git (DVC-tracked or an output?)", p)
    present = [p for p in present if p not in ignored]
    if present:
        _git(repo, "add", "-A", "--", *present)
    if missing:
        _git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", *missing)
    return present + missing


def _ignored(repo: Path, paths: Sequence[str]) -> set[str]:
    if not paths:
        return set()
    # Tracked files are never reported as ignored; exit code 1: none ignored.
    out = _git(repo, "check-ignore", "--stdin", "-z", stdin="\0".join(paths), ok_codes=(0, 1))
    return {p for p in out.split("\0") if p}


def _staged_changes(repo: Path, paths: Sequence[str]) -> list[str]:
    if not paths:
        return []
    out = _git(repo, "diff", "--cached", "--name-only", "-z", "--no-renames", "--", *paths)
    return [p for p in out.split("\0") if p]


def _commit(repo: Path, paths: Iterable[str], message: str) -> str | None:
    """Stage ``paths`` and commit only them (other staged changes stay staged).

    Returns the new commit's sha, or None when none of ``paths`` changed.
    """
    changed = _staged_changes(repo, _stage(repo, paths))
    if not changed:
        return None
    # `--only` with explicit paths: unrelated staged changes are left out of the commit.
    _git_write(repo, "commit", "-q", "--no-verify", "-m", message, "--only", "--", *changed)
    return head_commit(repo)


def commit_paths(path: PathLike, paths: Iterable[PathLike], message: str) -> str | None:
    """Commit whatever changed among ``paths`` (files or directories, git-tracked).

    Returns the commit sha, or None when nothing among ``paths`` changed. Deleted paths are
    committed as deletions; git-ignored paths are skipped.
    """
    repo = Path(path)
    rel = [_relative(repo, p) for p in paths]
    with workspace_lock(repo):
        sha = _commit(repo, rel, message)
    if sha:
        logger.info("committed %s at %s: %s", ", ".join(rel), sha[:7], message)
    else:
        logger.info("nothing to commit among %s", ", ".join(rel))
    return sha


# --------------------------------------------------------------------------- snapshots


def snapshot(
    path: PathLike,
    round: int,
    *,
    dvc_targets: Sequence[PathLike] = ("data/labels.csv",),
    git_paths: Sequence[PathLike] = DEFAULT_GIT_PATHS,
    message: str | None = None,
) -> Snapshot:
    """Version the labelled state of round ``round``: DVC-track, commit, tag ``round-<round>``.

    Runs ``dvc add`` on ``dvc_targets``, commits their ``.dvc`` files (and DVC's ``.gitignore``
    files) with ``git_paths`` (missing ones skipped) as ``"round N: <message>"``, then
    creates the annotated tag. When nothing changed since HEAD no empty commit is made: HEAD
    is tagged.

    Safe to rerun. If the tag exists and the ``.dvc`` hashes it records equal the current
    ones, the existing snapshot is returned with ``created=False`` (nothing is committed or
    re-tagged; later changes to ``git_paths`` are not compared). If they differ, the round was
    already snapshotted with other data: VersioningError (the working tree keeps the new data
    and its freshly written ``.dvc`` file, staged, for a later round). A run that died between
    commit and tag is completed by the rerun (the commit holds the current content, so HEAD is
    tagged).

    Returns
    -------
    Snapshot
    """
    repo = Path(path)
    tag = round_tag(round)
    targets = [_relative(repo, t) for t in dvc_targets]
    with workspace_lock(repo):
        dvc_files = track(repo, targets)  # a no-op for unchanged data
        existing = _tag_commit(repo, tag)
        if existing is not None:
            return _check_existing(repo, round, tag, existing, dvc_files)
        paths = _snapshot_paths(repo, targets, git_paths)
        commit = _commit_snapshot(repo, round, paths, message)
        n_labels = _count_rows(repo, targets)
        _tag_round(repo, round, commit, n_labels)
    return Snapshot(round=round, tag=tag, commit=commit, created=True)


def _snapshot_paths(repo: Path, targets: list[str], git_paths: Iterable[PathLike]) -> list[str]:
    """What a snapshot commits: the targets' ``.dvc`` files, DVC's ``.gitignore`` files and
    ``git_paths``."""
    dvc_files = [_dvc_file(t) for t in targets]
    return [*dvc_files, *_dvc_gitignores(repo, targets), *(_relative(repo, p) for p in git_paths)]


def _commit_snapshot(repo: Path, round: int, paths: list[str], message: str | None) -> str:
    """Commit the snapshot; when nothing changed, return HEAD (the commit to tag)."""
    subject = f"round {round}: {message or 'labelled snapshot'}"
    sha = _commit(repo, paths, subject)
    if sha:
        logger.info("committed %s at %s", subject, sha[:7])
        return sha
    head = head_commit(repo)
    if _git(repo, "log", "-1", "--format=%s", head).startswith(f"round {round}:"):
        logger.info("completing the interrupted snapshot of round %d at %s", round, head[:7])
    else:
        logger.info("round %d: nothing changed since %s, tagging it", round, head[:7])
    return head


def _tag_round(repo: Path, round: int, commit: str, n_labels: int | None) -> None:
    tag = round_tag(round)
    counted = "" if n_labels is None else f" ({n_labels} label{'' if n_labels == 1 else 's'})"
    _git_write(repo, "tag", "-a", tag, "-m", f"round {round}{counted}", commit)
    logger.info("tagged %s at %s%s", tag, commit[:7], counted)


def _check_existing(
    repo: Path, round: int, tag: str, commit: str, dvc_files: list[str]
) -> Snapshot:
    for dvc_file in dvc_files:
        tagged = _dvc_hashes(_show(repo, tag, dvc_file))
        current = _dvc_hashes((repo / dvc_file).read_text())
        if tagged != current:
            raise VersioningError(
                f"{tag} was already snapshotted at {commit[:7]} with other data: "
                f"{dvc_file} records {tagged or 'nothing'} there but {current} now. "
                "Rounds are immutable: restore the tagged data "
                f"(git checkout {tag} -- {dvc_file} && dvc checkout {dvc_file}) "
                "or snapshot the new labels as a later round."
            )
    logger.info("%s already snapshotted at %s with the same data; nothing to do", tag, commit[:7])
    return Snapshot(round=round, tag=tag, commit=commit, created=False)


def _dvc_hashes(dvc_text: str | None) -> list[tuple[str, str]]:
    """(path, md5) of each output of a ``.dvc`` file; [] for None or no outputs."""
    if not dvc_text:
        return []
    outs = (yaml.safe_load(dvc_text) or {}).get("outs") or []
    return [(str(o.get("path")), str(o.get("md5"))) for o in outs]


def _show(repo: Path, rev: str, relpath: str) -> str | None:
    """A git-tracked file's content at ``rev``, or None if it is not there."""
    try:
        return _git(repo, "show", f"{rev}:{relpath}")
    except VersioningError:
        return None


def _tag_commit(repo: Path, tag: str) -> str | None:
    try:
        return _git(repo, "rev-parse", "--verify", "-q", f"refs/tags/{tag}^{{commit}}").strip()
    except VersioningError:
        return None


def _count_rows(repo: Path, targets: Sequence[str]) -> int | None:
    """Data rows of the first CSV file target (the labels), for log and tag messages."""
    for t in targets:
        f = repo / t
        if f.suffix == ".csv" and f.is_file():
            with open(f, newline="") as fh:
                return max(sum(1 for _ in csv.reader(fh)) - 1, 0)
    return None


# --------------------------------------------------------------------------- reading


def read_at(path: PathLike, relpath: PathLike, rev: str | None, *, encoding: str = "utf-8") -> str:
    """The text of ``relpath`` at git revision ``rev`` (a tag such as ``"round-3"``, a sha).

    Works for DVC-tracked files (read from the local DVC cache) and git-tracked ones;
    ``rev=None`` reads the working tree. Raises FileNotFoundError when the file is not in
    that revision, VersioningError for other failures (unknown revision, missing cache).
    """
    import dvc.api  # heavy: only on use
    from dvc.exceptions import DvcException, PathMissingError

    repo = Path(path)
    rel = _relative(repo, relpath)
    try:
        return dvc.api.read(rel, repo=str(repo), rev=rev, encoding=encoding)
    except PathMissingError as exc:
        raise FileNotFoundError(f"{rel} is not in {repo} at {rev or 'the working tree'}") from exc
    except DvcException as exc:
        raise VersioningError(f"could not read {rel} at {rev} in {repo}: {exc}") from exc


def list_round_tags(path: PathLike) -> list[int]:
    """The rounds that have a ``round-N`` tag, ascending."""
    out = _git(path, "tag", "--list", "round-*")
    rounds = (_TAG_RE.match(line.strip()) for line in out.splitlines())
    return sorted(int(m.group(1)) for m in rounds if m)


def latest_round(path: PathLike) -> int | None:
    """The highest tagged round, or None before the first snapshot."""
    rounds = list_round_tags(path)
    return rounds[-1] if rounds else None


def head_commit(path: PathLike) -> str:
    """The full sha of HEAD (VersioningError in a repository without commits)."""
    return _git(path, "rev-parse", "--verify", "HEAD").strip()


def is_clean(path: PathLike, paths: Iterable[PathLike] | None = None) -> bool:
    """True when git sees no changes (staged, unstaged or untracked) in ``paths`` (default all).

    Git-only: a modified DVC-tracked file shows up in :func:`dvc_status`, not here.
    """
    repo = Path(path)
    spec = [_relative(repo, p) for p in paths] if paths is not None else []
    if paths is not None and not spec:
        return True
    return not _git(repo, "status", "--porcelain", "--", *spec).strip()


# --------------------------------------------------------------------------- DVC pipeline


def dvc_repro(path: PathLike, *targets: str, force: bool = False) -> str:
    """Run ``dvc repro [--force] [targets...]`` under the workspace lock; return its stdout."""
    args = ["repro", *(["--force"] if force else []), *targets]
    out = _dvc(path, *args)
    logger.info("dvc %s finished in %s", " ".join(args), path)
    return out


def dvc_status(path: PathLike) -> dict:
    """Parsed ``dvc status --json``: {} when data and pipeline are up to date."""
    out = _dvc(path, "status", "--json").strip()
    return json.loads(out) if out else {}
