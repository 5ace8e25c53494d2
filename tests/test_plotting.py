import pandas as pd

from al_lib.plotting import learning_curve_table, plot_learning_curves


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
