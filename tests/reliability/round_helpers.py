"""Helpers of the crash-safety and concurrency suites: `al round` as a killable subprocess, and the
invariants a workspace must hold after any kill once a rerun has completed the round.

``start_round`` runs ``al round`` in a session (process group) of its own with its output on a
pipe, read by a thread; ``kill_on`` SIGKILLs the whole group on an *observed* event: a line of its
output (a step's start message, an epoch line, a file written), or a child process appearing
(``dvc add``). ``round_invariants`` lists every broken guarantee (empty: all hold).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil

from query_comparison import query_differences
from reliability_helpers import VENV_BIN, user_env
from tasks import git_repo
from tasks.commands import VersioningError
from tasks.lock import LOCK_NAME, workspace_lock
from tasks.workspace import LABELS, Workspace

ROUND_TIMEOUT = 600


@dataclass
class RoundProcess:
    """A running ``al round``: its Popen, the lines it printed so far (stdout and stderr merged)."""

    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL the round's whole process group (its git/dvc children die with it)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = ROUND_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"al round ran past {timeout} s:\n{self.output[-3000:]}") from None
        self.reader.join(10)
        return code


def start_round(ws: Path, env: dict, *args: str, home: Path, extra_env: dict | None = None) -> RoundProcess:
    """``al round WS ARGS`` as a user's shell starts it, in a process group of its own, output read
    line by line (``env``: the Prefect server's ``PREFECT_API_URL`` and the like)."""
    environment = {**user_env(home), "PYTHONUNBUFFERED": "1", **env, **(extra_env or {})}
    proc = subprocess.Popen([str(VENV_BIN / "al"), "round", str(ws), *args], cwd=ws.parent, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run = RoundProcess(proc)

    def read() -> None:
        for line in proc.stdout:
            run.lines.append(line)

    run.reader = threading.Thread(target=read, daemon=True)
    run.reader.start()
    return run


class Line:
    """Kill when the round prints a line containing every one of ``texts``."""

    def __init__(self, *texts: str) -> None:
        self.texts = texts

    def seen(self, run: RoundProcess) -> bool:
        return any(all(t in line for t in self.texts) for line in list(run.lines))

    def __repr__(self) -> str:
        return f"the line {' … '.join(map(repr, self.texts))}"


class Child:
    """Kill while a child process of the round runs with all of ``words`` in its command line."""

    def __init__(self, *words: str) -> None:
        self.words = words

    def __repr__(self) -> str:
        return f"a child process `{' '.join(self.words)}`"

    def seen(self, run: RoundProcess) -> bool:
        try:
            children = psutil.Process(run.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return False
        for child in children:
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if all(w in cmdline for w in self.words):
                return True
        return False


def kill_on(run: RoundProcess, event, timeout: float = ROUND_TIMEOUT) -> bool:
    """SIGKILL ``run`` as soon as ``event`` (a :class:`Line` or :class:`Child`) is observed; returns
    True when killed, False when the round ended first (it did not reach the event)."""
    deadline = time.monotonic() + timeout
    while run.proc.poll() is None:
        if event.seen(run):
            run.kill()
            run.wait()
            return True
        if time.monotonic() > deadline:
            run.kill()
            raise AssertionError(f"{event} not seen within {timeout} s:\n{run.output[-3000:]}")
        time.sleep(0.01)
    run.wait()
    return False


def run_round(ws: Path, env: dict, *args: str, home: Path, extra_env: dict | None = None) -> RoundProcess:
    """``al round`` to its end; returns the finished process (check ``proc.returncode``)."""
    run = start_round(ws, env, *args, home=home, extra_env=extra_env)
    run.wait()
    return run


def flows_test_helpers():
    """tests/flows/test_deployment.py as a module: its real-server helpers (``_start``, ``_stop``,
    ``_wait_until``, ``_healthy``, ``_free_port``, ``_read_deployment``), reused rather than copied."""
    import importlib.util
    import sys

    name = "flows_test_deployment"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "flows" / "test_deployment.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def copy_workspace(src: Path, dest: Path) -> Path:
    """``cp -a``: a private copy of a workspace, links, modes and times kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    return dest


def expected_labels(ws: Path) -> dict[str, str]:
    """``{id: label}`` of every label in ``data/labels.csv`` and every annotation waiting in the inbox
    (CSV id,label files): what a completed round must hold, each exactly once."""
    w = Workspace(ws)
    out = dict(zip(w.labels()["id"], w.labels()["label"]))
    for path in w.inbox_files():
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        out.update(zip(frame["id"], frame["label"]))
    return out


def lock_is_free(ws: Path) -> bool:
    try:
        with workspace_lock(ws, timeout=1):
            return True
    except VersioningError:
        return False


def git_fsck_problems(ws: Path) -> list[str]:
    """``git fsck --full --strict`` errors and leftover git lock files (empty: clean; dangling
    objects of a killed commit are no error)."""
    proc = subprocess.run(["git", "fsck", "--full", "--strict", "--no-progress"], cwd=ws, capture_output=True,
                          text=True)
    problems = [] if proc.returncode == 0 else [f"git fsck: {proc.stdout}{proc.stderr}".strip()]
    return problems + [f"stale git lock {p.relative_to(ws)}" for p in (ws / ".git").glob("*.lock")
                       if p.name != LOCK_NAME]  # the workspace lock's file stays; its flock goes with its holder


def no_loss_problems(ws: Path, expected: dict[str, str]) -> list[str]:
    """After a kill: every expected label is in data/labels.csv or still waiting in the inbox, and no
    id is in the labels twice (empty: nothing lost or duplicated)."""
    w = Workspace(ws)
    labels = w.labels()
    problems = [f"{LABELS}: id {i} present {n} times" for i, n in labels["id"].value_counts().items() if n > 1]
    lost = sorted(set(expected) - set(labels["id"]) - set(expected_labels(ws)))
    return problems + ([f"labels lost (neither in {LABELS} nor in the inbox): {lost[:10]}"] if lost else [])



def round_invariants(ws: Path, expected: dict[str, str], *, rounds: list[int], dvc_status: dict,
                     reference: Path | None = None, round: int | None = None) -> list[str]:
    """The guarantees after a completed round, as a list of what is broken (empty: all hold).

    - every expected label (``{id: label}``) is in data/labels.csv exactly once, with its label, and
      ``metrics/train.json`` counts them all (they were trained on); the inbox is empty;
    - the round tags are exactly ``rounds`` (none missing or duplicated) and the last one holds
      HEAD's labels; nothing is left staged or modified among git's tracked files;
    - ``dvc status`` is clean (``dvc_status``: its parsed JSON), ``git fsck`` is clean, the workspace
      lock is free;
    - with ``reference`` (an uninterrupted run's workspace) and ``round``: the round's query is the
      reference's (:func:`query_differences`).
    """
    w = Workspace(ws)
    problems = []
    labels = w.labels()
    counts = labels["id"].value_counts()
    problems += [f"{LABELS}: id {i} present {n} times" for i, n in counts.items() if n > 1]
    missing = sorted(set(expected) - set(labels["id"]))
    problems += [f"{LABELS}: labels missing {missing[:10]}"] if missing else []
    got = dict(zip(labels["id"], labels["label"]))
    wrong = sorted(i for i in expected if i in got and got[i] != expected[i])
    problems += [f"{LABELS}: wrong labels for {wrong[:10]}"] if wrong else []
    extra = sorted(set(labels["id"]) - set(expected))
    problems += [f"{LABELS}: unexpected ids {extra[:10]}"] if extra else []
    trainable = int((~labels["id"].isin(w.held_out_ids())).sum())
    metrics = json.loads(w.path("metrics/train.json").read_text())
    if metrics.get("n_labelled") != trainable or (round is not None and metrics.get("round") != round):
        problems.append(f"metrics/train.json: round {metrics.get('round')}, n_labelled {metrics.get('n_labelled')}; "
                        f"expected round {round}, {trainable} labels trained on")
    if w.inbox_files():
        problems.append(f"inbox not empty: {[p.name for p in w.inbox_files()]}")
    tags = git_repo.list_round_tags(ws)
    if tags != rounds:
        problems.append(f"round tags {tags}, expected {rounds}")
    elif git_repo.tag_commit(ws, f"round-{rounds[-1]}") != git_repo.head_commit(ws):
        problems.append(f"round-{rounds[-1]} is not HEAD")
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ws, capture_output=True,
                             text=True, check=True).stdout.strip()
    problems += [f"git: tracked files staged or modified, never committed:\n{changed}"] if changed else []
    problems += [f"dvc status not clean: {dvc_status}"] if dvc_status else []
    problems += git_fsck_problems(ws)
    problems += [] if lock_is_free(ws) else ["the workspace lock is still held"]
    if reference is not None and round is not None:
        problems += [f"{d} (against the uninterrupted run)" for d in query_differences(ws, reference, round)]
    return problems

