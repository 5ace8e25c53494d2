"""Class-imbalanced subsets, as in the seed paper's setting where Δ classes keep 25% of samples."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from al_lib.seeding import SeedLike, check_random_state

logger = logging.getLogger(__name__)

__all__ = ["make_imbalanced"]


def make_imbalanced(
    targets: Any,
    *,
    minority_classes: int | Sequence[int],
    fraction: float = 0.25,
    seed: SeedLike = None,
    return_classes: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Indices of an imbalanced subset: minority classes keep only ``fraction`` of their samples.

    Parameters
    ----------
    targets : array-like of int, shape [N]
        Class label of every sample (numpy, torch or a list).
    minority_classes : int or sequence of int
        An int Δ picks Δ of the classes present at random (with ``seed``); a sequence names the
        classes, each of which must be present in ``targets``.
    fraction : float in [0, 1]
        Share of each minority class kept, rounded half up: ``floor(fraction * n_c + 0.5)``.
    seed : int, numpy Generator or None
        Same seed, same subset.
    return_classes : bool
        Also return the minority classes (useful when they were drawn at random).

    Returns
    -------
    indices : ndarray of int64, shape [M]
        Sorted positions into ``targets`` (e.g. for ``torch.utils.data.Subset``): every sample
        of the other classes plus the kept minority samples.
    classes : ndarray of int64, shape [Δ]
        Sorted minority classes; only when ``return_classes``.
    """
    targets = _targets(targets)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    rng = check_random_state(seed)
    present = np.unique(targets)
    minority = _minority(minority_classes, present, rng)
    keep = ~np.isin(targets, minority)
    for c in minority:  # sorted, so the draws are in a fixed order
        members = np.flatnonzero(targets == c)
        n_keep = int(np.floor(fraction * len(members) + 0.5))
        keep[rng.choice(members, size=n_keep, replace=False)] = True
    indices = np.flatnonzero(keep).astype(np.int64)
    logger.debug("imbalanced subset: minority classes %s keep %.0f%%, %d of %d samples",
                 minority.tolist(), 100 * fraction, len(indices), len(targets))
    return (indices, minority) if return_classes else indices


def _targets(targets: Any) -> np.ndarray:
    array = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"targets must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    return array


def _minority(spec: int | Sequence[int], present: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 minority classes from a count (drawn) or an explicit list (checked)."""
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        if not 0 <= spec <= len(present):
            raise ValueError(f"cannot pick {spec} minority classes out of {len(present)} present")
        return np.sort(rng.choice(present, size=int(spec), replace=False)).astype(np.int64)
    chosen = np.asarray(list(spec))
    if chosen.size and chosen.dtype.kind not in "iu":
        raise ValueError(f"minority_classes must be an int or a sequence of ints, got {spec!r}")
    chosen = np.unique(chosen).astype(np.int64)
    absent = np.setdiff1d(chosen, present)
    if absent.size:
        raise ValueError(f"minority class(es) {absent.tolist()} do not occur in targets")
    return chosen
