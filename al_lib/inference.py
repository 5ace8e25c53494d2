"""Monte-Carlo prediction over a dataset, in full or streamed batch by batch, and pool scoring.

MC inference runs each batch through the model T times, vectorised: the batch is tiled T times
along dim 0 (t-major, see :mod:`al_lib.bayesian.mc_aware`). By default (``engine="auto"``) only the
part of the model from its first stochastic layer on is tiled: the deterministic prefix runs once
per batch (:mod:`al_lib.prefix_cache`), which gives the same numbers as tiling the whole model
(up to float rounding) for a fraction of the cost.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from al_lib import prefix_cache
from al_lib.bayesian.mc_aware import mc_aware_modules
from al_lib.bayesian.mc_aware import mc_iterations as declare_mc_iterations
from al_lib.device import resolve_device
from al_lib.sampling import RunningTopK, make_selector

logger = logging.getLogger(__name__)

__all__ = ["RunningTopK", "iter_predict_mc", "predict_mc", "score_pool"]

Heuristic = str | Callable[[torch.Tensor], torch.Tensor]

#: Default cap on the tiled rows of one forward pass (rows = samples x MC iterations).
MAX_ROWS = 8192


def iter_predict_mc(
    model: nn.Module,
    dataset: Dataset,
    *,
    iterations: int = 20,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    activation: str | Callable | None = "auto",
    seed: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
    engine: str = "auto",
    split: str | tuple[nn.Module, nn.Module] | None = None,
    amp: bool | torch.dtype | None = None,
    max_rows: int | None = MAX_ROWS,
) -> Iterator[torch.Tensor]:
    """Yield MC probabilities batch by batch: float32 tensors ``[B, C, ..., T]`` on ``device``.

    The deterministic prefix of the model (everything before its first stochastic layer) runs once
    per batch; the rest runs on the prefix output tiled T times along dim 0 (t-major), with
    MC-aware modules told T (see :mod:`al_lib.bayesian.mc_aware`). The model is put in ``eval()``
    mode, so only layers patched by :func:`~al_lib.bayesian.patch_module` stay stochastic; every
    module's mode is restored afterwards.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``[B, C, ...]`` (or probabilities with ``activation=None``).
    dataset : Dataset
        Items are ``x`` or tuples ``(x, ...)``; only ``x`` is used.
    iterations : int
        T, the number of MC samples.
    activation : {"auto", "softmax", "sigmoid", None} or callable
        "auto" = softmax over dim 1, or sigmoid when C == 1 (binary: p(y=1)).
    seed : int or None
        Seeds torch's RNG (dropout masks) for the duration of the call without touching the
        caller's RNG state; None leaves randomness unseeded.
    engine : {"auto", "prefix", "full"}
        "auto": prefix-cached when the model has a deterministic prefix, else full tiling (the
        reason is logged at INFO); "prefix": require a prefix (ValueError otherwise); "full":
        tile the whole model. Both engines give the same probabilities up to float rounding —
        and the same numbers for a given ``seed``, as the prefix draws no random numbers.
    split : None, str or (nn.Module, nn.Module)
        Where to cut (see :func:`al_lib.prefix_cache.find_split`): None = automatic; a submodule
        name (the prefix ends with its output, e.g. ``"features"``); or a ``(prefix, tail)`` pair
        with ``tail(prefix(x)) == model(x)``.
    amp : bool, torch.dtype or None
        Mixed precision (torch.autocast). None: on for CUDA (bfloat16 where supported, else
        float16), off elsewhere. True: on (bfloat16 on the CPU). A dtype: that dtype. The
        probabilities are float32 whatever the forward precision.
    max_rows : int or None
        Cap on the tiled rows of one forward pass of the tiled part. Over it, the batch is cut
        into slices of ``max_rows // T`` samples, each still carrying all T samples (so consistent
        masks, DropConnect and ensembles see whole MC samples); only when T alone exceeds the cap
        and the tiled part has no MC-aware module is T itself cut into groups. None: no cap.

    Yields
    ------
    probs : float32 tensor ``[B, C, ..., T]``
    """
    device = resolve_device(device)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_inputs)
    tiled = _TiledPass(iterations, activation, _amp_dtype(device, amp), max_rows)
    with _eval_mode(model):
        model.to(device)  # before planning: the split's cache signature covers moved buffers
        plan = prefix_cache.plan_split(model, engine=engine, split=split)
        yield from _predict_batches(model, plan, loader, tiled, device=device, seed=seed,
                                    progress=progress, strict=engine == "prefix", split=split)


@dataclass(frozen=True)
class _TiledPass:
    """How the tiled part of the model runs: T samples, output activation, autocast dtype, row cap."""

    iterations: int
    activation: str | Callable | None
    amp: torch.dtype | None
    max_rows: int | None

    def autocast(self, device: torch.device):
        """A fresh autocast context (or a no-op one): autocast objects are not reentrant."""
        return torch.autocast(device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()

    def probs(self, tail: nn.Module, h: torch.Tensor, *, t_chunkable: bool) -> torch.Tensor:
        """``tail`` on ``h`` [B, ...] tiled T times, <= ``max_rows`` rows per pass → [B, C, ..., T]."""
        rows, t_step = self._chunk_sizes(h.shape[0], t_chunkable)
        slices = []
        for start in range(0, h.shape[0], rows):
            part = h[start : start + rows]
            groups = [self._forward(tail, part, min(t_step, self.iterations - t0))
                      for t0 in range(0, self.iterations, t_step)]
            slices.append(torch.cat(groups, dim=-1) if len(groups) > 1 else groups[0])
        return torch.cat(slices, dim=0) if len(slices) > 1 else slices[0]

    def _chunk_sizes(self, batch: int, t_chunkable: bool) -> tuple[int, int]:
        """(samples per pass, MC iterations per pass) so that a pass has at most ``max_rows`` rows.

        Slicing the batch keeps whole MC samples in every pass, which MC-aware modules need; T is
        cut only when one sample's T rows exceed the cap and nothing in the tail is MC-aware.
        """
        t, cap = self.iterations, self.max_rows
        if cap is None or batch * t <= cap:
            return batch, t
        if t > cap and t_chunkable:
            return 1, cap
        return max(1, cap // t), t

    def _forward(self, tail: nn.Module, h: torch.Tensor, t: int) -> torch.Tensor:
        """One pass of ``tail`` on ``h`` [b, ...] tiled ``t`` times → probabilities [b, C, ..., t]."""
        with self.autocast(h.device):
            logits = tail(h.repeat(t, *([1] * (h.ndim - 1))))
        return _to_mc_probs(logits, t, self.activation)


def _predict_batches(model: nn.Module, plan: prefix_cache.MCSplit, loader: DataLoader, tiled: _TiledPass, *,
                     device: torch.device, seed: int | None, progress: bool, strict: bool,
                     split) -> Iterator[torch.Tensor]:
    """The batch loop of :func:`iter_predict_mc` for a planned split."""
    bar = tqdm(total=len(loader.dataset), desc=f"MC predict (T={tiled.iterations})", unit="sample",
               disable=not progress, leave=False)
    with contextlib.ExitStack() as scope:
        scope.callback(bar.close)
        if seed is not None:
            scope.enter_context(_seeded(seed, device))
        scope.enter_context(torch.inference_mode())
        first = True
        for x in loader:
            x = x.to(device, non_blocking=True)
            if first:  # settle the plan on real data, then declare T to the part that is tiled
                scope.enter_context(_eval_mode(plan.prefix, plan.tail))
                plan = _usable(model, plan, x, strict=strict, split=split)
                scope.enter_context(declare_mc_iterations(plan.tail, tiled.iterations))
                t_chunkable = not mc_aware_modules(plan.tail)
                first = False
            h = x
            if plan.prefix is not None:
                with tiled.autocast(device):
                    h = plan.prefix(x)
            yield tiled.probs(plan.tail, h, t_chunkable=t_chunkable)
            bar.update(x.shape[0])


def _usable(model: nn.Module, plan: prefix_cache.MCSplit, x: torch.Tensor, *, strict: bool,
            split) -> prefix_cache.MCSplit:
    """``plan`` if its prefix output keeps the samples in dim 0 (probed on ``x``), else the full plan."""
    if plan.prefix is None:
        return plan
    for module in (plan.prefix, plan.tail):  # user-given modules may live outside ``model``
        module.to(x.device)
    problem = prefix_cache.check_prefix_output(plan, x)
    if problem is None:
        return plan
    if strict or plan.how == "user":
        raise ValueError(f"the MC split of {type(model).__name__} is unusable: {problem}")
    logger.info("prefix-cached MC off for %s: %s; tiling the whole model", type(model).__name__, problem)
    prefix_cache.forget_split(model, split, reason=problem)
    return prefix_cache.MCSplit(None, model, "full", problem)


def predict_mc(model: nn.Module, dataset: Dataset, **kwargs) -> np.ndarray:
    """MC probabilities for a whole dataset: float32 array ``[N, C, ..., T]``.

    Takes the arguments of :func:`iter_predict_mc`. Holds the full array in memory; use
    :func:`score_pool` to score a large pool in O(batch + k) memory.
    """
    batches = [b.float().cpu().numpy() for b in iter_predict_mc(model, dataset, **kwargs)]
    if not batches:
        raise ValueError("predict_mc got an empty dataset")
    return np.concatenate(batches, axis=0)


def score_pool(
    model: nn.Module,
    dataset: Dataset,
    heuristic: Heuristic,
    k: int,
    *,
    selection: str = "top_k",
    temperature: float = 1.0,
    selection_seed=None,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Score a pool batch by batch and select k of it on the fly, in O(batch + k) memory.

    No batch of probabilities outlives its scoring: nothing of size N x C x T is ever held.

    Parameters
    ----------
    heuristic : str or callable
        A name in :data:`al_lib.heuristics.HEURISTICS` or a function ``probs [B, C, T] -> [B]``
        that accepts torch tensors (higher = more worth labelling).
    k : int
        How many to return (``k > len(dataset)`` is an error).
    selection : {"top_k", "power", "softmax", "softrank"}
        "top_k": the k highest scores. The others draw k without replacement (stochastic batch
        acquisition, Kirsch et al.) with P ∝ ``score ** (1/temperature)``,
        ``exp(score/temperature)`` or ``rank ** (-1/temperature)``; see
        :func:`al_lib.sampling.make_selector` (softrank keeps the [N] scores).
    temperature : float > 0
        Of the stochastic selections.
    selection_seed : int, numpy Generator or None
        Seeds the stochastic selections (the ``seed`` keyword seeds the MC masks).
    **kwargs
        Passed to :func:`iter_predict_mc`.

    Returns
    -------
    indices : ndarray of int64, shape [k]
        Positions in ``dataset``: best first for "top_k" (ties → lower position), in draw order
        otherwise. Map them to sample ids with ``dataset.ids`` — never store positions.
    scores : ndarray of float64, shape [k]
        The heuristic score of each pick.
    """
    from al_lib.heuristics import HEURISTICS

    if isinstance(heuristic, str):
        if heuristic not in HEURISTICS:
            raise ValueError(f"unknown heuristic {heuristic!r}; choose from {sorted(HEURISTICS)}")
        heuristic = HEURISTICS[heuristic]
    if not 0 <= k <= len(dataset):
        raise ValueError(f"cannot select k={k} samples from a pool of {len(dataset)}")
    selector = make_selector(selection, k, temperature=temperature, seed=selection_seed)
    offset = 0
    for probs in iter_predict_mc(model, dataset, **kwargs):
        scores = heuristic(probs).double().cpu().numpy()
        selector.update(scores, np.arange(offset, offset + len(scores)))
        offset += len(scores)
    return selector.result()


def _collate_inputs(items: list) -> torch.Tensor:
    """Stack the inputs of a batch, dropping labels or anything else an item carries."""
    xs = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
    return torch.stack([torch.as_tensor(x) for x in xs])


def _to_mc_probs(logits: torch.Tensor, iterations: int, activation) -> torch.Tensor:
    """Tiled outputs [T*B, C, ...] → probabilities [B, C, ..., T]."""
    if activation == "auto":
        activation = "sigmoid" if logits.shape[1] == 1 else "softmax"
    logits = logits.float()
    if activation == "softmax":
        probs = torch.softmax(logits, dim=1)
    elif activation == "sigmoid":
        probs = torch.sigmoid(logits)
    elif activation is None:
        probs = logits
    elif callable(activation):
        probs = activation(logits)
    else:
        raise ValueError(f"unknown activation {activation!r}")
    probs = probs.reshape(iterations, probs.shape[0] // iterations, *probs.shape[1:])
    return probs.movedim(0, -1)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _amp_dtype(device: torch.device, amp: bool | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or None for full precision."""
    if amp is None:
        amp = device.type == "cuda"
    if isinstance(amp, torch.dtype):
        return amp
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module | None):
    """Put ``modules`` (None skipped) in eval mode; on exit, give every submodule back its own mode."""
    modules = [m for m in modules if m is not None]
    modes = {sub: sub.training for module in modules for sub in module.modules()}
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for sub, training in modes.items():
            sub.training = training
