"""Monte-Carlo prediction over a dataset, in full or streamed batch by batch, and pool scoring.

MC inference runs each batch through the model T times, vectorised: the batch is tiled T times
along dim 0 (t-major, see :mod:`al_lib.bayesian.mc_aware`). By default (``engine="auto"``) only the
part of the model from its first stochastic layer on is tiled: the deterministic prefix runs once
per batch (:mod:`al_lib.prefix_cache`), which gives the same numbers as tiling the whole model
(up to float rounding) for a fraction of the cost.

Randomness: ``seed`` builds one CPU ``torch.Generator`` per call, and every mask drawn in the call
derives from it -- each MC layer gets its own generator for the call
(:func:`al_lib.bayesian.mc_aware.mc_generator`), consistent masks are drawn on the CPU so they are
the same on every device, and random ops of foreign layers that can only use torch's global RNG
run on a seeded fork of it (:func:`al_lib.seeding.isolated_torch_rng`). The caller's global RNG
state is the same after the call, and nothing calls ``torch.manual_seed``.
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
from al_lib.bayesian.mc_aware import mc_aware_modules, mc_generator
from al_lib.bayesian.mc_aware import mc_iterations as declare_mc_iterations
from al_lib.device import resolve_device
from al_lib.sampling import RunningTopK
from al_lib.seeding import SeedLike, draw_seed, isolated_torch_rng, torch_generator

logger = logging.getLogger(__name__)

__all__ = ["RunningTopK", "iter_predict_mc", "predict_mc", "score_pool"]

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
    seed: SeedLike = None,
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
    seed : int, numpy Generator or None
        Seeds every random draw of the call (see the module docstring): the same seed, model and
        data give identical probabilities, and consistent dropout masks that do not depend on
        the batch size, a sample's batch or which call (shard) scores it. None: a fresh
        nondeterministic generator (never torch's global one). The caller's global RNG state is
        never changed.
    engine : {"auto", "prefix", "full"}
        "auto": prefix-cached when the model has a deterministic prefix, else full tiling (the
        reason is logged at INFO); "prefix": require a prefix (ValueError otherwise); "full":
        tile the whole model. Both engines give the same probabilities up to float rounding —
        and the same numbers for a given ``seed``, as the prefix draws no random numbers and each
        MC layer has its own stream.
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
    # On the CPU, so the masks are the same on every device.
    generator = torch_generator(seed)
    # Each pass over a DataLoader draws a base seed for its workers: from this, not the global RNG.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_inputs, generator=torch_generator(generator))
    tiled = _TiledPass(iterations, activation, _amp_dtype(device, amp), max_rows)
    with _eval_mode(model):
        model.to(device)  # before planning: the split's cache signature covers moved buffers
        plan = prefix_cache.plan_split(model, engine=engine, split=split)
        yield from _predict_batches(model, plan, loader, tiled, device=device, generator=generator,
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
                     device: torch.device, generator: torch.Generator, progress: bool, strict: bool,
                     split) -> Iterator[torch.Tensor]:
    """The batch loop of :func:`iter_predict_mc` for a planned split; every draw derives from ``generator``."""
    bar = tqdm(total=len(loader.dataset), desc=f"MC predict (T={tiled.iterations})", unit="sample",
               disable=not progress, leave=False)
    with contextlib.ExitStack() as scope:
        scope.callback(bar.close)
        # Our MC layers draw from their own generators; the tail may hold modules outside ``model``.
        scope.enter_context(mc_generator(model, plan.tail, generator=torch_generator(generator)))
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
            # Foreign random ops (custom layers calling torch.rand*, functional dropout) can only
            # draw from torch's global RNG: give them a seeded fork of it, per batch, so the caller
            # gets its own RNG back while it holds a batch.
            with isolated_torch_rng(draw_seed(generator), device):
                h = x
                if plan.prefix is not None:
                    with tiled.autocast(device):
                        h = plan.prefix(x)
                probs = tiled.probs(plan.tail, h, t_chunkable=t_chunkable)
            yield probs
            del probs  # hold no reference while the next batch is computed: O(batch) memory
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
    heuristic,
    k: int,
    *,
    selection: str = "top_k",
    temperature: float = 1.0,
    selection_seed=None,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Score a pool batch by batch and select k of it on the fly, in O(batch + k) memory.

    No batch of probabilities outlives its scoring: nothing of size N x C x T is ever held
    (BatchBALD keeps the probs of its M candidates, see :class:`al_lib.strategies.BatchBALDStrategy`).
    This is :meth:`Strategy.stream <al_lib.strategies.Strategy.stream>`: the same picks as the
    two-phase ``strategy.select(scores, k, seed=selection_seed, joint=...)`` on the whole pool.

    Parameters
    ----------
    heuristic : str, Strategy or callable
        A strategy name (:func:`al_lib.strategies.available_strategies`: a per-sample heuristic
        such as "bald", a sampler such as "power_bald", "random", "batch_bald"), a
        :class:`~al_lib.strategies.Strategy`, or a function ``probs [B, C, T] -> [B]`` that
        accepts torch tensors (higher = more worth labelling).
    k : int
        How many to return (``k > len(dataset)`` is an error).
    selection : {"top_k", "power", "softmax", "softrank"}
        With a per-sample heuristic (name or callable): "top_k" takes the k highest scores; the
        others draw k without replacement (stochastic batch acquisition, Kirsch et al.) with
        P ∝ ``score ** (1/temperature)``, ``exp(score/temperature)`` or ``rank ** (-1/temperature)``
        (softrank keeps the [N] scores). Must stay "top_k" for the other strategies.
    temperature : float > 0
        Of the stochastic selections (and of a sampler strategy given by name).
    selection_seed : int, numpy Generator or None
        Seeds the stochastic selections (the ``seed`` keyword seeds the MC masks).
    **kwargs
        Passed to :func:`iter_predict_mc`.

    Returns
    -------
    indices : ndarray of int64, shape [k]
        Positions in ``dataset``: best first for "top_k" (ties → lower position), in acquisition
        order otherwise. Map them to sample ids with ``dataset.ids`` — never store positions.
    scores : ndarray of float64, shape [k]
        The strategy's own score of each pick (NaN for random, the joint-MI gain for BatchBALD).
    """
    strategy = _pool_strategy(heuristic, selection, temperature)
    if not 0 <= k <= len(dataset):
        raise ValueError(f"cannot select k={k} samples from a pool of {len(dataset)}")
    stream = strategy.stream(k, seed=selection_seed)
    if not strategy.needs_probs:
        stream.skip(len(dataset))
    else:
        for probs in iter_predict_mc(model, dataset, **kwargs):
            stream.update(probs)
    return tuple(stream.result())


def _pool_strategy(heuristic, selection: str, temperature: float):
    """The :class:`~al_lib.strategies.Strategy` that ``score_pool``'s arguments name."""
    from al_lib import strategies

    if selection not in _POOL_SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose from {_POOL_SELECTIONS}")
    if isinstance(heuristic, str) and heuristic not in strategies.STRATEGIES:
        raise ValueError(f"unknown heuristic {heuristic!r}; choose from {strategies.available_strategies()}")
    if callable(heuristic):  # a scorer function (a Strategy is not callable)
        base = strategies.TopKStrategy(name=getattr(heuristic, "__name__", "heuristic"), heuristic=heuristic)
    else:
        base = strategies.resolve_strategy(heuristic, temperature=temperature)
    if selection == "top_k":
        return base
    if not isinstance(base, strategies.TopKStrategy):
        raise ValueError(f"selection={selection!r} applies to a per-sample heuristic, not to {base.name!r}")
    return strategies.SamplingStrategy(name=f"{selection}_{base.name}", heuristic=base.heuristic, sampler=selection,
                                       temperature=temperature, reduction=base.reduction)


_POOL_SELECTIONS = ("top_k", "power", "softmax", "softrank")


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
