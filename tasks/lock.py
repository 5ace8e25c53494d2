"""The workspace lock: one round (or DVC command, or pool change) at a time per workspace.

An exclusive ``fcntl.flock`` on ``.git/al-pipeline.lock``: other processes and threads wait (or
give up after ``timeout``); the holder's own thread may re-enter, so a flow can hold it around a
whole round while the steps it calls take it too. The kernel releases it when the holder dies,
so a killed round never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.commands import PathLike, VersioningError, run

logger = logging.getLogger(__name__)

LOCK_NAME = "al-pipeline.lock"
_held = threading.local()


def _lock_path(repo: Path) -> Path:
    git_dir = repo / ".git"
    if not git_dir.is_dir():  # a worktree or submodule: .git is a file pointing elsewhere
        git_dir = Path(run(["git", "rev-parse", "--absolute-git-dir"], repo).strip())
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
                raise VersioningError(f"could not lock {lock_file} within {timeout} s") from None
            time.sleep(0.05)
