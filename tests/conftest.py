"""Test-wide environment: offline, no analytics, Prefect state in a temp dir (never ~/.prefect).

Shared test helpers are imported relative to tests/ (on sys.path through this conftest), e.g.
``from heuristics.test_scores import random_probs`` — never as ``tests.…``: small-text's wheel (a
test-only reference) installs a top-level ``tests`` package, which would shadow ours.
"""

import os
import tempfile

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Results and caches would otherwise leak between test sessions through ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="al-tests-prefect-")


import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def dvc_status():
    """``dvc_status(repo)``: parsed ``dvc status --json`` of a workspace (``{}``: all up to date)."""
    dvc = Path(sys.executable).with_name("dvc")

    def status(repo) -> dict:
        out = subprocess.run([str(dvc), "status", "--json"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        return json.loads(out) if out else {}

    return status


@pytest.fixture
def git_show():
    """``git_show(repo, rev, relpath)``: a git-tracked file's text at ``rev``, or None when absent."""
    def show(repo, rev, relpath):
        proc = subprocess.run(["git", "show", f"{rev}:{relpath}"], cwd=repo, capture_output=True, text=True)
        return proc.stdout if proc.returncode == 0 else None

    return show


@pytest.fixture
def inbox(tmp_path):
    """A workspace-like ``data/inbox/`` folder under tmp_path for annotation files."""
    path = tmp_path / "data" / "inbox"
    path.mkdir(parents=True)
    return path
