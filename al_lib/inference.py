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
from al_lib.bayesian.guards import check_mc_batches
from al_lib.bayesian.mc_aware import mc_aware_modules, mc_generator
from al_lib.bayesian.mc_aware import mc_iterations as declare_mc_iterations
from al_lib.device import resolve_device
from al_lib.sampling import RunningTopK
from al_lib.seeding import SeedLike, draw_seed, isolated_torch_rng, torch_generator

logger = logging.getLogger(__name__)

__all__ = ["RunningTopK", "iter_features", "iter_predict_mc", "predict_mc", "score_pool"]

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
    features: str | Callable | None = None,
) -> Iterator[torch.Tensor] | Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
    features : None, "penultimate" or callable
        Also yield an embedding of each sample, computed in the same pass (for the embedding
        strategies of :mod:`al_lib.strategies`). "penultimate": the input of the model's last
        ``nn.Linear`` (in module order: the classification head of torchvision's and our
        models), flattened to ``[B, D]`` and averaged over the T MC samples when the head runs on
        tiled rows (after a stochastic layer), by a forward pre-hook removed afterwards; models
        whose last Linear is not called once per forward (ensembles, a functional head) need a
        callable. A callable ``features(x [B, ...]) -> [B, ...]`` (flattened to ``[B, D]``) runs on
        each input batch: a frozen pretrained backbone, or ``lambda x: x`` for raw inputs. Only the
        current batch's features are held.

    Yields
    ------
    probs : float32 tensor ``[B, C, ..., T]``; with ``features``, pairs ``(probs, features)``,
        features a float32 tensor ``[B, D]`` on ``device``.

    Raises
    ------
    al_lib.bayesian.guards.NonFiniteProbabilitiesError, al_lib.bayesian.guards.NoStochasticLayerError
        NaN/Inf probabilities; or T > 1 identical samples from a model without an MC layer
        (forgot :func:`~al_lib.bayesian.patch_module`; a deterministic model passes ``iterations=1``).
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
    with _eval_mode(model), _feature_tap(model, features) as tap:
        model.to(device)  # before planning: the split's cache signature covers moved buffers
        plan = prefix_cache.plan_split(model, engine=engine, split=split)
        batches = _predict_batches(model, plan, loader, tiled, device=device, generator=generator,
                                   progress=progress, strict=engine == "prefix", split=split, tap=tap)
        # NaN/Inf probabilities, or identical samples from a model with no MC layer: a clear error.
        checked = check_mc_batches(batches, model, iterations, extra_modules=split if isinstance(split, tuple) else ())
        if tap is None:
            yield from checked
        else:
            for probs in checked:  # the tap holds the features of the batch just yielded
                yield probs, tap.batch_features()


class _FeatureTap:
    """The features of each batch: a callable on the input, or the last ``nn.Linear``'s input.

    For "penultimate", a forward pre-hook collects the Linear's inputs ``[rows, D]`` of a forward
    call; :meth:`take` hands them over (or None). ``_predict_batches`` reduces them per batch and
    :meth:`store` keeps only the current batch's ``[B, D]``.
    """

    def __init__(self, model: nn.Module, features) -> None:
        self.fn = features if callable(features) else None
        self.name, self.linear, self._captured, self._batch = "", None, [], None
        if self.fn is None:
            linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(f"features='penultimate' needs an nn.Linear head; {type(model).__name__} has "
                                 "none: pass features=callable")
            self.name, self.linear = linears[-1]
            self._handle = self.linear.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        x = args[0]
        self._captured.append(x.detach().reshape(x.shape[0], -1).float())

    def take(self) -> torch.Tensor | None:
        """The Linear's inputs since the last call, concatenated ``[rows, D]``, or None."""
        out = (torch.cat(self._captured) if len(self._captured) > 1 else self._captured[0]) if self._captured else None
        self._captured = []
        return out

    def of_input(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(x)
        return out.detach().reshape(out.shape[0], -1).float()

    def store(self, features: torch.Tensor | None, b: int) -> None:
        if features is None or features.shape[0] != b:
            raise ValueError(
                f"features='penultimate': the last nn.Linear of the model ({self.name!r}) did not see "
                f"the batch's {b} samples once per MC sample in a forward pass"
                + ("" if features is None else f" (it saw {features.shape[0]} rows)")
                + ": pass features=callable")
        self._batch = features

    def batch_features(self) -> torch.Tensor:
        out, self._batch = self._batch, None
        return out

    def close(self) -> None:
        if self.linear is not None:
            self._handle.remove()


@contextlib.contextmanager
def _feature_tap(model: nn.Module, features):
    """A :class:`_FeatureTap` for ``features`` (None: none), its hook removed on exit."""
    if features is None:
        yield None
        return
    if not callable(features) and features != "penultimate":
        raise ValueError(f"features must be None, 'penultimate' or a callable, got {features!r}")
    tap = _FeatureTap(model, features)
    try:
        yield tap
    finally:
        tap.close()


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

    def probs(self, tail: nn.Module, h: torch.Tensor, *, t_chunkable: bool,
              tap: _FeatureTap | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``tail`` on ``h`` [B, ...] tiled T times, <= ``max_rows`` rows per pass → [B, C, ..., T].

        Also returns what ``tap`` saw in the tail, averaged over the T samples → [B, D] (None
        when it saw nothing there, or when there is no tap).
        """
        rows, t_step = self._chunk_sizes(h.shape[0], t_chunkable)
        slices, feature_slices = [], []
        for start in range(0, h.shape[0], rows):
            part = h[start : start + rows]
            groups, summed = [], None
            for t0 in range(0, self.iterations, t_step):
                t = min(t_step, self.iterations - t0)
                groups.append(self._forward(tail, part, t))
                seen = tap.take() if tap is not None else None
                if seen is not None:
                    if seen.shape[0] != t * part.shape[0]:
                        tap.store(seen, t * part.shape[0])  # raises: not one call per sample
                    seen = seen.reshape(t, part.shape[0], -1).sum(0)
                    summed = seen if summed is None else summed + seen
            slices.append(torch.cat(groups, dim=-1) if len(groups) > 1 else groups[0])
            feature_slices.append(summed)
        probs = torch.cat(slices, dim=0) if len(slices) > 1 else slices[0]
        if any(f is None for f in feature_slices):
            return probs, None
        return probs, torch.cat(feature_slices) / self.iterations

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
                     split, tap: _FeatureTap | None = None) -> Iterator[torch.Tensor]:
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
            if tap is not None:
                tap.take()  # drop what the plan's probe on this batch passed through the head
            # Foreign random ops (custom layers calling torch.rand*, functional dropout) can only
            # draw from torch's global RNG: give them a seeded fork of it, per batch, so the caller
            # gets its own RNG back while it holds a batch.
            with isolated_torch_rng(draw_seed(generator), device):
                h = x
                if plan.prefix is not None:
                    with tiled.autocast(device):
                        h = plan.prefix(x)
                in_prefix = tap.take() if tap is not None else None  # the head ran in the prefix
                probs, in_tail = tiled.probs(plan.tail, h, t_chunkable=t_chunkable, tap=tap)
            if tap is not None:
                tap.store(tap.of_input(x) if tap.fn is not None else in_prefix if in_tail is None else in_tail,
                          x.shape[0])
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


def predict_mc(model: nn.Module, dataset: Dataset, **kwargs) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """MC probabilities for a whole dataset: float32 array ``[N, C, ..., T]``.

    Takes the arguments of :func:`iter_predict_mc`. Holds the full array in memory; use
    :func:`score_pool` to score a large pool in O(batch + k) memory. With ``features=``, returns
    ``(probs [N, C, ..., T], features [N, D])``, both float32.
    """
    batches = list(iter_predict_mc(model, dataset, **kwargs))
    if not batches:
        raise ValueError("predict_mc got an empty dataset")
    if kwargs.get("features") is None:
        return np.concatenate([b.float().cpu().numpy() for b in batches], axis=0)
    return (np.concatenate([p.float().cpu().numpy() for p, _ in batches], axis=0),
            np.concatenate([f.cpu().numpy() for _, f in batches], axis=0))


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
    if strategy.needs_features:  # the embedding strategies: features from the same pass
        kwargs["features"] = kwargs.get("features") or "penultimate"
        for probs, feats in iter_predict_mc(model, dataset, **kwargs):
            stream.update(probs if strategy.needs_probs else None, feats)
    elif not strategy.needs_probs:
        stream.skip(len(dataset))
    else:
        for probs in iter_predict_mc(model, dataset, **kwargs):
            stream.update(probs)
    return tuple(stream.result())


def iter_features(
    features: Callable | nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield an embedding of a dataset batch by batch, without a model's MC pass (cold start).

    Parameters
    ----------
    features : callable or nn.Module
        ``features(x [B, ...]) -> [B, ...]`` (flattened to ``[B, D]``): a pretrained or
        self-supervised backbone, or ``lambda x: x`` for raw inputs. A module runs in ``eval()``
        mode (its modes are restored afterwards) on ``device``.
    dataset : Dataset
        Items ``x`` or ``(x, ...)``.

    Yields
    ------
    features : float32 tensor ``[B, D]`` on ``device``.
    """
    device = resolve_device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_inputs)
    module = features if isinstance(features, nn.Module) else None
    with _eval_mode(module), torch.inference_mode():
        if module is not None:
            module.to(device)
        for x in tqdm(loader, desc="features", disable=not progress, leave=False):
            out = features(x.to(device, non_blocking=True))
            yield out.detach().reshape(out.shape[0], -1).float()


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
