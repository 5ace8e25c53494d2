"""Temperature scaling and Dirichlet calibration (al_lib.calibration)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from al_lib.bayesian import patch_module
from al_lib.calibration import (
    Calibrated, DirichletCalibration, TemperatureScaling, calibrate, calibrate_probs, fit_validation_split,
    make_calibrator, mc_nll,
)
from al_lib.inference import predict_mc
from al_lib.metrics import expected_calibration_error, nll
from al_lib.prefix_cache import plan_split
from al_lib.seeding import check_random_state
from al_lib.training import fit


def _softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _synthetic(n: int, c: int, true_t: float, seed: int, scale: float = 3.0):
    """Logits z [n, c] and labels drawn from softmax(z / true_t): the calibrated T is true_t."""
    rng = check_random_state(seed)
    z = rng.normal(size=(n, c)) * scale
    return z, _draw(_softmax(z / true_t), rng)


def _draw(p: np.ndarray, rng) -> np.ndarray:
    """One class per row of p [n, c] (inverse CDF of a uniform)."""
    return np.minimum((p.cumsum(axis=1) < rng.random((len(p), 1))).sum(axis=1), p.shape[1] - 1)


def test_temperature_recovered_and_first_order_condition():
    z, y = _synthetic(20_000, 5, 2.5, seed=0)
    probs = _softmax(z)[..., None]  # [N, C, 1]
    cal = TemperatureScaling().fit(probs, y)
    t = float(cal.temperature)
    assert t == pytest.approx(2.5, rel=0.05)
    # Closed form at the optimum (beta = 1/T): d NLL / d beta = 0 <=> the mean logit of the true
    # class equals the mean expected logit under softmax(beta z).
    q = _softmax(z / t)
    assert np.mean(z[np.arange(len(y)), y]) == pytest.approx(np.mean((q * z).sum(1)), abs=1e-4)


def test_temperature_one_when_already_calibrated():
    z, y = _synthetic(20_000, 4, 1.0, seed=1)
    assert float(TemperatureScaling().fit(_softmax(z), y).temperature) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("method", ["temperature", "dirichlet"])
def test_nll_never_worse_on_fitting_set(method):
    rng = check_random_state(3)
    for trial in range(3):
        probs = _softmax(rng.normal(size=(60, 3, 4)) * 2)  # [N, C, T], labels unrelated to probs
        y = rng.integers(0, 3, size=60)
        cal = make_calibrator(method, 3).fit(probs, y)
        assert nll(calibrate_probs(cal, probs), y) <= nll(probs, y) + 1e-12


def test_dirichlet_reduces_ece_on_miscalibrated_set():
    # Over-confident and biased: the labels follow softmax(z / 3 + shift), the model says softmax(z).
    rng = check_random_state(4)
    z = rng.normal(size=(3000, 4)) * 4
    shift = np.array([1.0, 0.0, -0.5, 0.0])
    y = _draw(_softmax(z / 3 + shift), rng)
    probs = _softmax(z)
    fit_part, test_part = slice(0, 2000), slice(2000, None)
    cal = DirichletCalibration(4).fit(probs[fit_part], y[fit_part])
    before = expected_calibration_error(probs[test_part], y[test_part])
    after = expected_calibration_error(calibrate_probs(cal, probs[test_part]), y[test_part])
    assert after < 0.5 * before
    assert not torch.equal(cal.weight, torch.eye(4))
    # the L2 variant also calibrates; stronger regularisation stays nearer the identity (ODIR)
    assert expected_calibration_error(calibrate_probs(DirichletCalibration(4, regularization="l2")
                                                      .fit(probs[fit_part], y[fit_part]), probs[test_part]),
                                      y[test_part]) < before
    strong = DirichletCalibration(4, reg_lambda=1e3).fit(probs[fit_part], y[fit_part])
    off = lambda w: (w - torch.diag(torch.diagonal(w))).abs().sum()  # noqa: E731
    assert off(strong.weight) < off(cal.weight)


def test_temperature_keeps_argmax_and_shapes_nct():
    rng = check_random_state(5)
    probs = _softmax(rng.normal(size=(50, 6, 7)) * 3).astype(np.float32)
    y = rng.integers(0, 6, size=50)
    cal = TemperatureScaling().fit(probs, y)
    out = calibrate_probs(cal, probs)
    assert out.shape == (50, 6, 7) and out.dtype == np.float32
    assert np.array_equal(out.argmax(1), probs.argmax(1))
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)
    torch_out = calibrate_probs(cal, torch.from_numpy(probs))
    assert isinstance(torch_out, torch.Tensor) and torch_out.shape == (50, 6, 7)
    # the MC NLL averages the probabilities over T, as metrics.nll does
    assert mc_nll(np.log(probs.astype(np.float64)), y) == pytest.approx(nll(probs, y), rel=1e-5)


def test_fits_are_deterministic():
    rng = check_random_state(6)
    probs, y = _softmax(rng.normal(size=(300, 3, 5)) * 3), rng.integers(0, 3, size=300)
    for method in ("temperature", "dirichlet"):
        a = make_calibrator(method, 3).fit(probs, y).state_dict()
        b = make_calibrator(method, 3).fit(probs, y).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_binary_single_logit_temperature():
    rng = check_random_state(7)
    z = rng.normal(size=5000) * 4
    y = (rng.random(5000) < 1 / (1 + np.exp(-z / 2))).astype(int)
    p = (1 / (1 + np.exp(-z)))[:, None, None]  # [N, 1, 1] = p(y=1)
    assert float(TemperatureScaling().fit(p, y).temperature) == pytest.approx(2.0, rel=0.1)
    with pytest.raises(ValueError, match="n_classes >= 2"):
        DirichletCalibration(1)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="calibration must be one of"):
        make_calibrator("platt", 3)
    with pytest.raises(ValueError, match="targets must be"):
        TemperatureScaling().fit(np.full((4, 3, 2), 1 / 3), [0, 1])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TemperatureScaling(0.0)


def _mlp(seed: int = 0) -> nn.Module:
    torch_rng = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch_rng) * 0.5)
    return model


def _blobs(n: int, seed: int) -> TensorDataset:
    rng = check_random_state(seed)
    y = rng.integers(0, 3, size=n)
    x = rng.normal(size=(n, 4)) + np.eye(3, 4)[y] * 1.5
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))


@pytest.mark.parametrize("method", ["temperature", "dirichlet"])
def test_calibrated_model_mc_prefix_cache_and_checkpoint(method):
    model = patch_module(_mlp(), consistent=True)
    data = _blobs(120, 0)
    result = calibrate(model, data, method, iterations=6, seed=11, batch_size=32)
    wrapped = result.model
    assert result.after["nll"] <= result.before["nll"]
    # The calibrator sits in the tail: the deterministic prefix still runs once per batch.
    split = plan_split(wrapped.eval())
    assert split.prefix is not None and split.how == "fx"
    assert any("calibrator" in str(node.target) for node in split.tail.graph.nodes)
    assert not any("calibrator" in str(node.target) for node in split.prefix.graph.nodes)
    # predict_mc of the wrapped model = the calibrator applied to each MC sample of the plain one
    plain = predict_mc(model, data, iterations=6, seed=5, progress=False)
    calibrated = predict_mc(wrapped, data, iterations=6, seed=5, progress=False)
    full = predict_mc(wrapped, data, iterations=6, seed=5, progress=False, engine="full")
    assert calibrated.shape == (120, 3, 6)
    np.testing.assert_allclose(calibrated, wrapped.calibrate_probs(plain), atol=1e-5)
    np.testing.assert_allclose(calibrated, full, atol=1e-5)
    # checkpoint: a plain tensor dict, loaded with weights_only=True into a fresh wrapper
    buffer = io.BytesIO()
    torch.save(wrapped.state_dict(), buffer)
    buffer.seek(0)
    fresh = Calibrated(patch_module(_mlp(1), consistent=True), make_calibrator(method, 3))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    np.testing.assert_allclose(predict_mc(fresh, data, iterations=6, seed=5, progress=False), calibrated, atol=1e-6)


def test_calibrate_skips_without_split():
    result = calibrate(_mlp(), None, "temperature", n_classes=3)
    assert result.skipped and float(result.model.calibrator.temperature) == 1.0
    assert result.metrics() == {"calibration": "temperature", "calibration_skipped": "no validation split"}


def test_fit_validation_split_is_fits_split():
    # fit's best validation loss, recomputed on our split with the restored (deterministic) model
    data = _blobs(100, 1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    result = fit(model, data, max_epochs=3, val_fraction=0.3, seed=42, progress=False, batch_size=16)
    val, reason = fit_validation_split(data, val_fraction=0.3, seed=42)
    assert reason == "" and len(val) == result.n_val
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.stack([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(x), y))
    assert loss == pytest.approx(result.best_val_loss, rel=1e-5)
    assert fit_validation_split(data, val_fraction=0.0, seed=42) == (None, "val_fraction=0")


def test_mc_nll_gradient_matches_finite_differences():
    rng = check_random_state(8)
    logits, y = rng.normal(size=(5, 3, 4)), rng.integers(0, 3, size=5)
    _, grad = mc_nll(logits, y, return_grad=True)
    eps, numeric = 1e-6, np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[index] = eps
        numeric[index] = (mc_nll(logits + step, y) - mc_nll(logits - step, y)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-8)


@pytest.mark.parametrize("config", [{"name": "gal_cnn", "input_shape": [1, 28, 28]},
                                    {"name": "vgg", "input_shape": [1, 28, 28]},
                                    {"name": "gal_cnn", "input_shape": [1, 28, 28], "mc": "dropconnect"}])
def test_workspace_models_split_at_the_same_layer_when_calibrated(config):
    from al_lib.models import ModelSpec

    model = ModelSpec.from_config(config).build(3, seed=0).eval()
    plain = plan_split(model)
    for method in ("temperature", "dirichlet"):
        wrapped = plan_split(Calibrated(model, make_calibrator(method, 3)).eval())
        assert wrapped.prefix is not None
        # the same cut: after the same layer (fx names it with the wrapper's "model_" prefix)
        assert wrapped.reason.replace("'model_", "'") == plain.reason


def test_calibrated_from_state_rebuilds_the_checkpoints_form():
    from al_lib.calibration import calibrated_from_state

    for method, kind in (("temperature", TemperatureScaling), ("dirichlet", DirichletCalibration)):
        state = Calibrated(_mlp(), make_calibrator(method, 3)).state_dict()
        rebuilt = calibrated_from_state(_mlp(1), state)
        assert isinstance(rebuilt, Calibrated) and isinstance(rebuilt.calibrator, kind)
        rebuilt.load_state_dict(state)  # strict: the same keys and shapes
    plain = _mlp()
    assert calibrated_from_state(plain, plain.state_dict()) is plain
    with pytest.raises(ValueError, match="no known calibrator"):
        calibrated_from_state(plain, {"calibrator.scale": torch.ones(1)})
