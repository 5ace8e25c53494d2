"""Calibration through a real workspace round (git + DVC + GX + Prefect): params.yaml
``calibration: temperature`` → the train step fits the temperature on fit's validation split,
metrics/train.json holds ECE/NLL before and after, the checkpoint holds the calibrator and the
score step scores calibrated probabilities; switching to ``none`` re-runs train, score and query
and gives the uncalibrated scores of the same trained weights."""

import json

import numpy as np
import pytest
import yaml

from al_lib.bayesian import Ensemble
from al_lib.calibration import Calibrated, TemperatureScaling, fit_validation_split
from al_lib.inference import predict_mc
from al_lib.metrics import evaluate
from flows.round import al_round
from tasks.datasets import load_workspace_data
from tasks.seeds import round_seed
from tasks.train import load_workspace_model, train_step
from tasks.workspace import ParamsError, SCORES, TRAIN_METRICS, parse_params

# 80 labels, 30 % validation: 24 validation samples (fit validates from 20 on).
CALIBRATED = dict(calibration="temperature", initial_labels=80, pool_subsample=30, mc_iterations=3,
                  training={"max_epochs": 2, "patience": 1, "val_fraction": 0.3, "batch_size": 16})


def _metrics(ws) -> dict:
    return json.loads(ws.path(TRAIN_METRICS).read_text())


@pytest.mark.slow  # two flow rounds: about a minute on 2 loaded cores
@pytest.mark.usefixtures("prefect_api")
def test_temperature_scaling_round_then_uncalibrated_rerun(make_workspace, dvc_status):
    ws = make_workspace(**CALIBRATED)
    first = al_round(str(ws.root), simulate=True)
    assert first["steps_run"] == ["validate", "train", "score", "query"]
    calibrated = _metrics(ws)
    assert calibrated["calibration"] == "temperature" and calibrated["temperature"] > 0
    for key in ("val_ece", "val_nll", "test_ece", "test_nll"):
        assert 0 <= calibrated[f"{key}_before"] and 0 <= calibrated[f"{key}_after"]
    assert calibrated["val_nll_after"] <= calibrated["val_nll_before"]  # fitted there: never worse
    assert calibrated["test_ece"] == calibrated["test_ece_after"]  # what acquisition sees
    model = load_workspace_model(ws, ws.params())
    assert isinstance(model, Calibrated) and isinstance(model.calibrator, TemperatureScaling)
    assert float(model.calibrator.temperature) == pytest.approx(calibrated["temperature"])
    scores_calibrated = np.load(ws.path(SCORES))

    params = yaml.safe_load(ws.path("params.yaml").read_text())
    ws.path("params.yaml").write_text(yaml.safe_dump({**params, "calibration": "none"}, sort_keys=False))
    second = al_round(str(ws.root), rerun=True)
    assert second["steps_run"] == ["train", "score", "query"]
    plain = _metrics(ws)
    assert "temperature" not in plain and "test_ece_before" not in plain
    # The same seeded training and test MC pass: the uncalibrated ECE is the first round's "before".
    assert plain["test_ece"] == pytest.approx(calibrated["test_ece_before"])
    assert plain["test_nll"] == pytest.approx(calibrated["test_nll_before"])
    scores_plain = np.load(ws.path(SCORES))
    assert list(scores_plain["ids"]) == list(scores_calibrated["ids"])
    assert not np.allclose(scores_plain["scores"], scores_calibrated["scores"])
    assert not isinstance(load_workspace_model(ws, ws.params()), Calibrated)
    assert dvc_status(ws.root) == {}


def test_bad_calibration_names_the_field(tmp_path):
    path = tmp_path / "params.yaml"
    with pytest.raises(ParamsError, match=r"params.yaml: field 'calibration'.*'platt'"):
        parse_params({"classes": ["a", "b"], "calibration": "platt"}, path)
    with pytest.raises(ParamsError, match=r"field 'calibration'.*val_fraction > 0"):
        parse_params({"classes": ["a", "b"], "calibration": "dirichlet", "training": {"val_fraction": 0}}, path)


def test_a_deep_ensemble_is_calibrated_on_the_split_no_member_trained_on(make_workspace):
    """The train step alone (no flow): 130 labels, a 20 % split of 26 that every member validates
    on; the checkpoint reloads as the calibrated ensemble and gives the calibrated MC samples."""
    ws = make_workspace(labels="seed", calibration="temperature", mc_iterations=2,
                        training={"max_epochs": 2, "patience": 1, "val_fraction": 0.2, "batch_size": 16})
    params = yaml.safe_load(ws.path("params.yaml").read_text())
    params["model"] = {"name": "gal_cnn", "input_shape": [1, 8, 8], "mc": "ensemble", "ensemble_size": 2,
                       "hidden": 16, "channels": 4}
    ws.path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    metrics = train_step(ws, 0, device="cpu")
    assert metrics["n_labelled"] == 130 and metrics["calibration"] == "temperature"
    assert metrics["temperature"] > 0 and "calibration_skipped" not in metrics
    assert metrics["val_nll_after"] <= metrics["val_nll_before"]
    model = load_workspace_model(ws, ws.params())
    assert isinstance(model, Calibrated) and isinstance(model.model, Ensemble) and len(model.model) == 2
    assert float(model.calibrator.temperature) == pytest.approx(metrics["temperature"])
    # fitted on the split both members early-stopped on and never trained on (fit_members: tested
    # by brute force in tests/test_training.py), from the round's calibration MC pass
    data = load_workspace_data(ws, ws.inputs())
    train_set = data.train_set()
    val, _ = fit_validation_split(train_set, val_fraction=0.2, seed=round_seed(ws.params().seed, 0, "train"))
    assert len(val) == 26
    y = np.asarray([int(val[i][1]) for i in range(len(val))])
    probs = predict_mc(model.model, val, iterations=2, seed=round_seed(ws.params().seed, 0, "calibrate"),
                       progress=False)
    assert metrics["val_nll_after"] == pytest.approx(evaluate(model.calibrate_probs(probs), y)["nll"],
                                                     rel=1e-5)
