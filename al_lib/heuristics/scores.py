"""Per-sample acquisition scores from MC probabilities.

Every scorer has the form ``f(probs, *, reduction="mean") -> scores``:

probs : array or tensor of shape ``[N, C, T]`` or ``[N, C, ..., T]``
    Class probabilities for N samples, C classes and T MC iterations (dropout masks, ensemble
    members...). Extra dims (segmentation pixels) sit between C and T. ``C == 1`` is a single
    sigmoid output p(y=1), expanded to the two classes ``[1 - p, p]``.
reduction : "mean" | "sum" | "max" | "none" | callable
    How per-pixel scores ``[N, ...]`` are collapsed to ``[N]``; "none" keeps ``[N, ...]``; a
    callable gets the caller's array kind ``[N, ...]`` and returns ``[N]``. No effect on
    ``[N, C, T]`` input.

Returns scores ``[N]`` (or ``[N, ...]``), numpy for numpy input (computed in float64), a tensor on
the input's device for torch input (computed in the input's float dtype, at least float32).
Higher score = more worth labelling, always. Entropies are in nats; ``0 log 0 = 0``.
"""

from __future__ import annotations

import torch

from al_lib.heuristics._arrays import (
    Reduction,
    check_reduction,
    is_numpy_like,
    numpy_probs_shape_only,
    prepare_probs,
    reduce_extra,
    score_numpy_chunked,
)
from al_lib.seeding import SeedLike, torch_generator

__all__ = [
    "bald",
    "entropy",
    "least_confidence",
    "margin",
    "mean_std",
    "predictive_distribution",
    "random",
    "variation_ratio",
]


# Torch kernels: p is [N, C>=2, ..., T]; each returns per-pixel scores [N, ...].


def _entropy_of_mean(p: torch.Tensor) -> torch.Tensor:
    """H[mean_t p]: entropy of the predictive (MC-averaged) distribution."""
    mean = p.mean(dim=-1)
    return -torch.xlogy(mean, mean).sum(dim=1)


def _expected_entropy(p: torch.Tensor) -> torch.Tensor:
    """mean_t H[p_t]: the aleatoric part, the entropy each MC sample predicts on average."""
    return -torch.xlogy(p, p).sum(dim=1).mean(dim=-1)


def _bald(p: torch.Tensor) -> torch.Tensor:
    # Mutual information is >= 0; rounding can leave a tiny negative when all samples agree.
    return (_entropy_of_mean(p) - _expected_entropy(p)).clamp_min(0)


def _margin(p: torch.Tensor) -> torch.Tensor:
    top2 = p.mean(dim=-1).topk(2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def _least_confidence(p: torch.Tensor) -> torch.Tensor:
    return 1 - p.mean(dim=-1).amax(dim=1)


def _variation_ratio(p: torch.Tensor) -> torch.Tensor:
    votes = p.argmax(dim=1)  # [N, ..., T]; a tie votes for the lower class
    counts = torch.zeros((*votes.shape[:-1], p.shape[1]), dtype=p.dtype, device=p.device)
    counts.scatter_add_(-1, votes, torch.ones_like(votes, dtype=p.dtype))  # [N, ..., C]
    return 1 - counts.amax(dim=-1) / p.shape[-1]


def _mean_std(p: torch.Tensor) -> torch.Tensor:
    return p.std(dim=-1, correction=0).mean(dim=1)


def _score(kernel, probs, reduction: Reduction):
    check_reduction(reduction)  # fail on a typo before any work
    if is_numpy_like(probs):
        # Chunked over N: never converts the whole array to float64 (O(chunk) extra memory).
        return score_numpy_chunked(kernel, probs, reduction)
    p, was_numpy = prepare_probs(probs)
    return reduce_extra(kernel(p), reduction, was_numpy)


def entropy(probs, *, reduction: Reduction = "mean"):
    """Predictive entropy ``H[mean_t p(y | x, w_t)]`` in nats, in ``[0, log C]``.

    Parameters: ``probs [N, C, ..., T]``, ``reduction`` (see module docstring).
    Returns: scores ``[N]``.
    """
    return _score(_entropy_of_mean, probs, reduction)


def bald(probs, *, reduction: Reduction = "mean"):
    """BALD (Houlsby et al. 2011): mutual information between label and weights, in nats.

    ``H[mean_t p_t] - mean_t H[p_t]``, clipped at 0; in ``[0, min(log C, log T)]``.

    Parameters: ``probs [N, C, ..., T]``, ``reduction`` (see module docstring).
    Returns: scores ``[N]``.
    """
    return _score(_bald, probs, reduction)


def margin(probs, *, reduction: Reduction = "mean"):
    """Negative margin of the MC-averaged probabilities: ``-(p_top1 - p_top2)``, in ``[-1, 0]``.

    Negated so that a smaller margin (more uncertain) scores higher; scores are therefore <= 0
    (use ``softmax_sampling``/``softrank_sampling`` on them, not ``power_sampling``).

    Parameters: ``probs [N, C, ..., T]``, ``reduction`` (see module docstring).
    Returns: scores ``[N]``.
    """
    return _score(_margin, probs, reduction)


def least_confidence(probs, *, reduction: Reduction = "mean"):
    """``1 - max_c mean_t p``, in ``[0, 1 - 1/C]``.

    Parameters: ``probs [N, C, ..., T]``, ``reduction`` (see module docstring).
    Returns: scores ``[N]``.
    """
    return _score(_least_confidence, probs, reduction)


def variation_ratio(probs, *, reduction: Reduction = "mean"):
    """``1 - (count of the modal argmax class over T) / T``, in ``[0, 1 - 1/C]``.

    Each MC sample votes for its argmax class (a tie votes for the lower class).

    Parameters: ``probs [N, C, ..., T]``, ``reduction`` (see module docstring).
    Returns: scores ``[N]``.
    """
    return _score(_variation_ratio, probs, reduction)


def mean_std(probs, *, reduction: Reduction = "mean"):
    """Mean over classes of the standard deviation over T (population std, ``ddof=0``).

    For a binary model both classes have the same std, so this is the std of p(y=1).

    Parameters: ``probs [N, C, ..., T]``, ``reduction`` (see module docstring).
    Returns: scores ``[N]``.
    """
    return _score(_mean_std, probs, reduction)


def predictive_distribution(probs):
    """The MC-averaged prediction: ``[N, C, ..., T]`` → ``[N, C, ...]`` (binary ``[N, 1, T]`` →
    ``[N, 2]``, as every heuristic sees it). Numpy in → numpy out, torch in → torch out."""
    p, was_numpy = prepare_probs(probs)
    mean = p.mean(dim=-1)
    return mean.cpu().numpy() if was_numpy else mean


def random(probs, *, seed: SeedLike = None, reduction: Reduction = "mean"):
    """Uniform random scores in ``[0, 1)``, reproducible with ``seed``.

    One score per pixel ``[N, ...]`` is drawn, then reduced, so ranks stay uniformly random. Values
    are drawn on the CPU, so a seed gives the same scores on every device.

    Parameters: ``probs [N, C, ..., T]`` (only its shape is used), ``seed`` (int, numpy Generator or
    None), ``reduction`` (see module docstring).
    Returns: scores ``[N]``.
    """
    gen = torch_generator(seed)

    def kernel(p):
        shape = (p.shape[0], *p.shape[2:-1])
        return torch.rand(shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)

    if is_numpy_like(probs):
        # Drawn in one go (chunking would change the draws); the values are never converted.
        check_reduction(reduction)
        return reduce_extra(kernel(numpy_probs_shape_only(probs)), reduction, True)
    return _score(kernel, probs, reduction)
