import os
import sys
from pathlib import Path

import pytest

from tasks.create import create_workspace
from tasks.demo import write_mnist_folder

VENV_BIN = str(Path(sys.executable).parent)

TINY = dict(query_size=5, mc_iterations=3, pool_subsample=60, initial_labels=10,
            training={"max_epochs": 3, "patience": 2, "val_fraction": 0.2, "batch_size": 16})


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API (SQLite, ephemeral server) for the whole session: it costs 5–15 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def mnist_pngs(tmp_path_factory):
    """Real MNIST digits 0-2 as PNG files in class subfolders."""
    return write_mnist_folder(tmp_path_factory.mktemp("mnist") / "images", n=150, classes=(0, 1, 2))


@pytest.fixture
def make_workspace(tmp_path, mnist_pngs):
    def make(name="ws", labels="oracle", holdout=20, **overrides):
        return create_workspace(tmp_path / name, images=mnist_pngs, labels=labels, holdout=holdout,
                                **{**TINY, **overrides})

    return make


@pytest.fixture(autouse=True)
def venv_on_path(monkeypatch):
    """`al` must be on PATH for dvc stage commands and subprocesses."""
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
