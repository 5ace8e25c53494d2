"""Concurrency: rounds started at once on one workspace wait for each other; nothing is corrupted.

The behaviour (docs/reliability.md, "Concurrency"): the workspace lock (tasks/lock.py, ``flock``)
admits one round at a time across processes and threads. A second `al round` *waits* — it says so
once, naming the holder (``held by pid N (al round ws)``) — and when the lock is free it plans
its round anew: the round the first one finished is not run again ("skipped: no new
annotations"), annotations that arrived meanwhile start the next one. Nothing is refused, lost or
done twice.

One case covers both shapes of the problem: a thread of this process holds the lock (what a flow
run in-process does around its round, and what Prefect task threads see), and two `al round`
processes start at once; both wait, naming the holder; once it lets go, one runs round 1 and the
other then finds nothing to do.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from round_helpers import copy_workspace, expected_labels, round_invariants, start_round
from tasks.lock import workspace_lock

pytestmark = pytest.mark.slow  # one round on a real Prefect server


@pytest.mark.timeout(900)
def test_two_rounds_at_once_wait_for_the_lock_and_run_the_round_once(round1_workspace, prefect_env, tmp_path,
                                                                     dvc_status):
    ws = copy_workspace(round1_workspace, tmp_path / "ws")
    expected = expected_labels(ws)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with workspace_lock(ws):
            held.set()
            release.wait(600)

    holder = threading.Thread(target=hold)
    holder.start()
    runs = []
    try:
        assert held.wait(30)
        runs = [start_round(ws, prefect_env, home=tmp_path / f"home-{i}") for i in range(2)]
        waiting = f"waiting for the workspace lock {ws / '.git' / 'al-pipeline.lock'}: held by pid {os.getpid()}"
        deadline = time.monotonic() + 600
        while not all(waiting in run.output for run in runs):
            assert time.monotonic() < deadline, "\n---\n".join(run.output[-2000:] for run in runs)
            assert all(run.proc.poll() is None for run in runs), "\n---\n".join(r.output[-2000:] for r in runs)
            time.sleep(0.2)
    finally:
        release.set()
        holder.join(30)
    codes = [run.wait() for run in runs]
    outputs = [run.output for run in runs]
    assert codes == [0, 0], "\n---\n".join(o[-3000:] for o in outputs)
    done = [o for o in outputs if "steps run: validate, train, score, query; tagged round-1" in o]
    skipped = [o for o in outputs if "round 1: skipped (no new annotations" in o]
    assert len(done) == 1 and len(skipped) == 1, "\n---\n".join(o[-3000:] for o in outputs)
    problems = round_invariants(ws, expected, rounds=[0, 1], dvc_status=dvc_status(ws), round=1)
    assert not problems, problems
