"""Every acquisition strategy through the round: its queries and their CSV scores are its own.

One workspace trains round 0 once; each strategy then re-runs the score and query steps of that
round (``al round --rerun`` after changing ``heuristic``: DVC re-runs exactly those two), and the
exported scores are checked against the strategy's definition on the model's own MC
probabilities, recomputed here. The embedding strategies' queries are checked against
``al_lib.acquisition.acquire`` on the same model, pool, labelled set and seeds (the pipeline and
the library agree). Cold start: tests/tasks/test_cold_start.py; params: tests/tasks/test_strategy.py.
"""

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from al_lib import heuristics
from al_lib.inference import predict_mc
from al_lib.strategies import EMBEDDING_STRATEGIES, available_strategies
from flows.round import al_round
from tasks.datasets import load_workspace_data
from tasks.seeds import round_seed
from tasks.train import load_workspace_model
from tasks.workspace import Workspace

pytestmark = pytest.mark.usefixtures("prefect_api")
PER_SAMPLE = {"bald": "bald", "entropy": "entropy", "margin": "margin", "least_confidence": "least_confidence",
              "variation_ratio": "variation_ratio", "mean_std": "mean_std", "power_bald": "bald",
              "softmax_bald": "bald", "softrank_bald": "bald", "power_entropy": "entropy"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_pngs):
    from tasks.create import create_workspace

    ws = create_workspace(tmp_path_factory.mktemp("strategies") / "ws", images=mnist_pngs, labels="oracle",
                          holdout=20, query_size=6, mc_iterations=4, pool_subsample=40, initial_labels=12,
                          training={"max_epochs": 3, "patience": 2, "val_fraction": 0.2, "batch_size": 16})
    al_round(str(ws.root), simulate=True)
    return ws


def _copy(ws: Workspace, dst) -> Workspace:
    shutil.copytree(ws.root, dst, symlinks=True)
    return Workspace(dst)


#: The strategies whose exported scores are per-sample scores of the MC probabilities.
ROUND_STRATEGIES = sorted(set(available_strategies()) - set(EMBEDDING_STRATEGIES))
#: params.yaml ``heuristic`` of each embedding strategy: badge keeps a candidate subsample smaller
#: than the scored pool (40), probcover chooses its delta automatically, epig scores against the
#: held-out inputs.
EMBEDDING_PARAMS = {
    "badge": {"name": "badge", "max_candidates": 30},
    "coreset": "coreset",
    "typiclust": {"name": "typiclust", "n_neighbors": 5, "min_cluster_size": 2},
    "probcover": "probcover",
    "epig": {"name": "epig", "target": "held_out", "target_size": 50},
    "class_balanced": {"name": "class_balanced", "heuristic": "bald"},
}


def test_every_strategy_is_covered():
    assert set(PER_SAMPLE) | {"random", "batch_bald"} == set(ROUND_STRATEGIES)
    assert set(EMBEDDING_PARAMS) == set(EMBEDDING_STRATEGIES)


@pytest.mark.parametrize("strategy", EMBEDDING_STRATEGIES)
def test_embedding_strategies_pick_what_acquire_picks(trained, strategy, tmp_path):
    from al_lib.acquisition import acquire
    from tasks.score import plan_scoring
    from tasks.strategy import workspace_strategy

    ws = _copy(trained, tmp_path / "ws")
    params = yaml.safe_load(ws.path("params.yaml").read_text())
    ws.path("params.yaml").write_text(yaml.safe_dump({**params, "heuristic": EMBEDDING_PARAMS[strategy]},
                                                     sort_keys=False))
    result = al_round(str(ws.root), rerun=True)
    assert result["steps_run"][-2:] == ["score", "query"]  # (and train too after an edit of its code)
    queries = pd.read_csv(ws.query_paths(0)[0], dtype={"id": str}, keep_default_na=False)
    assert len(queries) == 6 and queries["id"].is_unique

    params = ws.params()
    data = load_workspace_data(ws, ws.inputs())
    ids = plan_scoring(ws, 0).ids
    where = {sid: i for i, sid in enumerate(data.state.pool.ids)}
    pool = torch_subset(data.state.pool, [where[i] for i in ids])
    target = None
    if strategy == "epig":
        everything = {sid: i for i, sid in enumerate(data.state.ids)}
        target = torch_subset(data.state.dataset, [everything[i] for i in data.state.ids if i in data.held_out])
    positions, _ = acquire(load_workspace_model(ws, params), pool, workspace_strategy(params), 6,
                           iterations=params.mc_iterations, batch_size=params.inference["batch_size"],
                           mc_seed=round_seed(params.seed, 0, "mc"), select_seed=round_seed(params.seed, 0, "select"),
                           labelled=data.train_set(), target=target, progress=False)
    assert queries["id"].tolist() == [ids[p] for p in positions]
    if strategy == "epig":  # EPIG's CSV score is its own
        assert np.isfinite(queries["score"].astype(float)).all()
    elif strategy != "class_balanced":
        assert (queries["score"] == "").all()  # a selection on embeddings has no per-sample score


@pytest.mark.parametrize("strategy", ROUND_STRATEGIES)
def test_each_strategy_exports_its_own_scores(trained, strategy, tmp_path):
    ws = _copy(trained, tmp_path / "ws")
    params = yaml.safe_load(ws.path("params.yaml").read_text())
    ws.path("params.yaml").write_text(yaml.safe_dump({**params, "heuristic": strategy}, sort_keys=False))
    result = al_round(str(ws.root), rerun=True)
    if strategy == "bald":  # round 0's own strategy: nothing is out of date
        assert result["skipped"]
    else:
        assert result["steps_run"] == ["score", "query"]
    queries = pd.read_csv(ws.query_paths(0)[0], dtype={"id": str}, keep_default_na=False)
    assert len(queries) == 6 and queries["id"].is_unique
    assert queries["rank"].tolist() == list(range(1, 7))
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ws.root, capture_output=True,
                          text=True).stdout == ""

    if strategy == "random":
        assert (queries["score"] == "").all()  # random has no score of its own
        return
    probs = _mc_probs(ws, queries["id"].tolist())
    scores = queries["score"].astype(float).to_numpy()
    if strategy == "batch_bald":
        # Each pick's score is its gain in joint mutual information: they add up to the batch's.
        total = heuristics.joint_mutual_information(probs, np.arange(len(queries)))
        np.testing.assert_allclose(scores.sum(), total, rtol=1e-3, atol=1e-5)
        assert (np.diff(scores) <= 1e-6).all()  # greedy: gains never grow (submodular)
        return
    expected = heuristics.HEURISTICS[PER_SAMPLE[strategy]](probs)
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-5)
    if strategy in ("bald", "entropy", "margin", "least_confidence", "variation_ratio", "mean_std"):
        assert (np.diff(scores) <= 1e-9).all()  # top-k: best first


def _mc_probs(ws: Workspace, ids: list[str]) -> np.ndarray:
    """The round-0 model's MC probabilities of ``ids``, with the score step's seed."""
    params = ws.params()
    pool = load_workspace_data(ws, ws.inputs()).state.pool
    where = {sid: i for i, sid in enumerate(pool.ids)}
    subset = torch_subset(pool, [where[i] for i in ids])
    return predict_mc(load_workspace_model(ws, params), subset, iterations=params.mc_iterations,
                      seed=round_seed(params.seed, 0, "mc"), progress=False)


def torch_subset(dataset, positions):
    from torch.utils.data import Subset

    return Subset(dataset, positions)

