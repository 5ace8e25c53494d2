"""The random-acquisition reference of a simulated workspace: real images, git + DVC, real steps.

The workspace's rounds are driven step by step here (the same step functions the Prefect flow and
`dvc repro` run; the flow itself is tested in tests/flows), then the reference arm replays them.
"""

import pandas as pd
import pytest

from tasks import git_repo, ingest, oracle
from tasks.baseline import check_baseline, run_baseline
from tasks.create import create_workspace
from tasks.demo import write_mnist_folder
from tasks.pipeline import ROUND_STEPS
from tasks.rounds import record_round, snapshot_labels, start_round
from tasks.workspace import ROUNDS_METRICS

SMALL = dict(query_size=5, mc_iterations=3, pool_subsample=40, initial_labels=10,
             training={"max_epochs": 3, "patience": 2, "val_fraction": 0.2, "batch_size": 16})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_mnist_folder(tmp_path_factory.mktemp("digits") / "images", n=90, classes=(0, 1, 2))


def simulated_round(ws, n):
    """One round as the flow runs it: the oracle answers, ingest, the four steps, commit + tag."""
    oracle.initial_labels(ws) if n == 0 else oracle.answer_queries(ws, n - 1)
    start_round(ws, n)
    ingest.ingest_step(ws, n, source="oracle")
    for step in ROUND_STEPS:
        step.function()(ws, n)
        if step.name == "validate":
            snapshot_labels(ws)
    record_round(ws, n, "test round")


@pytest.mark.slow  # two full rounds (validation, training, scoring) and the reference arm: ~1-3 min
@pytest.mark.timeout(900)
def test_random_reference_replays_the_rounds_from_the_same_start(images, tmp_path):
    ws = create_workspace(tmp_path / "ws", images=images, labels="oracle", holdout=20, **SMALL)
    for n in (0, 1):
        simulated_round(ws, n)
    result = run_baseline(ws, "random")
    csv, png = ws.baseline_paths("random")
    assert (result["csv"], result["plot"]) == ("metrics/baseline-random.csv", "metrics/learning_curve_vs_random.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    arm = pd.read_csv(csv)
    ours = pd.read_csv(ws.path(ROUNDS_METRICS))
    # Same label budget round by round, measured on the same held-out images.
    assert arm["n_labelled"].tolist() == ours["n_labelled"].tolist() == [10, 15]
    assert set(arm["strategy"]) == {"random"} and arm["test_accuracy"].between(0, 1).all()
    assert [r["test_accuracy"] for r in result["rows"]] == arm["test_accuracy"].tolist()
    # Committed after the last round's tag: the tree stays clean, the tag keeps the round.
    assert git_repo.is_clean(ws.root)
    assert git_repo.git(ws.root, "log", "-1", "--format=%s").strip() == "random-acquisition reference over rounds 0-1"


def test_refused_before_anything_runs_without_held_out_labels_or_a_known_baseline(images, tmp_path):
    ws = create_workspace(tmp_path / "ws", images=images, labels="oracle", holdout=0, **SMALL)
    with pytest.raises(ValueError, match="held-out test labels.*--holdout"):
        check_baseline(ws, "random")
    with pytest.raises(ValueError, match="unknown baseline 'bald': one of random"):
        check_baseline(ws, "bald")
