"""Queries for annotators: the ``data/queries/round-N.csv`` table and Label Studio tasks.

:func:`query_frame` turns the acquired ids, their scores and MC-averaged probabilities into the
query table; :func:`label_studio_tasks` makes one Label Studio task per query, with the model's
prediction as a pre-annotation, and :func:`label_studio_config` the matching labelling config.
:func:`write_queries` stores both atomically and idempotently. The annotators' export comes back
through :func:`al_lib.annotations.read_annotations`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from al_lib.atomic import atomic_write_text
from al_lib.paths import relative_path_problem
from al_lib.data.active_dataset import _check_classes, _check_round

logger = logging.getLogger(__name__)

__all__ = ["LOCAL_FILES_URL", "QUERY_COLUMNS", "label_studio_config", "label_studio_tasks", "query_frame", "write_queries"]

#: Label Studio serves a file under its local-files document root at this URL + the quoted relative path.
LOCAL_FILES_URL = "/data/local-files/?d="
#: Columns of the query table (``data/queries/round-N.csv``).
QUERY_COLUMNS = ("id", "rank", "score", "predicted_label", "predicted_prob")
_PROB_DECIMALS = 6


def query_frame(ids: Sequence[Any], scores: Any, mean_probs: Any, classes: Sequence[str]) -> pd.DataFrame:
    """The query table for one round.

    Parameters
    ----------
    ids : sequence of str or int, shape [k]
        Queried sample ids in acquisition order (best first), unique.
    scores : array-like (numpy or torch), shape [k]
        Acquisition scores; NaN allowed (e.g. BatchBALD gives an order, not per-sample scores).
    mean_probs : array-like (numpy or torch), shape [k, C], or None
        MC-averaged class probabilities of the queried samples, finite. None when no model has
        predicted yet (a cold-start query): ``predicted_label`` is empty and ``predicted_prob`` NaN.
    classes : sequence of str, length C
        Class names.

    Returns
    -------
    DataFrame
        Columns exactly :data:`QUERY_COLUMNS`: ``id`` as given, ``rank`` 1..k (int64),
        ``score`` float64, ``predicted_label`` the class of the argmax (ties → lower index),
        ``predicted_prob`` its probability (float64); empty / NaN without ``mean_probs``.

    Raises
    ------
    ValueError
        Mismatched lengths/shapes, duplicate ids, non-finite probabilities, bad classes.
    """
    names, n_classes = _check_classes(list(classes))
    ids = [i.item() if isinstance(i, np.generic) else i for i in ids]
    scores = _to_numpy(scores).astype(np.float64)
    k = len(ids)
    if scores.shape != (k,):
        raise ValueError(f"scores must have shape [{k}] (one per id), got {list(scores.shape)}")
    if len(set(ids)) != k:
        raise ValueError(f"ids must be unique; {pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]!r} repeats")
    if mean_probs is None:  # no model yet: no prediction to show
        labels, best_probs = [""] * k, np.full(k, np.nan)
    else:
        probs = _to_numpy(mean_probs).astype(np.float64)
        if probs.shape != (k, n_classes):
            raise ValueError(f"mean_probs must have shape [{k}, {n_classes}] (ids x classes), "
                             f"got {list(probs.shape)}")
        if not np.isfinite(probs).all():
            raise ValueError("mean_probs contains NaN or infinite values")
        best = probs.argmax(axis=1) if k else np.zeros(0, np.int64)
        labels, best_probs = np.asarray(names, dtype=object)[best], probs[np.arange(k), best]
    return pd.DataFrame({
        "id": pd.Series(ids, dtype=object),
        "rank": np.arange(1, k + 1, dtype=np.int64),
        "score": scores,
        "predicted_label": pd.Series(labels, dtype=str),
        "predicted_prob": np.asarray(best_probs, dtype=np.float64),
    }, columns=list(QUERY_COLUMNS))


def label_studio_config(classes: Sequence[str], *, from_name: str = "label", to_name: str = "image") -> str:
    """The Label Studio labelling config (XML) for single-choice image classification.

    Parameters
    ----------
    classes : sequence of str
        Class names, one ``<Choice>`` each (XML-escaped).
    from_name, to_name : str
        Names of the ``<Choices>`` control and the ``<Image>`` object; must match those given
        to :func:`label_studio_tasks`. The image comes from the task's ``data.image``.

    Returns
    -------
    str
        ``<View><Image .../><Choices ... choice="single"><Choice value=.../>...</Choices></View>``.
    """
    names, _ = _check_classes(list(classes))
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in names)
    return (
        "<View>\n"
        f'  <Image name={quoteattr(to_name)} value="$image"/>\n'
        f'  <Choices name={quoteattr(from_name)} toName={quoteattr(to_name)} choice="single">\n'
        f"{choices}"
        "  </Choices>\n"
        "</View>\n"
    )


def label_studio_tasks(
    queries: pd.DataFrame,
    image_paths: Mapping[Any, str],
    *,
    image_url_prefix: str = LOCAL_FILES_URL,
    from_name: str = "label",
    to_name: str = "image",
    model_version: str = "round-0",
) -> list[dict]:
    """Label Studio tasks (JSON import format) for the queries, with pre-annotations.

    Parameters
    ----------
    queries : DataFrame
        A :func:`query_frame` table (columns :data:`QUERY_COLUMNS`).
    image_paths : mapping of id -> str
        Workspace-relative posix path of each queried sample's image (the manifest ``path``).
    image_url_prefix : str
        Prepended to the URL-quoted path; the default serves files through Label Studio's
        local-files storage (document root = the workspace).
    from_name, to_name : str
        Control and object names of :func:`label_studio_config`.
    model_version : str
        Shown by Label Studio next to the prediction, e.g. ``"round-3"``.

    Returns
    -------
    list of dict, length k
        In rank order; ``data = {"image", "sample_id" (str), "rank" (int), "score" (float, or
        None when not finite)}`` and ``predictions`` = one prediction whose single ``choices``
        result is the predicted label, scored by its probability (rounded to 6 decimals); none
        when the query has no predicted label (a cold-start query).
        Contains only JSON-native values (never NaN).

    Raises
    ------
    ValueError
        Wrong query columns, an id without an image path, an absolute path or one with "..".
    """
    _check_query_columns(queries)
    tasks = []
    for id_, rank, score, label, prob in zip(*(queries[c].tolist() for c in QUERY_COLUMNS)):
        if id_ not in image_paths:
            raise ValueError(f"no image path for sample id {id_!r}")
        tasks.append({
            "data": {
                "image": image_url_prefix + quote(_relative_posix(image_paths[id_], id_), safe="/"),
                "sample_id": str(id_),
                "rank": int(rank),
                "score": _json_float(score),
            },
            "predictions": [] if label == "" else [{  # no model yet: a guess would only mislead
                "model_version": model_version,
                "score": round(float(prob), _PROB_DECIMALS),
                "result": [{
                    "from_name": from_name,
                    "to_name": to_name,
                    "type": "choices",
                    "value": {"choices": [str(label)]},
                }],
            }],
        })
    return tasks


def write_queries(
    directory: str | os.PathLike, round: int, queries: pd.DataFrame, tasks: list[dict]
) -> tuple[Path, Path]:
    """Store a round's queries as ``round-{round}.csv`` and ``round-{round}.labelstudio.json``.

    Parameters
    ----------
    directory : str or path-like
        ``data/queries``; created when missing.
    round : int
        Round number (>= 0).
    queries : DataFrame
        A :func:`query_frame` table; ``predicted_prob`` is rounded to 6 decimals in the CSV,
        NaN scores are written as empty fields.
    tasks : list of dict
        From :func:`label_studio_tasks`; written with ``indent=2, ensure_ascii=False``.

    Returns
    -------
    csv_path, json_path : Path

    Raises
    ------
    ValueError
        A round file already exists with different content (nothing is written), or the tasks
        hold NaN / infinity (not valid JSON).

    Notes
    -----
    Both files are written atomically. Rerunning with identical content is a no-op, so a
    retried round does not fail; different content means the round's queries were already
    handed out and must not change under the annotators.
    """
    round = _check_round(round)
    directory = Path(directory)
    contents = {
        directory / f"round-{round}.csv": _query_csv(queries),
        directory / f"round-{round}.labelstudio.json":
            json.dumps(tasks, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
    }
    existing = {path: _existing_bytes(path) for path in contents}
    for path, text in contents.items():  # check both before writing either: all or nothing
        if existing[path] is not None and existing[path] != text.encode("utf-8"):
            raise ValueError(f"{path} already exists with different content; refusing to overwrite "
                             f"round {round}'s queries")
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in contents.items():
        if existing[path] is None:
            atomic_write_text(path, text)
            logger.info("wrote %s", path)
        else:
            logger.info("%s already up to date", path)
    csv_path, json_path = contents
    return csv_path, json_path


def _query_csv(queries: pd.DataFrame) -> str:
    _check_query_columns(queries)
    table = queries.loc[:, list(QUERY_COLUMNS)].copy()
    table["predicted_prob"] = table["predicted_prob"].astype(np.float64).round(_PROB_DECIMALS)
    return table.to_csv(index=False, lineterminator="\n", na_rep="")


def _existing_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _check_query_columns(queries: pd.DataFrame) -> None:
    if tuple(queries.columns) != QUERY_COLUMNS:
        raise ValueError(f"queries must have columns {list(QUERY_COLUMNS)}, got {list(queries.columns)}")


def _relative_posix(path: str | os.PathLike, id_: Any) -> str:
    """``path`` checked to stay inside the workspace (:func:`al_lib.paths.relative_path_problem`)."""
    path = os.fspath(path)
    problem = relative_path_problem(path)
    if problem:
        raise ValueError(f"image path of sample id {id_!r}: {problem}")
    return PurePosixPath(path).as_posix()


def _json_float(value: Any) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _to_numpy(values: Any) -> np.ndarray:
    """numpy view of an array-like or (any-device) torch tensor, without importing torch."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)
