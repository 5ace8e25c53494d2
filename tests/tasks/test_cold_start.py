"""Cold start (tasks/cold_start.py): ``initial_strategy`` typiclust / probcover choose
simulation's round-0 labels on the untrained model's features, as ``acquire`` would."""

import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import Subset

from al_lib.acquisition import acquire
from tasks.create import create_workspace
from tasks.datasets import load_workspace_data
from tasks.demo import write_mnist_folder
from tasks.oracle import initial_labels
from tasks.seeds import round_seed
from tasks.strategy import initial_strategy
from tasks.train import build_workspace_model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One simulation workspace (no labels yet); each test sets params.yaml and restores it."""
    images = write_mnist_folder(tmp_path_factory.mktemp("mnist") / "images", n=90, classes=(0, 1, 2))
    return create_workspace(tmp_path_factory.mktemp("cold") / "ws", images=images, labels="oracle", holdout=20,
                            query_size=6, mc_iterations=2, initial_labels=8)


@pytest.fixture
def with_params(workspace):
    """``with_params(**changes)``: params.yaml with those top-level changes, for this test only."""
    path = workspace.path("params.yaml")
    original = path.read_text()

    def change(**changes):
        path.write_text(yaml.safe_dump({**yaml.safe_load(original), **changes}, sort_keys=False))
        return workspace

    yield change
    path.write_text(original)


def test_random_initial_labels_need_no_model(workspace, caplog):
    with caplog.at_level("WARNING", logger="tasks.cold_start"):
        assert len(pd.read_csv(initial_labels(workspace))) == 8
    assert "randomly initialised" not in caplog.text


@pytest.mark.parametrize("strategy", ["typiclust", "probcover"])
def test_cold_start_chooses_the_initial_labels(strategy, with_params, caplog):
    """The picks are the strategy's on the untrained model's features (no weights file here: a
    warning says the network is random), the same on a second call."""
    ws = with_params(initial_strategy=strategy)
    with caplog.at_level("WARNING", logger="tasks.cold_start"):
        inbox = initial_labels(ws)
    assert "randomly initialised" in caplog.text
    chosen = pd.read_csv(inbox, dtype=str)["id"].tolist()
    assert len(chosen) == 8 and len(set(chosen)) == 8

    params = ws.params()
    pool = load_workspace_data(ws, ws.inputs()).state.pool
    queryable = sorted(str(i) for i in pool.ids if i not in ws.held_out_ids())
    where = {sid: i for i, sid in enumerate(pool.ids)}
    positions, _ = acquire(build_workspace_model(ws, params), Subset(pool, [where[i] for i in queryable]),
                           initial_strategy(params), 8, iterations=2, batch_size=params.inference["batch_size"],
                           mc_seed=round_seed(params.seed, 0, "initial-mc"),
                           select_seed=round_seed(params.seed, 0, "initial"), progress=False)
    assert chosen == sorted(queryable[p] for p in positions)
    assert pd.read_csv(initial_labels(ws), dtype=str)["id"].tolist() == chosen  # deterministic


def test_given_weights_give_no_warning(workspace, with_params, caplog):
    """A local weights file (here: a saved network of the same architecture) is the pretrained case."""
    torch.save(build_workspace_model(workspace, workspace.params()).state_dict(), workspace.path("backbone.pt"))
    model = {**workspace.params().model, "weights": "backbone.pt"}
    ws = with_params(initial_strategy={"name": "probcover", "delta": 1e6}, model=model)
    with caplog.at_level("WARNING", logger="tasks.cold_start"):
        assert len(pd.read_csv(initial_labels(ws))) == 8
    assert "randomly initialised" not in caplog.text
