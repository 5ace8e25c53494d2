"""Fixtures of the reliability suite: generated source images and a small real workspace (the
helpers live in reliability_helpers.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reliability_helpers import HOLDOUT, VENV_BIN, make_image_folder, run_al


@pytest.fixture(scope="module")
def source_images(tmp_path_factory) -> Path:
    """A labelled folder of generated PNG files (two classes, 12 each)."""
    return make_image_folder(tmp_path_factory.mktemp("source") / "images")


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory, source_images) -> Path:
    """A workspace made once per module by `al init` (seed labels, 4 held out); copy it per test."""
    parent = tmp_path_factory.mktemp("base")
    proc = run_al(["init", parent / "ws", "--images", source_images, "--labels", "seed", "--holdout", HOLDOUT,
                   "--query-size", 3, "--mc-iterations", 2, "--pool-subsample", 10],
                  cwd=parent, home=parent / "home")
    assert proc.returncode == 0, proc.stderr
    return parent / "ws"


@pytest.fixture
def workspace(base_workspace, tmp_path) -> Path:
    """A private copy of the module's workspace (symlinks kept as links)."""
    return Path(shutil.copytree(base_workspace, tmp_path / "ws", symlinks=True))


# --- the crash-safety and concurrency suites (test_faults.py, test_concurrency.py) ------------------

@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory) -> dict:
    """A real Prefect server (`prefect server start` on a free loopback port, own PREFECT_HOME) for
    the session's `al round` subprocesses: ``{"PREFECT_API_URL": ...}`` to add to their environment
    (each would otherwise start an ephemeral server of its own, 10-60 s)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from round_helpers import flows_test_helpers

    helpers = flows_test_helpers()
    home = tmp_path_factory.mktemp("prefect-server")
    port = helpers._free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    server = helpers._start([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                             str(port), "--no-ui"], env, log, cwd=home)
    try:
        helpers._wait_until(lambda: helpers._healthy(api_url), helpers.SERVER_START_TIMEOUT, "prefect server start",
                            server, log)
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(home)}
    finally:
        helpers._stop(server)


@pytest.fixture(scope="session")
def round1_workspace(tmp_path_factory, prefect_env) -> Path:
    """A small oracle workspace (60 MNIST digits 0-2, 12 held out, 2 epochs, T = 3) whose round 0 is
    finished (`al round`) and whose oracle answers to round 0's queries wait in the inbox: the next
    `al round` is a whole round 1 (start, ingest, validate, snapshot, train, score, query, record).
    Copy it (``round_helpers.copy_workspace``) before use."""
    from round_helpers import run_round
    from tasks import oracle
    from tasks.create import create_workspace
    from tasks.demo import write_mnist_folder

    parent = tmp_path_factory.mktemp("round1")
    images = write_mnist_folder(parent / "images", n=60, classes=(0, 1, 2))
    ws = create_workspace(parent / "ws", images=images, labels="oracle", holdout=12, query_size=5, mc_iterations=3,
                          pool_subsample=40, initial_labels=12,
                          training={"max_epochs": 2, "patience": 2, "val_fraction": 0.2, "batch_size": 16})
    oracle.initial_labels(ws)
    run = run_round(ws.root, prefect_env, home=parent / "home")
    assert run.proc.returncode == 0, run.output[-3000:]
    oracle.answer_queries(ws, 0)
    return ws.root
