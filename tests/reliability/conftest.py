"""Fixtures of the reliability suite: generated source images and a small real workspace (the
helpers live in reliability_helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reliability_helpers import HOLDOUT, make_image_folder, run_al


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
