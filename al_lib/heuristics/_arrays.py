"""Array plumbing shared by the heuristics: numpy/torch dispatch, validation, reductions.

Every heuristic computes with torch ops. A numpy input is wrapped (zero-copy when it is already a
contiguous float64 array) into a CPU float64 tensor, and the result is handed back as numpy, so the
math is written once and a torch input never round-trips through numpy.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
import torch

Reduction = str | Callable

_REDUCTIONS = {
    "mean": lambda s, dims: s.mean(dim=dims),
    "sum": lambda s, dims: s.sum(dim=dims),
    "max": lambda s, dims: s.amax(dim=dims),
}


def is_numpy_like(x) -> bool:
    """True unless ``x`` is a torch tensor (lists and numpy arrays take the numpy path)."""
    return not isinstance(x, torch.Tensor)


def _numpy_to_tensor(x, dtype=None) -> torch.Tensor:
    """Wrap an array-like as a CPU tensor; copies only when the layout or dtype demands it."""
    arr = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    if arr.dtype.kind not in "fiub":
        arr = arr.astype(np.float64)
    # from_numpy rejects negative strides and warns on read-only buffers: copy in those cases.
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = np.array(arr, order="C", copy=True)
    return torch.from_numpy(arr)


def to_tensor(x, *, float_dtype: bool = True) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``.

    With ``float_dtype``, numpy input becomes float64 and torch input keeps its float dtype,
    promoted to at least float32 (half precision is too coarse for log-probabilities).
    """
    if is_numpy_like(x):
        return _numpy_to_tensor(x, np.float64 if float_dtype else None), True
    if float_dtype and (not x.is_floating_point() or x.element_size() < 4):
        x = x.to(torch.float32)
    return x, False


def to_kind(x: torch.Tensor, numpy: bool):
    """Hand ``x`` back as numpy when the caller gave numpy, else as the tensor itself."""
    return x.detach().cpu().numpy() if numpy else x


def check_probs_shape(shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``shape`` is that of MC probabilities ``[N, C, ..., T]``."""
    shape = tuple(shape)
    if len(shape) < 3:
        raise ValueError(
            "probs must have shape [N, C, T] (or [N, C, ..., T] with extra dims), "
            f"got shape {shape}"
        )
    if shape[1] < 1 or shape[-1] < 1:
        raise ValueError(
            "probs [N, C, ..., T] needs C >= 1 classes and T >= 1 MC samples, "
            f"got shape {shape}"
        )


def check_probs(p: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``p`` looks like MC probabilities ``[N, C, ..., T]``."""
    check_probs_shape(p.shape)
    if torch.isnan(p).any():
        raise ValueError("probs contains NaN")


def expand_binary(p: torch.Tensor) -> torch.Tensor:
    """A single sigmoid output ``[N, 1, ..., T]`` = p(y=1) becomes two classes ``[1 - p, p]``."""
    return torch.cat([1 - p, p], dim=1) if p.shape[1] == 1 else p


def prepare_probs(probs) -> tuple[torch.Tensor, bool]:
    """Validate ``probs`` ``[N, C, ..., T]``; return ``(float tensor with C >= 2, was_numpy)``."""
    p, was_numpy = to_tensor(probs)
    check_probs(p)
    return expand_binary(p), was_numpy


#: Target size in bytes of one float64 chunk of a numpy ``probs`` array (see :func:`score_numpy_chunked`).
#: The kernels' temporaries are a few chunks, so this bounds the extra memory of numpy scoring.
CHUNK_BYTES = 8 * 2**20


def _numpy_probs(probs) -> tuple[np.ndarray, int]:
    """``(array, rows per chunk)`` for numpy ``probs``, its shape checked (not yet its values)."""
    arr = np.asarray(probs)
    if arr.dtype.kind not in "fiub":
        arr = np.asarray(probs, dtype=np.float64)
    check_probs_shape(arr.shape)
    row_bytes = 8 * max(arr.shape[1], 2) * int(np.prod(arr.shape[2:], dtype=np.int64))
    return arr, max(1, CHUNK_BYTES // max(row_bytes, 1))


def numpy_probs_shape_only(probs) -> torch.Tensor:
    """Validate numpy ``probs`` chunk by chunk; return a zero-strided float64 stand-in tensor.

    The stand-in has the shape ``prepare_probs`` would give (C >= 2) but no storage of that size:
    for scorers that only look at the shape (``random``).
    """
    arr, rows = _numpy_probs(probs)
    for start in range(0, arr.shape[0], rows):
        if torch.isnan(_numpy_to_tensor(arr[start : start + rows], np.float64)).any():
            raise ValueError("probs contains NaN")
    shape = (arr.shape[0], max(arr.shape[1], 2), *arr.shape[2:])
    return torch.zeros((), dtype=torch.float64).expand(shape)


def score_numpy_chunked(kernel, probs, reduction):
    """Score numpy ``probs [N, C, ..., T]`` in float64, a chunk of rows at a time.

    Only a chunk of about :data:`CHUNK_BYTES` (in float64, after the binary expansion) is ever
    converted, so the extra memory is O(chunk) plus the output, whatever N. Each row is scored
    independently, so the result equals scoring the whole array at once. ``kernel`` maps a float64
    tensor ``[n, C>=2, ..., T]`` to per-pixel scores ``[n, ...]``. Returns numpy ``[N]`` (or
    ``[N, ...]`` for ``reduction="none"``).
    """
    check_reduction(reduction)
    arr, rows = _numpy_probs(probs)
    n, pixel_shape = arr.shape[0], tuple(arr.shape[2:-1])
    per_pixel = callable(reduction) and bool(pixel_shape)
    keep_pixels = per_pixel or reduction == "none"
    out = np.empty((n, *pixel_shape) if keep_pixels else (n,), dtype=np.float64)
    for start in range(0, n, rows):
        p = _numpy_to_tensor(arr[start : start + rows], np.float64)
        if torch.isnan(p).any():
            raise ValueError("probs contains NaN")
        scores = kernel(expand_binary(p))
        if not per_pixel:
            scores = reduce_extra(scores, reduction, numpy=False)
        out[start : start + rows] = scores.numpy()
    if per_pixel:
        return reduce_extra(torch.from_numpy(out), reduction, numpy=True)
    return out


def check_reduction(reduction: Reduction) -> None:
    """Raise ``ValueError`` for an unknown reduction name."""
    if not callable(reduction) and reduction not in (*_REDUCTIONS, "none"):
        raise ValueError(
            f"reduction must be one of {sorted((*_REDUCTIONS, 'none'))} or a callable, "
            f"got {reduction!r}"
        )


def reduce_extra(scores: torch.Tensor, reduction: Reduction, numpy: bool):
    """Collapse the extra dims of per-pixel scores ``[N, ...]`` to ``[N]``, as the caller's kind.

    A callable receives the caller's array kind ``[N, ...]`` and must return ``[N]``. Scores that
    are already ``[N]`` pass through unchanged, whatever the reduction.
    """
    check_reduction(reduction)
    if scores.ndim == 1 or reduction == "none":
        return to_kind(scores, numpy)
    if not callable(reduction):
        return to_kind(_REDUCTIONS[reduction](scores, tuple(range(1, scores.ndim))), numpy)
    reduced = reduction(to_kind(scores, numpy))
    if tuple(reduced.shape) != (scores.shape[0],):
        raise ValueError(
            f"reduction callable must map [N, ...] to [N] = [{scores.shape[0]}], "
            f"got shape {tuple(reduced.shape)}"
        )
    return reduced


def prepare_scores(scores, *, float64: bool = False) -> tuple[torch.Tensor, bool]:
    """Validate 1-D scores ``[N]`` (no NaN); return ``(tensor, was_numpy)``.

    Scores keep their dtype (integer scores stay exact) unless ``float64`` is asked for.
    """
    s, was_numpy = to_tensor(scores, float_dtype=False)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {tuple(s.shape)}")
    if s.dtype == torch.bool:
        s = s.to(torch.int64)
    if float64:
        s = s.to(torch.float64)
    if s.is_floating_point() and torch.isnan(s).any():
        raise ValueError("scores contains NaN")
    return s, was_numpy


def check_k(k, n: int) -> int:
    """Return ``k`` as an int after checking ``0 <= k <= n``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if k < 0 or k > n:
        raise ValueError(f"k must be between 0 and the number of samples N={n}, got k={k}")
    return k


def check_temperature(temperature: float) -> float:
    """Return ``temperature`` as a float after checking it is > 0 (``inf`` allowed: uniform)."""
    temperature = float(temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature
