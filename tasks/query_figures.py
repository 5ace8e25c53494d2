"""The query step's figures: a thumbnail grid of the round's queries and a histogram of pool scores.

``data/queries/round-N.png`` shows each queried image with its rank, acquisition score and the
model's predicted class, so a reviewer sees at a glance what the annotators will get;
``metrics/pool_scores.png`` (a DVC plot) shows where those picks sit among the scores of the whole
scored subsample. Both are written by the query step, beside the files they picture.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from al_lib.data.images import _default_mode, _load_image
from al_lib.plotting import plot_image_grid, plot_score_histogram
from tasks.workspace import SCORE_HISTOGRAM, Workspace

logger = logging.getLogger(__name__)

#: Thumbnails are drawn at most this many pixels on their longer side (the grid stays small).
THUMBNAIL_PIXELS = 96
#: Ids longer than this are shown by their end (the distinctive part of file-name ids).
ID_CHARS = 20


def query_caption(row) -> str:
    """``#rank id`` / ``score s`` / ``pred class (p%)`` for one row of the query table."""
    sid = str(row["id"])
    sid = sid if len(sid) <= ID_CHARS else "…" + sid[-(ID_CHARS - 1):]
    score = row["score"]
    score_text = "–" if score is None or (isinstance(score, float) and math.isnan(score)) else f"{score:.3f}"
    return (f"#{int(row['rank'])} {sid}\nscore {score_text}\n"
            f"pred {row['predicted_label']} ({100 * float(row['predicted_prob']):.0f}%)")


def write_query_thumbnails(ws: Workspace, round: int, queries: pd.DataFrame) -> str | None:
    """Draw ``queries`` (the query table, best first) as a grid at :meth:`Workspace.query_thumbnails`.

    Returns the PNG's path relative to the workspace, or None when there is no query.
    """
    if not len(queries):
        return None
    manifest = ws.manifest().set_index("id")["path"]
    images = []
    for sid in queries["id"]:
        path = ws.path(manifest[sid])
        image = _load_image(path, _default_mode(path))
        image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        images.append(np.asarray(image))
    png = ws.query_thumbnails(round)
    plot_image_grid(images, [query_caption(r) for _, r in queries.iterrows()], path=png,
                    title=f"round {round}: {len(queries)} queries (best first)")
    return str(png.relative_to(ws.root))


def write_score_histogram(ws: Workspace, round: int, scores: np.ndarray, queried_scores, heuristic: str) -> str:
    """Histogram of the scored pool's ``scores`` [N] with the ``queried_scores`` [k] marked, at
    :data:`~tasks.workspace.SCORE_HISTOGRAM`. Returns its path relative to the workspace."""
    plot_score_histogram(scores, queried_scores, xlabel=f"{heuristic} score (higher: more worth labelling)",
                         path=ws.path(SCORE_HISTOGRAM), title=f"round {round}: pool scores, queries marked")
    return SCORE_HISTOGRAM
