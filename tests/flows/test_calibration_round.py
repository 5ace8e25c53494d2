"""Calibration through a real workspace round (git + DVC + GX + Prefect): params.yaml
``calibration: temperature`` → the train step fits the temperature on fit's validation split,
metrics/train.json holds ECE/NLL before and after, the checkpoint holds the calibrator and the
score step scores calibrated probabilities; switching to ``none`` re-runs train, score and query
and gives the uncalibrated scores of the same trained weights."""

import json

import numpy as np
import pytest
import yaml

from al_lib.calibration import Calibrated, TemperatureScaling
from flows.round import al_round
from tasks.train import load_workspace_model
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
    with pytest.raises(ParamsError, match=r"field 'calibration'.*ensemble"):
        parse_params({"classes": ["a", "b"], "calibration": "temperature", "mc_iterations": 2,
                      "model": {"name": "gal_cnn", "input_shape": [1, 28, 28], "mc": "ensemble",
                                "ensemble_size": 2}}, path)
