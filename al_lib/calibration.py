"""Post-hoc calibration of a trained classifier: temperature scaling and Dirichlet calibration.

A calibrator is a small :class:`torch.nn.Module` appended after the model's logits
(:class:`Calibrated`): with MC dropout it acts on every MC sample's logits, so
:func:`al_lib.inference.predict_mc`, the streaming scorers and the prefix cache of
:mod:`al_lib.prefix_cache` (the calibrator sits in the tail, after the first stochastic layer) work
on the calibrated model unchanged, and the calibrated probabilities are what acquisition scores.

- :class:`TemperatureScaling` (Guo et al. 2017, "On calibration of modern neural networks"):
  ``softmax(z / T)`` with one scalar ``T > 0`` (``sigmoid(z / T)`` for a single-logit binary
  model). It never changes the argmax.
- :class:`DirichletCalibration` (Kull et al. 2019, "Beyond temperature scaling"; BaaL's
  ``DirichletCalibrator``): ``softmax(W log softmax(z) + b)``, a linear map on the
  log-probabilities, ``W`` ``[C, C]``, ``b`` ``[C]``, with the paper's ODIR regularisation
  (off-diagonal and intercept: ``λ / (C (C − 1)) Σ_{i≠j} W_ij² + μ / C Σ_j b_j²``) or plain L2
  (``λ / C² Σ_ij W_ij² + μ / C Σ_j b_j²``).

Both are fitted by minimising the negative log-likelihood of the **MC-averaged** calibrated
probabilities, ``−mean_i log mean_t p(y_i | x_i, t)``, on a validation split the model was not
trained on, from the MC probabilities ``[N, C, T]`` of the uncalibrated model: the same average
the metrics and the strategies use later. ``log softmax(z) = z − logsumexp(z)`` differs from the
logits by a per-sample constant that neither calibrator sees, so the log of the probabilities is
all a fit needs. Fits are deterministic (float64 on the CPU, no random draw) and never return a
map whose fitting NLL is worse than the uncalibrated one (then they keep the identity).

The calibrators keep their state in buffers (not parameters: training the model never touches
them), so ``Calibrated(...).state_dict()`` is a plain tensor dict that loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from al_lib.inference import predict_mc
from al_lib.metrics import evaluate

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_METHODS",
    "Calibrated",
    "CalibrationResult",
    "DirichletCalibration",
    "TemperatureScaling",
    "calibrate",
    "calibrate_fitted",
    "calibrate_probs",
    "calibrated_from_state",
    "fit_validation_split",
    "make_calibrator",
    "mc_nll",
]

#: The values of a ``calibration`` setting: "none" leaves the model as it is.
CALIBRATION_METHODS = ("none", "temperature", "dirichlet")

#: Temperatures the 1-D search considers: [1e-2, 1e2].
TEMPERATURE_BOUNDS = (1e-2, 1e2)

# Probabilities below this (float32 underflow) are floored before the log.
_TINY = float(torch.finfo(torch.float32).tiny)


# ---------------------------------------------------------------------------- the likelihood


def _log_inputs(probs) -> np.ndarray:
    """MC probabilities ``[N, C, T]`` (or ``[N, C]``) → float64 calibrator inputs ``[N, C', T]``.

    Multi-class: ``log p`` (equal to the logits up to a per-sample constant). Binary (C == 1,
    p = p(y=1)): the two-class logits ``[0, log p − log(1 − p)]`` (softmax of them is
    ``[1 − p, p]``, and dividing them by T is dividing the single logit by T).
    """
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float64)
    if p.ndim == 2:
        p = p[..., None]
    if p.ndim != 3:
        raise ValueError(f"probs must be [N, C] or [N, C, T], got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    if p.shape[1] == 1:
        logit = np.log(np.maximum(p, _TINY)) - np.log(np.maximum(1 - p, _TINY))
        return np.concatenate([np.zeros_like(logit), logit], axis=1)
    return np.log(np.maximum(p, _TINY))


def _check_targets(targets, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"targets must be [N] with N = {n} (rows of probs), got shape {y.shape}")
    if n == 0:
        raise ValueError("cannot calibrate on an empty set")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise ValueError(f"targets must be integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"targets must lie in [0, {n_classes}), got values in [{y.min()}, {y.max()}]")
    return y


def mc_nll(logits: np.ndarray, targets: np.ndarray, *, return_grad: bool = False):
    """``−mean_i log mean_t softmax(logits[i, :, t])[y_i]``: the NLL of the MC-averaged prediction.

    Parameters
    ----------
    logits : float ndarray ``[N, C, T]`` (softmax over C).
    targets : int ndarray ``[N]``
    return_grad : bool, also return the gradient with respect to ``logits``.

    Returns
    -------
    float, or (float, ndarray ``[N, C, T]``) with ``return_grad``. Computed with logsumexp over
    C and T (no underflow): with ``r_it = p_it(y_i) / sum_t p_it(y_i)`` the gradient is
    ``r_it (softmax_itc − 1[c = y_i]) / N``.
    """
    n = len(targets)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))  # [N, T]
    log_py = logits[np.arange(n), targets, :] - lse  # [N, T]
    peak = log_py.max(axis=1, keepdims=True)
    log_mean = peak[:, 0] + np.log(np.exp(log_py - peak).mean(axis=1))  # [N]
    loss = float(-log_mean.mean())
    if not return_grad:
        return loss
    r = np.exp(log_py - log_mean[:, None]) / logits.shape[-1]  # [N, T], sums to 1 over T
    grad = np.exp(logits - lse[:, None, :]) * r[:, None, :]
    grad[np.arange(n), targets, :] -= r
    return loss, grad / n


# ---------------------------------------------------------------------------- the calibrators


class TemperatureScaling(nn.Module):
    """``logits / T`` (Guo et al. 2017): one temperature for every class and sample.

    Parameters
    ----------
    temperature : float > 0, the initial (or known) temperature; :meth:`fit` replaces it.

    Attributes
    ----------
    temperature : buffer, scalar float tensor.
    """

    method = "temperature"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, ...]`` → calibrated logits of the same shape."""
        return logits / self.temperature.to(logits.dtype)

    def fit(self, probs, targets, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
            grid: int = 49, tol: float = 1e-7) -> TemperatureScaling:
        """Fit ``T`` on MC probabilities of the uncalibrated model.

        Minimises :func:`mc_nll` over ``log T`` in ``log(bounds)``: the best of a ``grid``-point
        grid, refined by golden-section search in the bracket around it (to ``tol`` in log T).
        T = 1 is kept when nothing in the range does better. Deterministic.

        Parameters
        ----------
        probs : array or tensor ``[N, C, T]`` or ``[N, C]``, the uncalibrated MC probabilities.
        targets : int array or tensor ``[N]``

        Returns
        -------
        self
        """
        inputs = _log_inputs(probs)
        y = _check_targets(targets, len(inputs), inputs.shape[1])
        lo, hi = (math.log(b) for b in bounds)
        if not lo < hi:
            raise ValueError(f"bounds must be increasing positive temperatures, got {bounds}")

        def loss(log_t: float) -> float:
            return mc_nll(inputs / math.exp(log_t), y)

        points = np.linspace(lo, hi, grid)
        values = [loss(v) for v in points]
        best = int(np.argmin(values))
        a, b = points[max(best - 1, 0)], points[min(best + 1, grid - 1)]
        ratio = (math.sqrt(5) - 1) / 2
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        fc, fd = loss(c), loss(d)
        while b - a > tol:
            if fc <= fd:
                b, d, fd = d, c, fc
                c = b - ratio * (b - a)
                fc = loss(c)
            else:
                a, c, fc = c, d, fd
                d = a + ratio * (b - a)
                fd = loss(d)
        candidates = [(values[best], points[best]), (fc, c), (fd, d)]
        value, log_t = min(candidates, key=lambda item: item[0])
        if not value < loss(0.0):
            log_t = 0.0
        self.temperature.fill_(math.exp(log_t))
        return self

    def transform_logits(self, logits: np.ndarray) -> np.ndarray:
        """The forward map on float64 numpy logits ``[N, C, T]`` (what :meth:`fit` optimises)."""
        return logits / float(self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature):.4g}"


class DirichletCalibration(nn.Module):
    """``W log softmax(z) + b`` (Kull et al. 2019): a linear map on the log-probabilities.

    Parameters
    ----------
    n_classes : int >= 2 (a single-logit binary model: use temperature scaling).
    reg_lambda : float >= 0, λ, the weight regularisation.
    reg_mu : float >= 0 or None, μ, the intercept regularisation (None: equal to λ).
    regularization : {"odir", "l2"}
        "odir": off-diagonal and intercept regularisation (the paper's recommendation for neural
        networks, λ / (C (C − 1)) on the squared off-diagonal weights); "l2": λ / C² on every
        squared weight. Both add μ / C Σ b².
    max_iter : int, L-BFGS iterations of :meth:`fit`.

    Attributes
    ----------
    weight : buffer ``[C, C]`` (identity until fitted), bias : buffer ``[C]`` (zeros).
    """

    method = "dirichlet"

    def __init__(self, n_classes: int, *, reg_lambda: float = 1e-2, reg_mu: float | None = None,
                 regularization: str = "odir", max_iter: int = 100) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"Dirichlet calibration needs n_classes >= 2, got {n_classes}; "
                             "a single-logit binary model takes temperature scaling")
        if regularization not in ("odir", "l2"):
            raise ValueError(f"regularization must be 'odir' or 'l2', got {regularization!r}")
        reg_mu = reg_lambda if reg_mu is None else reg_mu
        if reg_lambda < 0 or reg_mu < 0:
            raise ValueError(f"reg_lambda and reg_mu must be >= 0, got {reg_lambda}, {reg_mu}")
        self.n_classes, self.reg_lambda, self.reg_mu = int(n_classes), float(reg_lambda), float(reg_mu)
        self.regularization, self.max_iter = regularization, int(max_iter)
        self.register_buffer("weight", torch.eye(n_classes))
        self.register_buffer("bias", torch.zeros(n_classes))

    @staticmethod
    def _affine(log_probs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``W log p + b`` over dim 1 of ``[B, C, ...]``."""
        moved = log_probs.movedim(1, -1)
        return (moved @ weight.T + bias).movedim(-1, 1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, ...]`` → calibrated logits of the same shape (no Python branch on the
        input: torch.fx traces it, so the prefix cache can split a :class:`Calibrated` model)."""
        return self._affine(torch.log_softmax(logits, dim=1), self.weight.to(logits.dtype), self.bias.to(logits.dtype))

    def _penalty(self, weight: np.ndarray, bias: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """The regularisation term for ``weight`` ``[C, C]``, ``bias`` ``[C]`` and its gradients."""
        c = self.n_classes
        if self.regularization == "odir":
            scale, mask = self.reg_lambda / (c * (c - 1)), 1.0 - np.eye(c)
        else:
            scale, mask = self.reg_lambda / c**2, np.ones((c, c))
        w = weight * mask
        value = scale * float((w**2).sum()) + self.reg_mu / c * float((bias**2).sum())
        return value, 2 * scale * w, 2 * self.reg_mu / c * bias

    @staticmethod
    def _map(log_p: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """``W log p + b`` for float64 numpy log-probabilities ``[N, C, T]``."""
        return np.einsum("jc,nct->njt", weight, log_p) + bias[None, :, None]

    def transform_logits(self, logits: np.ndarray) -> np.ndarray:
        """The forward map on float64 numpy logits ``[N, C, T]`` (what :meth:`fit` optimises)."""
        top = logits.max(axis=1, keepdims=True)
        log_p = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        return self._map(log_p, self.weight.detach().cpu().double().numpy(), self.bias.detach().cpu().double().numpy())

    def fit(self, probs, targets) -> DirichletCalibration:
        """Fit ``W``, ``b`` on MC probabilities of the uncalibrated model.

        Minimises ``mc_nll(W log p + b) + penalty`` (analytic gradient) with L-BFGS
        (``scipy.optimize``) in float64 from the identity map. Deterministic. Keeps the identity
        when the fit's NLL on this set is not below the uncalibrated NLL.

        Parameters
        ----------
        probs : array or tensor ``[N, C, T]`` or ``[N, C]``, C == ``n_classes``.
        targets : int array or tensor ``[N]``

        Returns
        -------
        self
        """
        from scipy.optimize import minimize

        c = self.n_classes
        if np.shape(probs)[1:2] != (c,):
            raise ValueError(f"DirichletCalibration for {c} classes got probs of shape {tuple(np.shape(probs))}")
        log_p = _log_inputs(probs)
        y = _check_targets(targets, len(log_p), c)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            weight, bias = theta[: c * c].reshape(c, c), theta[c * c:]
            loss, grad = mc_nll(self._map(log_p, weight, bias), y, return_grad=True)
            reg, reg_w, reg_b = self._penalty(weight, bias)
            d_weight = np.einsum("njt,nct->jc", grad, log_p) + reg_w
            return loss + reg, np.concatenate([d_weight.ravel(), grad.sum(axis=(0, 2)) + reg_b])

        start = np.concatenate([np.eye(c).ravel(), np.zeros(c)])
        found = minimize(objective, start, jac=True, method="L-BFGS-B",
                         options={"maxiter": self.max_iter, "gtol": 1e-8, "ftol": 1e-11})
        weight, bias = found.x[: c * c].reshape(c, c), found.x[c * c:]
        fitted, before = mc_nll(self._map(log_p, weight, bias), y), mc_nll(log_p, y)
        if np.all(np.isfinite(found.x)) and fitted < before:
            self.weight.copy_(torch.from_numpy(weight))
            self.bias.copy_(torch.from_numpy(bias))
        else:
            logger.info("Dirichlet calibration: the fit (NLL %.4g) does not beat the uncalibrated "
                        "model (%.4g); keeping the identity", fitted, before)
            self.weight.copy_(torch.eye(c))
            self.bias.zero_()
        return self

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, regularization={self.regularization!r}, λ={self.reg_lambda:g}, μ={self.reg_mu:g}"


def make_calibrator(method: str, n_classes: int, **options) -> nn.Module | None:
    """A fresh (identity) calibrator for ``method`` of :data:`CALIBRATION_METHODS`.

    Parameters
    ----------
    method : {"none", "temperature", "dirichlet"}
    n_classes : int, the model's number of classes (1 for a single-logit binary model).
    **options : the calibrator's keyword arguments (e.g. ``reg_lambda`` for "dirichlet").

    Returns
    -------
    nn.Module, or None for "none".
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {list(CALIBRATION_METHODS)}, got {method!r}")
    if method == "none":
        if options:
            raise ValueError(f"calibration 'none' takes no options, got {sorted(options)}")
        return None
    if method == "temperature":
        return TemperatureScaling(**options)
    return DirichletCalibration(n_classes, **options)


class Calibrated(nn.Module):
    """``calibrator(model(x))``: a model with a calibrator after its logits.

    The state dict holds ``model.*`` and ``calibrator.*`` tensors (buffers for the calibrator),
    so a checkpoint of it loads with ``weights_only=True`` into
    ``Calibrated(fresh_model, make_calibrator(method, C))``.

    Parameters
    ----------
    model : nn.Module returning logits ``[B, C, ...]``.
    calibrator : nn.Module mapping logits to logits of the same shape (see :func:`make_calibrator`).
    """

    def __init__(self, model: nn.Module, calibrator: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calibrator = calibrator

    def forward(self, x):
        return self.calibrator(self.model(x))

    def calibrate_probs(self, probs):
        """The calibrated version of the uncalibrated model's probabilities, without a new pass.

        Parameters
        ----------
        probs : array or tensor ``[N, C, T]`` (or ``[N, C]``), from ``model``.

        Returns
        -------
        the same kind and shape: the probabilities ``self`` gives for the same MC samples.
        """
        return calibrate_probs(self.calibrator, probs)


def calibrated_from_state(model: nn.Module, state) -> nn.Module:
    """``model`` in the form a checkpoint ``state`` (a state dict) was saved from.

    A state with ``calibrator.*`` keys came from :class:`Calibrated`: the result is
    ``Calibrated(model, <fresh calibrator of that kind>)`` (temperature scaling for
    ``calibrator.temperature``, Dirichlet calibration for ``calibrator.weight``), ready for
    ``load_state_dict(state)``; any other state: ``model`` itself.

    Raises ValueError for ``calibrator.*`` keys of no known calibrator.
    """
    keys = {key.split(".", 1)[1] for key in state if key.startswith("calibrator.")}
    if not keys:
        return model
    if keys == {"temperature"}:
        return Calibrated(model, TemperatureScaling())
    if keys == {"weight", "bias"}:
        return Calibrated(model, DirichletCalibration(int(state["calibrator.weight"].shape[0])))
    raise ValueError(f"the checkpoint's calibrator keys {sorted(keys)} are of no known calibrator "
                     f"(temperature scaling: ['temperature']; Dirichlet: ['bias', 'weight'])")


def calibrate_probs(calibrator: nn.Module, probs):
    """``calibrator`` applied to MC probabilities ``[N, C, T]`` (or ``[N, C]``) of the uncalibrated
    model (its ``transform_logits`` on their logs): the same kind (numpy or torch), dtype and
    shape out."""
    logits = calibrator.transform_logits(_log_inputs(probs))
    top = logits.max(axis=1, keepdims=True)
    out = np.exp(logits - top)
    out /= out.sum(axis=1, keepdims=True)
    if np.shape(probs)[1] == 1:  # binary: p(y=1) of the two-class form
        out = out[:, 1:]
    out = out.reshape(np.shape(probs))
    if isinstance(probs, torch.Tensor):
        return torch.from_numpy(out).to(probs.device, probs.dtype)
    return out.astype(np.asarray(probs).dtype, copy=False)


# ---------------------------------------------------------------------------- fitting on a split


def fit_validation_split(train_set: Dataset, *, val_fraction: float = 0.2, seed=0,
                         val_set: Dataset | None = None) -> tuple[Dataset | None, str]:
    """The validation split :func:`al_lib.training.fit` held out for the same arguments.

    ``fit`` draws its split first from ``torch_generator(seed)``, so the same ``train_set``,
    ``val_fraction`` and ``seed`` give the same samples here: the calibrator is fitted on data the
    model was not trained on.

    Returns
    -------
    (val or None, reason) : the split, or None and why ``fit`` validated on nothing.
    """
    from al_lib.seeding import torch_generator
    from al_lib.training import _validation_plan

    _, val, reason = _validation_plan(train_set, val_set, val_fraction, torch_generator(seed))
    return val, reason


@dataclass
class CalibrationResult:
    """What :func:`calibrate` did.

    Attributes
    ----------
    model : :class:`Calibrated` (the calibrator fitted, or the identity when ``skipped``).
    method : str
    before, after : dict, :func:`al_lib.metrics.evaluate` on the fitting set (empty when skipped).
    skipped : str, why nothing was fitted ("" when fitted).
    """

    model: Calibrated
    method: str
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    skipped: str = ""

    def metrics(self, prefix: str = "val") -> dict:
        """Flat JSON-ready metrics: ``calibration`` (method), ``{prefix}_ece_before/after``,
        ``{prefix}_nll_before/after``, ``temperature`` (temperature scaling) and
        ``calibration_skipped`` (the reason) when nothing was fitted."""
        out: dict = {"calibration": self.method}
        if self.skipped:
            out["calibration_skipped"] = self.skipped
            return out
        for key in ("ece", "nll"):
            out[f"{prefix}_{key}_before"] = self.before[key]
            out[f"{prefix}_{key}_after"] = self.after[key]
        if isinstance(self.model.calibrator, TemperatureScaling):
            out["temperature"] = float(self.model.calibrator.temperature)
        return out


def calibrate(model: nn.Module, val_set: Dataset | None, method: str = "temperature", *, targets=None,
              n_classes: int | None = None, iterations: int = 20, batch_size: int = 128, device=None,
              seed=None, progress: bool = False, **options) -> CalibrationResult:
    """Fit a calibrator on ``val_set`` after training and wrap ``model`` with it.

    The validation inputs go through one MC pass of ``model`` (``iterations`` samples, ``seed``),
    and the calibrator is fitted on those MC probabilities ``[N, C, T]`` so that the MC-averaged
    calibrated prediction has the lowest NLL.

    Parameters
    ----------
    model : nn.Module, trained, returning logits ``[B, C]``.
    val_set : Dataset of ``(x, y)`` items not trained on (see :func:`fit_validation_split`), or
        None / empty: nothing is fitted (the identity calibrator, ``skipped`` says why).
    method : {"temperature", "dirichlet"}
    targets : int array ``[N]``, optional: the labels of ``val_set`` (default: ``y`` of its items,
        which decodes each input once more; pass them when they are known).
    n_classes : int, optional, for a fresh calibrator when nothing is fitted (default: from the pass).
    iterations, batch_size, device, seed, progress : as :func:`al_lib.inference.predict_mc`.
    **options : the calibrator's options (:func:`make_calibrator`).

    Returns
    -------
    CalibrationResult
    """
    if method == "none":
        raise ValueError("calibrate() needs a method: 'temperature' or 'dirichlet'")
    if val_set is None or len(val_set) == 0:
        if n_classes is None:
            raise ValueError("nothing to calibrate on: give n_classes for the identity calibrator")
        reason = "no validation split" if val_set is None else "the validation split is empty"
        return CalibrationResult(Calibrated(model, _on_device(make_calibrator(method, n_classes, **options), model)),
                                 method, skipped=reason)
    probs = predict_mc(model, val_set, iterations=iterations, batch_size=batch_size, device=device, seed=seed,
                       progress=progress)
    if targets is None:
        targets = np.asarray([int(val_set[i][1]) for i in range(len(val_set))], dtype=np.int64)
    calibrator = make_calibrator(method, probs.shape[1], **options).fit(probs, targets)
    wrapped = Calibrated(model, _on_device(calibrator, model))
    after = wrapped.calibrate_probs(probs)
    result = CalibrationResult(wrapped, method, evaluate(probs, targets), evaluate(after, targets))
    logger.info("calibration (%s) on %d validation samples: ECE %.4f -> %.4f, NLL %.4f -> %.4f", method,
                len(val_set), result.before["ece"], result.after["ece"], result.before["nll"], result.after["nll"])
    return result


def calibrate_fitted(model: nn.Module, train_set: Dataset, method: str, *, fit_seed, n_classes: int,
                     val_fraction: float | None = None, val_set: Dataset | None = None, targets_of=None,
                     **mc) -> CalibrationResult:
    """:func:`calibrate` on the validation split of ``fit(model, train_set, val_set=val_set,
    val_fraction=val_fraction, seed=fit_seed)`` (:func:`fit_validation_split`; ``val_fraction``
    None: ``fit``'s default): the one recipe of the train step and of :func:`al_lib.loop.simulate`.

    Parameters
    ----------
    targets_of : callable ``val_subset -> int array [N]``, optional: the split's labels without
        decoding its inputs (default: read from the items).
    **mc : ``iterations``, ``batch_size``, ``device``, ``seed``, ``progress`` of :func:`calibrate`.

    Returns
    -------
    CalibrationResult; when ``fit`` validated on nothing, ``skipped`` says why (the identity
    calibrator is kept, so the checkpoint's form depends only on ``method``).
    """
    if val_fraction is None:
        import inspect

        from al_lib.training import fit

        val_fraction = inspect.signature(fit).parameters["val_fraction"].default
    val, reason = fit_validation_split(train_set, val_fraction=val_fraction, seed=fit_seed, val_set=val_set)
    targets = targets_of(val) if val is not None and targets_of is not None else None
    result = calibrate(model, val, method, targets=targets, n_classes=n_classes, **mc)
    if result.skipped:
        result.skipped = f"{result.skipped}: {reason}" if reason else result.skipped
        logger.warning("calibration %r not fitted (%s); the model is left uncalibrated", method, result.skipped)
    return result


def _on_device(calibrator: nn.Module, model: nn.Module) -> nn.Module:
    tensor = next(iter(model.parameters()), None)
    return calibrator.to(tensor.device) if tensor is not None else calibrator
