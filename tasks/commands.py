"""Running the workspace's external tools (git, dvc) as subprocesses, with errors that say what failed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PathLike = str | os.PathLike

# Set by git hooks; inherited, they would point our commands at another repository or index.
_GIT_HOOK_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX")


class VersioningError(RuntimeError):
    """A git/DVC command failed, or a round snapshot conflicts with the existing history."""


def command_env() -> dict[str, str]:
    """The environment of a git/DVC subprocess: no inherited git hook variables, no analytics."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_HOOK_ENV}
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd: Sequence[str], repo: PathLike, *, stdin: str | None = None, ok_codes=(0,)) -> str:
    """Run ``cmd`` in ``repo``; return its stdout, or raise VersioningError (command, exit code,
    stderr) when the exit code is not in ``ok_codes``."""
    cmd = [str(c) for c in cmd]
    try:
        proc = subprocess.run(cmd, cwd=repo, input=stdin, check=False, capture_output=True, text=True,
                              env=command_env())
    except OSError as exc:  # executable missing, cwd missing
        raise VersioningError(f"could not run `{' '.join(cmd)}` in {repo}: {exc}") from exc
    if proc.returncode not in ok_codes:
        raise VersioningError(f"`{' '.join(cmd)}` failed in {repo} with exit code {proc.returncode}:\n"
                              f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def dvc_executable() -> list[str]:
    """The ``dvc`` of the running interpreter's environment (never another one on PATH)."""
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dvc"]


def relative_to_repo(repo: Path, target: PathLike) -> str:
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
