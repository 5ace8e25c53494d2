"""Figures of an active-learning run (PNG for people) and plain tables for terminals and logs.

Learning curves (:func:`plot_learning_curves`, with an optional reference arm such as random
acquisition), a thumbnail grid of queried images (:func:`plot_image_grid`) and the histogram of a
pool's acquisition scores with the queried ones marked (:func:`plot_score_histogram`). Every
function returns a matplotlib Figure built without pyplot state and, given ``path``, writes it
atomically.
"""

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
    reference: str | None = None,
):
    """Plot ``y`` against ``x`` for each named run; save to ``path`` (PNG/SVG/PDF) when given.

    ``curves`` maps a label (e.g. the strategy) to a frame with columns ``x`` and ``y``; frames
    that also have a ``seed`` column are averaged over seeds with a ±1 std band. ``reference``
    names the curve that is a baseline (e.g. ``"random"`` acquisition): it is drawn dashed, in grey.

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
        style = {"linestyle": "--", "color": "0.45", "marker": "s"} if name == reference else {"marker": "o"}
        (line,) = ax.plot(stats[x], stats["mean"], label=name, **style)
        if stats["std"].notna().any():
            ax.fill_between(stats[x], stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), alpha=0.2, color=line.get_color())
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    # Honest axes: rates (accuracy, F1) on their whole [0, 1] scale, never auto-zoomed onto a
    # 0.02-wide band; label counts are whole numbers.
    if _is_rate(y):
        ax.set_ylim(0.0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, title=title, path=path)


def _is_rate(metric: str) -> bool:
    """Metrics that live in [0, 1] (accuracy, F1, precision, recall; not NLL or ECE's scale)."""
    return any(word in metric for word in ("accuracy", "f1", "precision", "recall"))


def learning_curve_table(curves: Mapping[str, pd.DataFrame], *, x: str = "n_labelled", y: str = "accuracy") -> str:
    """A text table: one row per ``x`` value, one column per run (mean over seeds)."""
    columns = {name: frame.groupby(x)[y].mean() for name, frame in curves.items()}
    table = pd.DataFrame(columns)
    table.index.name = x
    return table.to_string(float_format=lambda v: f"{v:.4f}")


def plot_image_grid(
    images,
    captions,
    *,
    ncols: int | None = None,
    path: str | Path | None = None,
    title: str | None = None,
    tile_inches: float = 1.6,
):
    """A grid of thumbnails, each with its caption (e.g. the queries of a round: rank, score, class).

    Parameters
    ----------
    images : sequence of array-like, length K
        Each ``[H, W]`` (grey) or ``[H, W, 3]`` / ``[H, W, 4]`` (colour); uint8 in 0..255 or floats in
        [0, 1]. Sizes may differ (each tile keeps its aspect ratio).
    captions : sequence of str, length K
        Shown above each tile (may hold newlines).
    ncols : int, optional
        Tiles per row (default: up to 5, fewer when K is smaller).
    path : str or Path, optional
        Where to save the figure (PNG/SVG/PDF); parent folders are created.
    title : str, optional
    tile_inches : float
        Width and height of one tile.

    Returns
    -------
    Figure
        The matplotlib Figure (no pyplot state is touched).

    Raises
    ------
    ValueError
        When ``images`` and ``captions`` differ in length, or there are none.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, captions = list(images), [str(c) for c in captions]
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("no images to draw")
    ncols = min(int(ncols or 5), len(images))
    nrows = -(-len(images) // ncols)
    lines = max(c.count("\n") + 1 for c in captions)
    fig = Figure(figsize=(ncols * tile_inches, nrows * (tile_inches + 0.18 * lines) + (0.4 if title else 0)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, caption in zip(axes.flat, images, captions):
        array = np.asarray(image)
        grey = array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1)
        if grey and array.ndim == 3:
            array = array[..., 0]
        scale = 255 if array.dtype == np.uint8 else 1.0
        ax.imshow(array, cmap="gray" if grey else None, vmin=0, vmax=scale, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def plot_score_histogram(
    scores,
    marked=None,
    *,
    bins: int = 30,
    xlabel: str = "score",
    path: str | Path | None = None,
    title: str | None = None,
):
    """Histogram of a pool's acquisition scores, with the selected ones marked.

    Parameters
    ----------
    scores : array-like of float, shape [N]
        Every scored sample's score (higher = more worth labelling). NaN entries (strategies without
        per-sample scores, e.g. random) are left out and counted in the legend.
    marked : array-like of float, shape [k], optional
        Scores of the selected samples (the queries): drawn as their own histogram over the same
        bins and as a tick per sample on the axis.
    bins : int
    xlabel, title : str
    path : str or Path, optional
        Where to save the figure.

    Returns
    -------
    Figure
        The matplotlib Figure. With no finite score at all it says so instead of drawing bars.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = np.asarray(scores, dtype=np.float64).ravel()
    marked = np.asarray([] if marked is None else marked, dtype=np.float64).ravel()
    finite = scores[np.isfinite(scores)]
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    missing = len(scores) - len(finite)
    if len(finite) == 0:
        ax.text(0.5, 0.5, f"no per-sample scores ({len(scores)} samples, all NaN):\n"
                "the strategy ranks without scoring (e.g. random)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        edges = np.histogram_bin_edges(finite, bins=bins)
        label = f"pool ({len(finite)} scored" + (f", {missing} without score)" if missing else ")")
        ax.hist(finite, bins=edges, color="0.65", label=label)
        shown = marked[np.isfinite(marked)]
        if len(shown):
            ax.hist(shown, bins=edges, color="tab:orange", label=f"queried ({len(shown)})")
            ax.plot(shown, np.zeros_like(shown), "|", color="tab:red", markersize=14, markeredgewidth=1.5,
                    clip_on=False)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("images")
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, title=title, path=path, legend=len(finite) > 0)


def _finish(fig, ax, *, title: str | None, path: str | Path | None, legend: bool = True):
    """Grid and legend (when ``legend``), the title, then :func:`_save`; returns ``fig``."""
    if legend:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        ax.set_title(title)
    _save(fig, path)
    return fig


def _save(fig, path: str | Path | None) -> None:
    """Write ``fig`` atomically to ``path`` (format from the suffix) when a path is given."""
    if path is None:
        return
    import io

    from al_lib.atomic import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
