"""The workspace lock: one round (or DVC command, or pool change) at a time per workspace.

An exclusive ``fcntl.flock`` on ``.git/al-pipeline.lock``: other processes and threads wait (or
give up after ``timeout``); the holder's own thread may re-enter, so a flow can hold it around a
whole round while the steps it calls take it too. The kernel releases it when the holder dies,
so a killed round never leaves a stale lock.

A second ``al round`` on a busy workspace therefore *waits*: it logs once, as a warning, who holds
the lock (``pid 1234: al round ws``, read from the kernel's lock table ``/proc/locks``; nothing is
written to the workspace), and continues when the holder is done — then it plans its round anew
(usually: nothing left to do). See docs/reliability.md, "Concurrency".
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
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
        logger.warning("waiting for the workspace lock %s: held by %s; continuing when it is released",
                       lock_file, lock_holder(lock_file) or "another process")
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
                raise VersioningError(f"could not lock {lock_file} within {timeout} s: held by "
                                      f"{lock_holder(lock_file) or 'another process'}") from None
            time.sleep(0.05)


def lock_holder(lock_file: PathLike) -> str | None:
    """Who holds the ``flock`` on ``lock_file`` now, in words, or None when nobody does (or the
    kernel's lock table, Linux ``/proc/locks``, cannot be read).

    E.g. ``"pid 1234 (al round ws)"``, or ``"another thread of this process (pid 99)"``.
    """
    try:
        inode = os.stat(lock_file).st_ino
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:3678855 0 EOF" (blocked waiters: "1: -> FLOCK ...")
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        pid, where = fields[4], fields[5]
        if not pid.isdigit() or int(where.rsplit(":", 1)[-1]) != inode:
            continue
        if int(pid) == os.getpid():
            return f"another thread of this process (pid {pid})"
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            command = ""
        return f"pid {pid}" + (f" ({_short_command(command.strip())})" if command.strip() else "")
    return None


def _short_command(command: str) -> str:
    """``/venv/bin/python /venv/bin/al round ws`` → ``al round ws`` (the program's name, not its path)."""
    words = command.split()
    while len(words) > 1 and Path(words[0]).name.startswith("python"):
        words = words[1:]
    short = " ".join([Path(words[0]).name, *words[1:]]) if words else command
    return short if len(short) <= 120 else short[:117] + "..."
