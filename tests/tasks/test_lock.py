"""tasks.lock: one holder at a time across threads and processes; re-entrant in its thread."""

import subprocess
import sys
import threading

import pytest

from tasks.commands import VersioningError
from tasks.lock import workspace_lock


def test_workspace_lock_is_exclusive_and_reentrant(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    held, release = threading.Event(), threading.Event()

    def hold():
        with workspace_lock(tmp_path):
            held.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    try:
        assert held.wait(10)
        with pytest.raises(VersioningError, match="could not lock"):
            with workspace_lock(tmp_path, timeout=0.1):
                pass
    finally:
        release.set()
        other.join()
    with workspace_lock(tmp_path, timeout=1), workspace_lock(tmp_path, timeout=1):
        pass


def test_workspace_lock_excludes_another_process(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tasks.lock import workspace_lock\n"
         f"with workspace_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(VersioningError, match="could not lock"):
            with workspace_lock(tmp_path, timeout=0.2):
                pass
    finally:
        holder.stdin.close()
        holder.wait(10)
    with workspace_lock(tmp_path, timeout=5):  # released when the holder exits
        pass
