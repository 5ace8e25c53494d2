"""Simulation mode: an oracle answers the queries from known labels by filling the inbox."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from tasks.workspace import ORACLE_LABELS, Workspace, write_file

logger = logging.getLogger(__name__)
ANNOTATOR = "oracle"


def oracle_truth(ws: Workspace) -> pd.Series:
    truth = ws.oracle_labels()
    if truth is None:
        raise FileNotFoundError(f"{ws.path(ORACLE_LABELS)}: simulation needs the hidden labels (create the "
                                "workspace with `al init --labels oracle`)")
    return truth.set_index("id")["label"]


def answer_queries(ws: Workspace, query_round: int) -> Path | None:
    """Write the oracle's answers to round ``query_round``'s queries into the inbox.

    Returns the inbox file, or None when those queries are already answered (rerun).
    """
    query_csv, _ = ws.query_paths(query_round)
    queries = pd.read_csv(query_csv, dtype=str, keep_default_na=False)
    labelled = set(ws.labels()["id"])
    pending = [i for i in queries["id"] if i not in labelled]
    if not pending:
        return None
    return _write_inbox(ws, f"oracle-round-{query_round}.csv", pending)


def initial_labels(ws: Workspace) -> Path | None:
    """The B initial labels of a simulation (B = params ``initial_labels``), seeded: random, or
    chosen by params ``initial_strategy`` (typiclust, probcover: tasks/cold_start.py)."""
    from tasks.cold_start import pick_initial  # random, or a cold-start strategy on the untrained model's features
    from tasks.rounds import queryable_ids, trainable_labels

    params = ws.params()
    truth = oracle_truth(ws)
    if trainable_labels(ws):
        return None  # the seed labels exist already: a rerun, or labels imported by hand
    queryable = queryable_ids(ws)
    queryable = queryable[queryable.isin(truth.index)].to_numpy()

    return _write_inbox(ws, "oracle-initial.csv", list(pick_initial(ws, queryable, params.initial_labels)))


def _write_inbox(ws: Workspace, name: str, ids: list[str]) -> Path:
    truth = oracle_truth(ws)
    answers = pd.DataFrame({"id": ids, "label": truth.loc[ids].to_numpy(), "annotator": ANNOTATOR})
    path = ws.path("data/inbox") / name
    write_file(path, answers.to_csv(index=False))
    logger.info("oracle answered %d queries into %s", len(ids), path.relative_to(ws.root))
    return path
