"""The query step's figures, on a real workspace (git + DVC) from real MNIST PNG files."""

import base64
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.create import create_workspace
from tasks.demo import write_mnist_folder
from tasks.query import query_step
from tasks.query_figures import query_caption, write_query_thumbnails, write_score_histogram
from tasks.score import plan_scoring
from tasks.scores_file import write_scores
from tasks.workspace import SCORE_HISTOGRAM

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    images = write_mnist_folder(tmp_path_factory.mktemp("digits") / "images", n=40, classes=(0, 1))
    return create_workspace(tmp_path_factory.mktemp("ws") / "ws", images=images, labels="oracle", query_size=4,
                            pool_subsample=None, initial_labels=4)


def fake_scores(ws, round, *, nan=False):
    """A scores file as the score step writes it (same writer), with known scores."""
    plan = plan_scoring(ws, round)
    n = len(plan.ids)
    scores = np.full(n, np.nan) if nan else np.linspace(0.0, 1.0, n)
    probs = np.tile([[0.3, 0.7]], (n, 1))
    write_scores(ws, plan, ws.params(), {"ids": np.array(plan.ids), "scores": scores, "mean_probs": probs})
    return plan, scores


def test_query_step_writes_thumbnails_and_histogram(ws):
    plan, scores = fake_scores(ws, 0)
    summary = query_step(ws, 0)
    grid = ws.query_thumbnails(0)
    assert summary["thumbnails"] == "data/queries/round-0.png" and grid.read_bytes()[:8] == PNG
    assert summary["histogram"] == SCORE_HISTOGRAM and ws.path(SCORE_HISTOGRAM).read_bytes()[:8] == PNG
    with Image.open(grid) as image:  # 4 tiles in one row: wider than tall
        assert image.width > 2 * image.height
    queries = pd.read_csv(ws.query_paths(0)[0], dtype={"id": str})
    assert list(queries["score"]) == sorted(scores, reverse=True)[:4]  # the thumbnails' subjects


def test_random_strategy_scores_still_get_a_histogram(ws):
    """random's scores are NaN: the figure says so (the DVC plot out must exist every round)."""
    path = ws.path(SCORE_HISTOGRAM)
    path.unlink()
    assert write_score_histogram(ws, 1, np.full(8, np.nan), np.full(2, np.nan), "random") == SCORE_HISTOGRAM
    assert path.read_bytes()[:8] == PNG


def test_caption_shows_rank_score_and_predicted_class():
    row = {"rank": 2, "id": "train-00012", "score": 0.84213, "predicted_label": "7", "predicted_prob": 0.613}
    assert query_caption(row) == "#2 train-00012\nscore 0.842\npred 7 (61%)"
    assert "score –" in query_caption({**row, "score": float("nan")})
    assert query_caption({**row, "id": "cats/2024/batch-7/img-000123.png"}).startswith("#2 …ch-7/img-000123.png\n")


def test_no_queries_no_grid(ws):
    assert write_query_thumbnails(ws, 5, pd.DataFrame(columns=["id", "rank", "score"])) is None
    assert not ws.query_thumbnails(5).exists()


def test_round_report_shows_the_figures_and_trained_on_counts(ws):
    """The round-report artifact's markdown (tasks/prefect_tasks.py): the query step's figures
    inline, each with its workspace path; label counts trained on and held out apart."""
    from tasks.prefect_tasks import _rounded, round_report

    fake_scores(ws, 0)
    query_step(ws, 0)
    report = round_report(ws, 0, {"n_labelled": 4, "test_accuracy": 0.123456})
    assert "| test_accuracy | 0.1235 |" in report
    assert "| class | trained on | held out (measure the model) |" in report
    images = re.findall(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)\n\n`([^`]+)`", report)
    assert [(alt, path) for alt, _, path in images] == [("queried images", "data/queries/round-0.png"),
                                                        ("histogram of pool scores", SCORE_HISTOGRAM)]
    assert base64.b64decode(images[0][1]) == ws.query_thumbnails(0).read_bytes()
    assert _rounded({"id": "a", "score": 0.123456789, "predicted_prob": float("nan"), "rank": 1}) == {
        "id": "a", "score": 0.1235, "predicted_prob": "", "rank": 1}
