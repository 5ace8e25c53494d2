"""Round step: train the model to convergence on the labelled set; checkpoint and metrics."""

from __future__ import annotations

import io
import json
import logging

import pandas as pd
import torch

from al_lib.bayesian import patch_module
from al_lib.inference import predict_mc
from al_lib.metrics import evaluate
from al_lib.models import build_model
from al_lib.plotting import plot_learning_curves
from al_lib.training import fit
from tasks.datasets import load_workspace_data
from tasks.seeds import round_seed
from tasks.workspace import (
    LABELS, LEARNING_CURVE, MODEL, ROUNDS_METRICS, TRAIN_METRICS, Params, Workspace, write_file,
)

logger = logging.getLogger(__name__)


def build_workspace_model(params: Params) -> torch.nn.Module:
    """The configured architecture, seeded, made MC-stochastic with consistent dropout masks."""
    kwargs = {k: v for k, v in params.model.items() if k not in ("name", "input_shape")}
    model = build_model(params.model["name"], params.input_shape, len(params.classes), seed=params.seed, **kwargs)
    # Consistent masks: a sample's MC scores must not depend on its batch or shard (and BatchBALD needs them).
    return patch_module(model, consistent=True)


def load_workspace_model(ws: Workspace, params: Params) -> torch.nn.Module:
    """The checkpoint of the last training step (weights only, never pickled code)."""
    path = ws.path(MODEL)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model yet — run the train step first")
    model = build_workspace_model(params)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def train_step(ws: Workspace, round: int, *, device=None, progress: bool = False) -> dict:
    """Train from the seeded initial weights (Gal et al. 2017: reset every round) to convergence.

    Writes ``models/model.pt`` (state dict), ``metrics/train.json`` and this round's row of
    ``metrics/rounds.csv``, each atomically. Whether it needs to run is DVC's record
    (``dvc.lock``), not this function's.

    Returns the round's metrics (dict).
    """
    params = ws.params()
    data = load_workspace_data(ws, params)
    train_set = data.train_set()
    if len(train_set) == 0:
        raise ValueError(f"{ws.path(LABELS)}: no labelled training sample yet — import labels or run `al simulate`")
    model = build_workspace_model(params)
    result = fit(model, train_set, device=device, seed=round_seed(params.seed, round, "train"), progress=progress,
                 **params.training)
    metrics = {"round": round, "n_labelled": len(train_set),
               **_fit_metrics(result)}
    eval_set = data.eval_set()
    if len(eval_set):
        probs = predict_mc(model, eval_set, iterations=params.mc_iterations, device=device,
                           seed=round_seed(params.seed, round, "evaluate"), progress=progress,
                           batch_size=params.inference.get("batch_size", 256))
        scores = evaluate(probs, [label for _, label in (eval_set[i] for i in range(len(eval_set)))])
        metrics.update({f"test_{k}": scores[k] for k in ("accuracy", "nll", "ece", "macro_f1")}, n_test=len(eval_set))
    _save(ws, model, metrics)
    logger.info("round %d: trained on %d labels in %d epochs, %.1f s (%s)", round, len(train_set),
                result.epochs_run, result.seconds, result.message)
    return metrics


def _fit_metrics(result) -> dict:
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), result.history[-1])
    # No timings: tracked metrics are a function of the inputs (same inputs, same file).
    out = {"epochs": result.epochs_run, "best_epoch": result.best_epoch}
    for key in ("train_loss", "val_loss", "val_accuracy"):
        if best.get(key) is not None:
            out[key] = float(best[key])
    return out


def _save(ws: Workspace, model: torch.nn.Module, metrics: dict) -> None:
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    write_file(ws.path(MODEL), buffer.getvalue())
    write_file(ws.path(TRAIN_METRICS), json.dumps(metrics, indent=2) + "\n")
    _upsert_round_row(ws, metrics)


def trained_metrics(ws: Workspace) -> dict:
    """The metrics of the last training (``metrics/train.json``)."""
    return json.loads(ws.path(TRAIN_METRICS).read_text())


def _upsert_round_row(ws: Workspace, metrics: dict) -> None:
    """One row per round in metrics/rounds.csv (DVC plots): rerunning a round replaces its row."""
    path = ws.path(ROUNDS_METRICS)
    rows = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if len(rows):
        rows = rows[rows["round"] != metrics["round"]]
    rows = pd.concat([rows, pd.DataFrame([metrics])], ignore_index=True).sort_values("round")
    write_file(path, rows.to_csv(index=False))
    plot_rounds(ws, rows)


def plot_rounds(ws: Workspace, rows: pd.DataFrame) -> None:
    """metrics/learning_curve.png: test accuracy (held-out split) when known, else validation accuracy."""
    y = "test_accuracy" if "test_accuracy" in rows and rows["test_accuracy"].notna().any() else "val_accuracy"
    if y in rows and rows[y].notna().any():
        plot_learning_curves({ws.root.name: rows}, y=y, path=ws.path(LEARNING_CURVE), title="learning curve")
