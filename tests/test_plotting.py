import numpy as np
import pandas as pd
import pytest

from al_lib.plotting import learning_curve_table, plot_image_grid, plot_learning_curves, plot_score_histogram


def curves():
    bald = pd.DataFrame({"n_labelled": [20, 30, 20, 30], "accuracy": [0.5, 0.7, 0.6, 0.8], "seed": [0, 0, 1, 1]})
    rand = pd.DataFrame({"n_labelled": [20, 30], "accuracy": [0.5, 0.6]})
    return {"bald": bald, "random": rand}


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "curves" / "lc.png"
    fig = plot_learning_curves(curves(), path=path, title="digits")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["bald", "random"]
    assert list(ax.get_lines()[0].get_ydata()) == [0.55, 0.75]  # mean over seeds


def test_table_has_one_column_per_run():
    text = learning_curve_table(curves())
    assert "bald" in text and "random" in text and "0.7500" in text


def test_axes_are_honest_whole_rate_scale_and_integer_label_counts():
    narrow = {"run": pd.DataFrame({"n_labelled": [20, 25, 30], "accuracy": [0.54, 0.55, 0.56]})}
    ax = plot_learning_curves(narrow).axes[0]
    assert ax.get_ylim() == (0.0, 1.0)  # not zoomed onto 0.54-0.56
    ticks = [t for t in ax.get_xticks() if 20 <= t <= 30]
    assert ticks and all(float(t).is_integer() for t in ticks)
    nll = plot_learning_curves({"run": narrow["run"].assign(nll=[1.2, 1.1, 1.0])}, y="nll").axes[0]
    assert nll.get_ylim() != (0.0, 1.0)  # NLL keeps its own scale


def test_reference_curve_is_drawn_dashed_and_grey():
    ax = plot_learning_curves(curves(), reference="random").axes[0]
    bald, rand = ax.get_lines()
    assert rand.get_linestyle() == "--" and bald.get_linestyle() == "-"
    assert rand.get_color() == "0.45"


def test_image_grid_has_one_captioned_tile_per_image(tmp_path):
    grey = np.zeros((28, 28), dtype=np.uint8)
    colour = np.full((20, 30, 3), 0.5)
    path = tmp_path / "grid.png"
    fig = plot_image_grid([grey, colour, grey], ["#1\nscore 0.9", "#2", "#3"], ncols=2, path=path, title="q")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in drawn] == ["#1\nscore 0.9", "#2", "#3"]
    assert len(fig.axes) == 4  # 2 x 2 grid, the spare tile blank
    assert drawn[0].images[0].get_cmap().name == "gray" and drawn[0].images[0].get_clim() == (0, 255)
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        plot_image_grid([grey, grey], ["only one"])
    with pytest.raises(ValueError, match="no images"):
        plot_image_grid([], [])


def test_score_histogram_marks_the_queried_scores(tmp_path):
    scores = np.r_[np.linspace(0.0, 1.0, 50), np.nan]
    path = tmp_path / "h.png"
    fig = plot_score_histogram(scores, [0.9, 1.0], bins=10, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["pool (50 scored, 1 without score)", "queried (2)"]
    pool_bars = [p.get_height() for p in ax.patches[:10]]
    assert sum(pool_bars) == 50
    assert sum(p.get_height() for p in ax.patches[10:]) == 2  # queried, over the same bins
    ticks = ax.get_lines()[0]
    assert list(ticks.get_xdata()) == [0.9, 1.0]


def test_score_histogram_without_scores_says_so():
    fig = plot_score_histogram(np.full(5, np.nan), np.full(2, np.nan))
    assert "all NaN" in fig.axes[0].texts[0].get_text()
