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
