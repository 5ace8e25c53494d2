"""Learning curves: a picture for people, a plain table for terminals and logs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd


def plot_learning_curves(
    curves: Mapping[str, pd.DataFrame],
    *,
    x: str = "n_labelled",
    y: str = "accuracy",
    path: str | Path | None = None,
    title: str | None = None,
):
    """Plot ``y`` against ``x`` for each named run; save to ``path`` (PNG/SVG/PDF) when given.

    ``curves`` maps a label (e.g. the strategy) to a frame with columns ``x`` and ``y``; frames
    that also have a ``seed`` column are averaged over seeds with a ±1 std band.

    Returns the matplotlib Figure (no pyplot state is touched, so it is safe in servers and tests).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, frame in curves.items():
        stats = frame.groupby(x)[y].agg(["mean", "std"]).reset_index()
        ax.plot(stats[x], stats["mean"], marker="o", label=name)
        if stats["std"].notna().any():
            ax.fill_between(stats[x], stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), alpha=0.2)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    # Honest axes: rates (accuracy, F1) on their whole [0, 1] scale, never auto-zoomed onto a
    # 0.02-wide band; label counts are whole numbers.
    if _is_rate(y):
        ax.set_ylim(0.0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _is_rate(metric: str) -> bool:
    """Metrics that live in [0, 1] (accuracy, F1, precision, recall; not NLL or ECE's scale)."""
    return any(word in metric for word in ("accuracy", "f1", "precision", "recall"))


def learning_curve_table(curves: Mapping[str, pd.DataFrame], *, x: str = "n_labelled", y: str = "accuracy") -> str:
    """A text table: one row per ``x`` value, one column per run (mean over seeds)."""
    columns = {name: frame.groupby(x)[y].mean() for name, frame in curves.items()}
    table = pd.DataFrame(columns)
    table.index.name = x
    return table.to_string(float_format=lambda v: f"{v:.4f}")
