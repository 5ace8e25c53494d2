"""Round step: train the model to convergence on the labelled set; checkpoint and metrics."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pandas as pd
import torch

from al_lib.calibration import calibrate_fitted, calibrated_from_state
from al_lib.inference import predict_mc
from al_lib.metrics import evaluate
from al_lib.models import load_weights, read_state_dict
from al_lib.plotting import plot_learning_curves
from al_lib.training import fit_members, fit_summary
from tasks.datasets import load_workspace_data
from tasks.seeds import round_seed
from tasks.workspace import (
    LABELS, LEARNING_CURVE, MODEL, ROUNDS_METRICS, TRAIN_METRICS, Params, Workspace, model_spec, write_file,
)

logger = logging.getLogger(__name__)


def build_workspace_model(ws: Workspace, params: Params, *, load_weights: bool = True) -> torch.nn.Module:
    """The configured model (``params.model``: see :class:`al_lib.models.ModelSpec`), seeded, made
    MC-stochastic: consistent MC dropout (a sample's MC scores must not depend on its batch or
    shard, and BatchBALD needs fixed masks) or MC DropConnect on the head."""
    return model_spec(params, ws.root).build(len(params.classes), seed=params.seed, load_weights=load_weights)


def load_workspace_model(ws: Workspace, params: Params) -> torch.nn.Module:
    """The checkpoint of the last training step (weights only, never pickled code), in the
    architecture of the same ``params.model`` (its weights file is not needed: the checkpoint
    holds every weight) — with the calibrator the train step fitted after it when the checkpoint
    holds one (``params.calibration``: :func:`al_lib.calibration.calibrated_from_state`)."""
    path = ws.path(MODEL)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model yet — run the train step first")
    model = build_workspace_model(ws, params, load_weights=False)
    # weights_only=True; a file that is no state dict of this architecture: ValueError naming it
    return load_weights(calibrated_from_state(model, read_state_dict(path)), path)


def train_step(ws: Workspace, round: int, *, device=None, progress: bool = False) -> dict:
    """Train from the seeded initial weights (Gal et al. 2017: reset every round) to convergence.

    Writes ``models/model.pt`` (state dict), ``metrics/train.json`` and this round's row of
    ``metrics/rounds.csv``, each atomically. Whether it needs to run is DVC's record
    (``dvc.lock``), not this function's.

    Returns the round's metrics (dict).
    """
    inputs = ws.inputs()
    params = inputs.params
    data = load_workspace_data(ws, inputs)
    train_set = data.train_set()
    if len(train_set) == 0:
        raise ValueError(f"{ws.path(LABELS)}: no labelled training sample yet — import labels or run `al simulate`")
    model = build_workspace_model(ws, params)
    augment = model_spec(params, ws.root).transforms.augmentation()
    # A deep ensemble's members train on their own, on one validation split (the calibrator's too).
    results = fit_members(model, train_set, device=device, progress=progress, augment=augment, **params.training,
                          seed=round_seed(params.seed, round, "train"))
    metrics = {"round": round, "n_labelled": len(train_set), **fit_summary(results)}
    calibrated = None
    if params.calibration != "none":
        calibrated = _calibrate(model, train_set, params, round, device=device, progress=progress)
        metrics.update(calibrated.metrics("val"))
    eval_set = data.eval_set()
    if len(eval_set):
        probs = predict_mc(model, eval_set, iterations=params.mc_iterations, device=device,
                           seed=round_seed(params.seed, round, "evaluate"), progress=progress,
                           batch_size=params.inference.get("batch_size", 256))
        targets = [label for _, label in (eval_set[i] for i in range(len(eval_set)))]
        if calibrated is not None:  # the same MC samples through the calibrator: no second pass
            before = evaluate(probs, targets)
            metrics.update({f"test_{k}_before": before[k] for k in ("ece", "nll")})
            probs = calibrated.model.calibrate_probs(probs)
        scores = evaluate(probs, targets)
        metrics.update({f"test_{k}": scores[k] for k in ("accuracy", "nll", "ece", "macro_f1")}, n_test=len(eval_set))
        if calibrated is not None:
            metrics.update({f"test_{k}_after": scores[k] for k in ("ece", "nll")})
    _save(ws, model if calibrated is None else calibrated.model, metrics)
    for m, result in enumerate(results):
        member = f" (ensemble member {m + 1}/{len(results)})" if len(results) > 1 else ""
        logger.info("round %d: trained on %d labels in %d epochs, %.1f s (%s)%s", round, len(train_set),
                    result.epochs_run, result.seconds, result.message, member)
    return metrics


def _calibrate(model: torch.nn.Module, train_set, params: Params, round: int, *, device, progress: bool):
    """``params.calibration`` fitted on the validation split ``fit_members`` held out of ``train_set``
    (the fit's seed; every ensemble member's) with the round's MC iterations: a :class:`al_lib.calibration.CalibrationResult`."""
    # labels from the table, no image decoded: val ⊂ train_set ⊂ the labelled view
    labels = np.asarray(train_set.dataset.labels, dtype=np.int64)[np.asarray(train_set.indices, dtype=np.int64)]
    return calibrate_fitted(model, train_set, params.calibration, fit_seed=round_seed(params.seed, round, "train"),
                            n_classes=len(params.classes), val_fraction=params.training.get("val_fraction"),
                            targets_of=lambda val: labels[np.asarray(val.indices, dtype=np.int64)],
                            iterations=params.mc_iterations, batch_size=params.inference.get("batch_size", 256),
                            device=device, seed=round_seed(params.seed, round, "calibrate"), progress=progress)


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
    """metrics/learning_curve.png: test accuracy (held-out split) when known, else validation accuracy;
    with neither (no test labels, ``training.val_fraction: 0``) the training loss, and the title says
    why — the plot is a declared output of the step, so it is always written."""
    title = "learning curve"
    for y in ("test_accuracy", "val_accuracy", "train_loss"):
        if y in rows and rows[y].notna().any():
            break
    if y == "train_loss":
        title = "training loss (no test labels and no validation split: add held-out images for accuracy)"
    plot_learning_curves({ws.root.name: rows}, y=y, path=ws.path(LEARNING_CURVE), title=title)
