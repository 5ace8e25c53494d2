"""The round's stopping decisions (params.yaml ``stopping:``), computed after scoring.

Run by the query step (so ``dvc repro`` and the flow decide alike, and a changed ``stopping:``
re-runs only that step). It reads what the round knows — the labels, the scored pool's scores,
``metrics/rounds.csv`` and the stop set's predictions of the earlier rounds — asks each criterion
of :mod:`al_lib.stopping`, and writes:

- ``metrics/stop_set.csv``: the stop set (a seeded subsample of the queryable pool, drawn once,
  the same ids every round after) and each round's predicted class, one column ``round_N`` per
  round (re-running round N replaces its column). Only when a configured criterion reads it.
- ``metrics/stopping.json``: the round's decisions (criterion, stop, reason, value), whether the
  round says stop (what then happens, ``stopping_action``, is the flow's: flows/round.py).
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
from torch.utils.data import Subset

from al_lib.heuristics import predictive_distribution
from al_lib.inference import predict_mc
from al_lib.sampling import subsample_indices
from al_lib.stopping import RoundRecord, StopDecision, check_criteria, fired, summary
from tasks.datasets import load_workspace_data
from tasks.scores_file import load_scores
from tasks.seeds import round_rng, round_seed
from tasks.workspace import ROUNDS_METRICS, STOP_SET, STOPPING, Workspace, stopping_criteria, write_file

logger = logging.getLogger(__name__)

_COLUMN = re.compile(r"^round_(\d+)$")


def stopping_step(ws: Workspace, round: int, *, device=None, progress: bool = False) -> dict:
    """Decide whether round ``round`` says stop; write ``metrics/stopping.json`` (and the stop
    set's predictions when a criterion reads them). Returns the written record."""
    inputs = ws.inputs()
    params = inputs.params
    criteria = stopping_criteria(params)
    record = {"round": round, "stop": False, "stop_set_size": None, "decisions": []}
    if criteria:
        rounds = _rounds_table(ws)
        current = rounds[rounds["round"] == round]
        metrics = current.iloc[-1].to_dict() if len(current) else {}
        stop_ids = stop_table = None
        if any(c.needs_stop_set for c in criteria):
            stop_ids, stop_table, probs = _stop_set_predictions(ws, inputs, round, device, progress)
            record["stop_set_size"] = params.stop_set_size
        history = _history(rounds, round, stop_ids, stop_table, params.classes)
        pool_scores = load_scores(ws)["scores"] if any(c.needs_pool_scores for c in criteria) else None
        history.append(RoundRecord(round, int(metrics.get("n_labelled", len(inputs.train_labels))),
                                   _numbers(metrics), pool_scores=pool_scores, stop_ids=stop_ids,
                                   stop_predictions=None if stop_table is None else _codes(stop_table[f"round_{round}"],
                                                                                          params.classes),
                                   stop_probs=None if stop_ids is None else probs))
        decisions = check_criteria(criteria, history)
        record.update(stop=bool(fired(decisions)), decisions=[d.as_dict() for d in decisions])
        for d in decisions:
            logger.info("round %d: stopping: %s", round, d.message)
    if not ws.path(STOP_SET).is_file():  # a declared output: exists, empty, until a criterion reads a stop set
        write_file(ws.path(STOP_SET), "id\n")
    write_file(ws.path(STOPPING), json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record


def read_stopping(ws: Workspace) -> dict | None:
    """The last ``metrics/stopping.json``, or None before any round decided."""
    path = ws.path(STOPPING)
    return json.loads(path.read_text()) if path.is_file() else None


def stopping_lines(record: dict | None) -> list[str]:
    """The decisions in words, those that fired first: ``stopping: kappa_average fired — ...``
    or ``stopping: kappa_average not yet: ...``; one line when none is configured."""
    if not record or not record.get("decisions"):
        return ["stopping: no criterion configured (params.yaml stopping:)"]
    return summary([StopDecision.from_dict(d) for d in record["decisions"]])


def _rounds_table(ws: Workspace) -> pd.DataFrame:
    path = ws.path(ROUNDS_METRICS)
    return pd.read_csv(path) if path.is_file() else pd.DataFrame({"round": pd.Series([], dtype=int)})


def _numbers(row: dict) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _codes(column: pd.Series, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(v)] for v in column], dtype=np.int64)


def _history(rounds: pd.DataFrame, round: int, stop_ids, stop_table, classes) -> list[RoundRecord]:
    """The earlier rounds (``metrics/rounds.csv`` rows before ``round``), with their stop-set predictions."""
    history = []
    for row in rounds[rounds["round"] < round].sort_values("round").to_dict("records"):
        r = int(row["round"])
        column = f"round_{r}"
        preds = _codes(stop_table[column], classes) if stop_table is not None and column in stop_table else None
        history.append(RoundRecord(r, int(row.get("n_labelled", 0)), _numbers(row),
                                   stop_ids=stop_ids if preds is not None else None, stop_predictions=preds))
    return history


def _stop_set_predictions(ws: Workspace, inputs, round: int, device, progress: bool):
    """The stop set's ids [S], its table (id + one predicted-class column per round, this one
    written now) and this round's predictive distributions [S, C]."""
    params = inputs.params
    data = load_workspace_data(ws, inputs)
    path = ws.path(STOP_SET)
    table = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else None
    previous = _previous_size(ws)
    if table is not None and len(table) and previous is not None and previous != params.stop_set_size:
        logger.info("stop_set_size changed (%s → %d): drawing a new stop set; the stop-set history restarts",
                    previous, params.stop_set_size)
        table = None
    if table is None or len(table) == 0:
        candidates = data.candidates()
        if len(candidates) == 0:
            raise ValueError("the pool is exhausted: no unlabelled image left to draw a stop set from")
        positions = subsample_indices(len(candidates), params.stop_set_size, round_rng(params.seed, 0, "stop-set"))
        table = pd.DataFrame({"id": [str(i) for i in candidates.ids[positions]]})
    else:
        keep = ["id"] + [c for c in table.columns if (m := _COLUMN.match(c)) and int(m.group(1)) < round]
        table = table[keep]
    position = {str(sid): i for i, sid in enumerate(data.state.ids)}
    missing = [i for i in table["id"] if i not in position]
    if missing:
        raise ValueError(f"{path}: stop-set id {missing[0]!r} is no longer in the pool manifest "
                         f"(delete {path.name} to draw a new stop set)")
    from tasks.train import load_workspace_model

    model = load_workspace_model(ws, params)
    probs = predictive_distribution(predict_mc(
        model, Subset(data.state.dataset, [position[i] for i in table["id"]]), iterations=params.mc_iterations,
        # the same MC seed every round: consecutive rounds' predictions differ by their models only
        device=device, seed=round_seed(params.seed, 0, "stop-set-mc"), progress=progress,
        batch_size=params.inference.get("batch_size", 256)))
    table = table.assign(**{f"round_{round}": [params.classes[c] for c in probs.argmax(axis=1)]})
    write_file(path, table.to_csv(index=False))
    return table["id"].to_numpy(dtype=str), table, probs


def _previous_size(ws: Workspace):
    record = read_stopping(ws)
    return record.get("stop_set_size") if record else None
