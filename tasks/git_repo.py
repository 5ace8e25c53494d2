"""Git plumbing of a workspace: init, commit chosen paths, tags, reading a file at a revision.

Commits and tags always work on a bare machine: when neither the repository nor the global git
config has an identity, a default one is passed on the command line (never written to config).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tasks.commands import PathLike, VersioningError, relative_to_repo, run
from tasks.lock import workspace_lock

logger = logging.getLogger(__name__)

#: Identity used for commits and tags when neither the repository nor the global git config has one.
DEFAULT_USER_NAME = "al-pipeline"
DEFAULT_USER_EMAIL = "al-pipeline@localhost"
ROUND_TAG_RE = re.compile(r"^round-(\d+)$")


def git(repo: PathLike, *args: str, **kwargs) -> str:
    return run(["git", *args], repo, **kwargs)


def init_repo(repo: Path) -> bool:
    """``git init`` on branch ``main`` unless ``repo`` is a repository already; True when created."""
    repo.mkdir(parents=True, exist_ok=True)
    if (repo / ".git").exists():
        return False
    git(repo, "init", "-q")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/main")  # `git init -b` needs git >= 2.28
    logger.info("initialised git repository in %s", repo)
    return True


def _identity_args(repo: PathLike) -> list[str]:
    """``-c`` options that give git an identity (and no signing) for a commit or tag."""
    args = ["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    for key, default in (("user.name", DEFAULT_USER_NAME), ("user.email", DEFAULT_USER_EMAIL)):
        if not git(repo, "config", "--get", key, ok_codes=(0, 1)).strip():  # exit code 1: unset
            args += ["-c", f"{key}={default}"]
    return args


def git_write(repo: PathLike, *args: str) -> str:
    """A git command that creates a commit or tag, with an identity that always works."""
    return git(repo, *_identity_args(repo), *args)


def _stage(repo: Path, paths: Iterable[str]) -> list[str]:
    """Stage the current state of ``paths``; return those git may commit.

    Missing paths stage a deletion if git tracked them and are dropped otherwise; paths that
    ``.gitignore`` ignores (DVC outputs) are skipped with a log line.
    """
    present, missing = [], []
    for p in dict.fromkeys(paths):  # de-duplicate, keep order
        (present if (repo / p).exists() else missing).append(p)
    ignored = _ignored(repo, present)
    for p in ignored:
        logger.debug("not committing %s: ignored by git (DVC-tracked or an output)", p)
    present = [p for p in present if p not in ignored]
    if present:
        git(repo, "add", "-A", "--", *present)
    if missing:
        git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", *missing)
    return present + missing


def _ignored(repo: Path, paths: Sequence[str]) -> set[str]:
    if not paths:
        return set()
    # Tracked files are never reported as ignored; exit code 1: none ignored.
    out = git(repo, "check-ignore", "--stdin", "-z", stdin="\0".join(paths), ok_codes=(0, 1))
    return {p for p in out.split("\0") if p}


def _staged_changes(repo: Path, paths: Sequence[str]) -> list[str]:
    if not paths:
        return []
    out = git(repo, "diff", "--cached", "--name-only", "-z", "--no-renames", "--", *paths)
    return [p for p in out.split("\0") if p]


def commit_paths(path: PathLike, paths: Iterable[PathLike], message: str) -> str | None:
    """Commit whatever changed among ``paths`` (files or directories) and nothing else.

    Returns the commit sha, or None when nothing among ``paths`` changed. Deleted paths are
    committed as deletions; git-ignored paths are skipped; other staged changes stay staged.
    """
    repo = Path(path)
    rel = [relative_to_repo(repo, p) for p in paths]
    with workspace_lock(repo):
        changed = _staged_changes(repo, _stage(repo, rel))
        if not changed:
            logger.debug("nothing to commit among %s", ", ".join(rel))
            return None
        # `--only` with explicit paths: unrelated staged changes are left out of the commit.
        git_write(repo, "commit", "-q", "--no-verify", "-m", message, "--only", "--", *changed)
        sha = head_commit(repo)
    logger.info("committed %s: %s", sha[:7], message)
    return sha


def head_commit(path: PathLike) -> str:
    """The full sha of HEAD (VersioningError in a repository without commits)."""
    return git(path, "rev-parse", "--verify", "HEAD").strip()


def tag_commit(path: PathLike, tag: str) -> str | None:
    """The commit ``tag`` points at, or None when there is no such tag."""
    out = git(path, "rev-parse", "--verify", "-q", f"refs/tags/{tag}^{{commit}}", ok_codes=(0, 1)).strip()
    return out or None


def set_tag(path: PathLike, tag: str, commit: str, message: str) -> None:
    """Point the annotated tag ``tag`` at ``commit`` (moving it when it exists elsewhere)."""
    git_write(path, "tag", "-a", "-f", tag, "-m", message, commit)


def list_round_tags(path: PathLike) -> list[int]:
    """The rounds that have a ``round-N`` tag, ascending."""
    out = git(path, "tag", "--list", "round-*")
    rounds = (ROUND_TAG_RE.match(line.strip()) for line in out.splitlines())
    return sorted(int(m.group(1)) for m in rounds if m)


def is_clean(path: PathLike, paths: Iterable[PathLike] | None = None) -> bool:
    """True when git sees no changes (staged, unstaged or untracked) in ``paths`` (default all)."""
    repo = Path(path)
    spec = [relative_to_repo(repo, p) for p in paths] if paths is not None else []
    if paths is not None and not spec:
        return True
    return not git(repo, "status", "--porcelain", "--", *spec).strip()


def ensure_gitignore(gitignore: Path, entries: Iterable[str]) -> None:
    """Append the ``entries`` that ``gitignore`` lacks."""
    text = gitignore.read_text() if gitignore.exists() else ""
    present = set(text.splitlines())
    missing = [e for e in entries if e not in present]
    if missing:
        if text and not text.endswith("\n"):
            text += "\n"
        gitignore.write_text(text + "".join(f"{e}\n" for e in missing))
