"""tasks.lock: one holder at a time across threads and processes; re-entrant in its thread."""

import os
import subprocess
import sys
import threading

import pytest

from tasks.commands import VersioningError
from tasks.lock import lock_holder, workspace_lock


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
        # the timeout names the holder
        with pytest.raises(VersioningError, match=f"could not lock .* held by another thread of this process "
                                                  f"\\(pid {os.getpid()}\\)"):
            with workspace_lock(tmp_path, timeout=0.1):
                pass
    finally:
        release.set()
        other.join()
    with workspace_lock(tmp_path, timeout=1), workspace_lock(tmp_path, timeout=1):
        pass
    assert lock_holder(tmp_path / ".git" / "al-pipeline.lock") is None


def test_workspace_lock_excludes_another_process(tmp_path, caplog):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tasks.lock import workspace_lock\n"
         f"with workspace_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level("WARNING", logger="tasks.lock"):  # the waiter and the timeout name the holder
            with pytest.raises(VersioningError, match=f"could not lock .* held by pid {holder.pid} \\(-c import sys"):
                with workspace_lock(tmp_path, timeout=0.2):
                    pass
        lock_file = tmp_path.resolve() / ".git" / "al-pipeline.lock"
        assert f"waiting for the workspace lock {lock_file}: held by pid {holder.pid}" in caplog.text
    finally:
        holder.stdin.close()
        holder.wait(10)
    with workspace_lock(tmp_path, timeout=5):  # released when the holder exits
        pass


_COUNT = """\
import sys, time
from pathlib import Path
from tasks.lock import workspace_lock

def count(repo, n):
    counter = Path(repo) / "counter"
    for _ in range(n):
        with workspace_lock(repo):
            value = int(counter.read_text())
            time.sleep(0.002)  # a read-modify-write that loses increments unless the lock excludes
            counter.write_text(str(value + 1))

if __name__ == "__main__":
    count(sys.argv[1], int(sys.argv[2]))
"""


def test_workspace_lock_serialises_threads_and_processes_together(tmp_path):
    """Two processes and three threads of this one increment a counter file under the lock: no
    increment is lost, so every holder excluded every other, whichever kind."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "counter").write_text("0")
    n = 25
    procs = [subprocess.Popen([sys.executable, "-c", _COUNT, str(tmp_path), str(n)]) for _ in range(2)]
    script: dict = {"__name__": "count_script"}
    exec(_COUNT, script)  # the same function, in this process's threads
    count = lambda: script["count"](tmp_path, n)  # noqa: E731
    threads = [threading.Thread(target=count) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [p.wait(120) for p in procs] == [0, 0]
    assert int((tmp_path / "counter").read_text()) == 5 * n

