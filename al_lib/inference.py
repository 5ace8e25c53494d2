"""Monte-Carlo prediction over a dataset, in full or streamed batch by batch, and pool scoring."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from al_lib.bayesian.mc_aware import mc_iterations as declare_mc_iterations
from al_lib.device import resolve_device

logger = logging.getLogger(__name__)

Heuristic = str | Callable[[torch.Tensor], torch.Tensor]


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
) -> Iterator[torch.Tensor]:
    """Yield MC probabilities batch by batch: tensors ``[B, C, ..., T]`` on ``device``.

    Each batch is tiled T times along dim 0 (t-major) and goes through the model in one pass, with
    MC-aware modules told T (see :mod:`al_lib.bayesian.mc_aware`). The model is put in ``eval()``
    mode, so only layers patched by :func:`~al_lib.bayesian.patch_module` stay stochastic.

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
    """
    device = resolve_device(device)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_inputs)
    was_training = model.training
    model.to(device).eval()
    rng_scope = _seeded(seed, device) if seed is not None else contextlib.nullcontext()
    bar = tqdm(total=len(dataset), desc=f"MC predict (T={iterations})", unit="sample",
               disable=not progress, leave=False)
    try:
        with rng_scope, torch.inference_mode(), declare_mc_iterations(model, iterations):
            for x in loader:
                x = x.to(device, non_blocking=True)
                logits = model(x.repeat(iterations, *([1] * (x.ndim - 1))))
                yield _to_mc_probs(logits, iterations, activation)
                bar.update(x.shape[0])
    finally:
        bar.close()
        model.train(was_training)


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
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Score a pool batch by batch and keep a running top-k.

    Parameters
    ----------
    heuristic : str or callable
        A name in :data:`al_lib.heuristics.HEURISTICS` or a function ``probs [B, C, T] -> [B]``
        that accepts torch tensors (higher = more worth labelling).
    k : int
        How many to return (``k > len(dataset)`` is an error).
    **kwargs
        Passed to :func:`iter_predict_mc`.

    Returns
    -------
    indices : ndarray of int64, shape [k]
        Positions in ``dataset``, best first (ties → lower position). Map them to sample ids
        with ``dataset.ids`` — never store positions.
    scores : ndarray of float64, shape [k]
    """
    from al_lib.heuristics import HEURISTICS

    if isinstance(heuristic, str):
        if heuristic not in HEURISTICS:
            raise ValueError(f"unknown heuristic {heuristic!r}; choose from {sorted(HEURISTICS)}")
        heuristic = HEURISTICS[heuristic]
    if not 0 <= k <= len(dataset):
        raise ValueError(f"cannot select k={k} samples from a pool of {len(dataset)}")
    best = RunningTopK(k)
    offset = 0
    for probs in iter_predict_mc(model, dataset, **kwargs):
        scores = heuristic(probs).double().cpu().numpy()
        best.update(scores, np.arange(offset, offset + len(scores)))
        offset += len(scores)
    return best.result()


class RunningTopK:
    """The k best (score, index) pairs seen so far; ties go to the lower index.

    Exact for any split of the stream into chunks, so shard results merge to the single-pass one.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.scores = np.empty(0, dtype=np.float64)
        self.indices = np.empty(0, dtype=np.int64)

    def update(self, scores: np.ndarray, indices: np.ndarray) -> None:
        """Merge a chunk: ``scores`` [B], ``indices`` [B] (int)."""
        scores = np.concatenate([self.scores, np.asarray(scores, dtype=np.float64)])
        indices = np.concatenate([self.indices, np.asarray(indices, dtype=np.int64)])
        if np.isnan(scores).any():
            raise ValueError("the heuristic returned NaN scores")
        # lexsort: last key is primary -> sort by score descending, then index ascending.
        order = np.lexsort((indices, -scores))[: self.k]
        self.scores, self.indices = scores[order], indices[order]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.indices.copy(), self.scores.copy()


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
