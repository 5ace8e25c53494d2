"""BatchBALD (Kirsch, van Amersfoort & Gal 2019): greedy batch acquisition by joint mutual info.

The batch ``S`` is grown one sample at a time, each time adding the candidate ``x`` that maximises

    a(S ∪ {x}) = H(y_S, y_x) - Σ_{i ∈ S ∪ {x}} E_w H(y_i | w),

where the model is the empirical mixture over the T MC samples ``w_t``. Since ``H(y_S)`` is the same
for every candidate, the greedy step maximises ``H(y_x | y_S) - E_w H(y_x | w)``, with

    H(y_x | y_S) = Σ_m p(m) H( Σ_t p(w_t | y_S = m) p(y_x | w_t) )

over label configurations ``m`` of the batch so far. The configurations are enumerated exactly as a
``[C^n, T]`` table of log joint probabilities, extended by one Kronecker factor per step; the
posterior-predictive of all candidates is then one matrix product ``[C^n, T] @ [T, N·C]`` (chunked
over candidates to bound memory). When ``C^(n+1)`` would exceed ``max_exact_configs``,
``num_samples`` configurations are drawn from the joint instead (the paper's importance estimate:
``p(m)`` replaced by the empirical weight ``1 / num_samples``), unbiased for ``H(y_x | y_S)``.

Complexity per greedy step ``n`` (``n`` already selected): exact ``O(N · C^(n+1) · T)`` time and
``O(C^n · T)`` memory plus a chunk buffer of ~256 MiB; sampled ``O(N · S · C · T)`` time and
``O(S · T)`` memory. All in float64 torch on ``device``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from al_lib.device import resolve_device
from al_lib.heuristics._arrays import check_k, prepare_probs, to_kind
from al_lib.heuristics.scores import _bald, _expected_entropy
from al_lib.seeding import SeedLike, torch_generator

__all__ = ["batch_bald", "joint_mutual_information"]

# Working memory for one chunk of candidates (the [configs, chunk·C] predictive and its entropy).
_WORK_BYTES = 256 * 2**20
_FLOAT64_BYTES = 8
# Gains this close to the best are ties (rounding noise of sums over many configurations).
_TIE_ATOL = 1e-10


@dataclass
class _Configs:
    """Label configurations m of the batch so far.

    posterior : ``[R, T]`` p(w_t | y_S = m), rows summing to 1.
    weight : ``[R]`` p(m) when enumerated exactly, ``1 / R`` when sampled from the joint.
    """

    posterior: torch.Tensor
    weight: torch.Tensor


def _prepare(probs, device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate ``probs``; return it as given (C >= 2), as float64 on the compute device, and
    whether the input was numpy."""
    p, was_numpy = prepare_probs(probs)
    if p.ndim != 3:
        raise ValueError(f"BatchBALD needs probs of shape [N, C, T], got shape {tuple(p.shape)}")
    if (p < 0).any():
        raise ValueError("probs must be probabilities (>= 0)")
    if device is None and not was_numpy:
        device = p.device
    return p, p.to(resolve_device(device), torch.float64), was_numpy


def _extend(log_joint: torch.Tensor, p_i: torch.Tensor) -> torch.Tensor:
    """Kronecker step: ``[R, T]`` log p(m | w_t), ``[C, T]`` p(y | w_t) -> ``[R·C, T]`` log joint.

    Configurations impossible under every w_t (log p = -inf throughout) are dropped.
    """
    t = log_joint.shape[-1]
    joint = (log_joint[:, None, :] + p_i.log()[None, :, :]).reshape(-1, t)
    return joint[(joint > -math.inf).any(dim=1)]


def _enumerate(p: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Exact ``[C^n, T]`` table of log p(y_indices = m | w_t), from ``p [N, C, T]``."""
    joint = torch.zeros((1, p.shape[-1]), dtype=p.dtype, device=p.device)
    for i in indices:
        joint = _extend(joint, p[i])
    return joint


def _exact_configs(log_joint: torch.Tensor) -> _Configs:
    t = log_joint.shape[-1]
    return _Configs(
        posterior=torch.softmax(log_joint, dim=1),
        weight=(torch.logsumexp(log_joint, dim=1) - math.log(t)).exp(),
    )


def _sampled_configs(
    p: torch.Tensor, indices: list[int], num_samples: int, gen: torch.Generator
) -> _Configs:
    """Draw ``num_samples`` configurations of ``y_indices`` from the joint (the mixture over w_t).

    Drawn on the CPU (``gen`` is a CPU generator) so a seed gives the same draws on every device.
    """
    p_sel = p[indices].cpu()  # [n, C, T]
    t = p.shape[-1]
    component = torch.randint(t, (num_samples,), generator=gen)  # pick w_t, then each label | w_t
    log_joint = torch.zeros((num_samples, t), dtype=p.dtype)
    for p_i, log_p_i in zip(p_sel, p_sel.log()):
        labels = torch.multinomial(p_i[:, component].T, 1, generator=gen).squeeze(1)
        log_joint += log_p_i[labels]
    log_joint = log_joint.to(p.device)
    weight = torch.full((num_samples,), 1.0 / num_samples, dtype=p.dtype, device=p.device)
    return _Configs(posterior=torch.softmax(log_joint, dim=1), weight=weight)


def _conditional_entropies(
    configs: _Configs, p: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """``H(y_x | y_S)`` for each x in ``candidates [M]`` (indices into ``p [N, C, T]``) -> ``[M]``.

    Chunked over candidates so the ``[R, chunk·C]`` predictive stays within ``_WORK_BYTES``.
    """
    r, t = configs.posterior.shape
    c = p.shape[1]
    chunk = max(1, _WORK_BYTES // (2 * _FLOAT64_BYTES * r * c))
    out = []
    for start in range(0, len(candidates), chunk):
        block = p[candidates[start : start + chunk]]
        predictive = configs.posterior @ block.reshape(-1, t).T  # [R, chunk·C]
        ent = -torch.xlogy(predictive, predictive).reshape(r, block.shape[0], c).sum(dim=-1)
        out.append(configs.weight @ ent)
    return torch.cat(out) if out else p.new_empty(0)


def _pick(gains: torch.Tensor, available: torch.Tensor, tie_atol: float) -> int:
    """Best available candidate; gains within ``tie_atol`` of the best -> lower index."""
    gains = torch.where(available, gains, -math.inf)
    best = gains.max()
    return int(torch.nonzero(gains >= best - tie_atol)[0, 0])


def _grow(log_joint, p_i: torch.Tensor, max_exact_configs: int):
    """Add the last pick to the exact table, or return None once the next step would outgrow it."""
    if log_joint is None:
        return None
    log_joint = _extend(log_joint, p_i)
    return log_joint if log_joint.shape[0] * p_i.shape[0] <= max_exact_configs else None


def _greedy(
    p: torch.Tensor,
    first_gains: torch.Tensor,
    k: int,
    num_samples: int,
    max_exact_configs: int,
    gen: torch.Generator,
) -> list[int]:
    n, _, t = p.shape
    expected = _expected_entropy(p)
    available = torch.ones(n, dtype=torch.bool, device=p.device)
    selected: list[int] = []
    # Exact [R, T] table of the batch so far; None once it outgrows max_exact_configs (sampling).
    log_joint = torch.zeros((1, t), dtype=p.dtype, device=p.device)
    gains = first_gains  # a({x}) is BALD
    for step in range(k):
        if step > 0:
            log_joint = _grow(log_joint, p[selected[-1]], max_exact_configs)
            configs = (
                _exact_configs(log_joint)
                if log_joint is not None
                else _sampled_configs(p, selected, num_samples, gen)
            )
            cand = torch.nonzero(available).squeeze(1)
            gains = torch.full((n,), -math.inf, dtype=p.dtype, device=p.device)
            gains[cand] = _conditional_entropies(configs, p, cand) - expected[cand]
        # Step 1 ranks exactly like top_k(bald); later gains are long sums with rounding noise.
        winner = _pick(gains, available, 0.0 if step == 0 else _TIE_ATOL)
        selected.append(winner)
        available[winner] = False
    return selected


def batch_bald(
    probs,
    k: int,
    *,
    num_samples: int = 10_000,
    max_exact_configs: int | None = None,
    seed: SeedLike = None,
    device=None,
):
    """Select a batch of ``k`` samples greedily by BatchBALD joint mutual information.

    Parameters
    ----------
    probs : array or tensor ``[N, C, T]`` (``C == 1``: sigmoid output, expanded to two classes)
    k : int, ``0 <= k <= N``
    num_samples : int
        Configurations sampled per step once exact enumeration is too large.
    max_exact_configs : int, optional
        Enumerate exactly while the number of joint configurations of the batch plus one candidate
        (at most ``C^(n+1)``) stays <= this; beyond, sample. Default ``2^25 // T`` (the float64
        ``[configs, T]`` table within ~256 MiB). An exact step with R configurations costs as much
        as sampling R, so lower it (e.g. to ``num_samples * C``) to trade exactness for speed.
    seed : int, numpy Generator or None
        Only used once sampling starts.
    device : str or torch.device, optional
        Compute device; default the tensor's device, or ``resolve_device(None)`` for numpy input.

    Returns
    -------
    indices : int64 ``[k]`` in acquisition order, same kind as ``probs`` (torch on its device).
        The first is exactly ``top_k(bald(probs), 1)``; at later steps gains within 1e-10 nats
        count as ties (rounding noise) and go to the lower index. Complexity: module docstring.
    """
    given, p, was_numpy = _prepare(probs, device)
    k = check_k(k, p.shape[0])
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_exact_configs is None:
        max_exact_configs = _WORK_BYTES // (_FLOAT64_BYTES * p.shape[-1])
    # BALD in the input's own dtype and device: step 1 ranks exactly like top_k(bald(probs)).
    first_gains = _bald(given).to(p.device, p.dtype)
    selected = _greedy(p, first_gains, k, num_samples, max_exact_configs, torch_generator(seed))
    out_device = "cpu" if was_numpy else probs.device
    return to_kind(torch.tensor(selected, dtype=torch.int64, device=out_device), was_numpy)


def joint_mutual_information(probs, indices, *, max_configs: int = 10**9) -> float:
    """Exact joint mutual information ``I(y_indices; w)`` in nats, enumerating all ``C^n`` labels.

    The batch is split in two halves with ``[C^(n/2), T]`` tables each; their joint probabilities
    come out of one chunked matrix product, so memory is ``O(C^(n/2) · T)``, time ``O(C^n · T)``.

    Parameters
    ----------
    probs : array or tensor ``[N, C, T]``
    indices : sequence of ints ``[n]`` (repeats allowed: conditionally independent labels)
    max_configs : int
        Refuse (ValueError) when the number of configurations (``C^n``, fewer where some classes
        have probability exactly 0) exceeds it, rather than run for hours.

    Returns
    -------
    float
    """
    _, p, _ = _prepare(probs, probs.device if isinstance(probs, torch.Tensor) else "cpu")
    indices = [int(i) for i in indices]
    n, c, t = p.shape
    if any(not -n <= i < n for i in indices):
        raise IndexError(f"indices out of range for N={n}: {indices}")
    if not indices:
        return 0.0
    # Classes impossible under every w_t never enter a configuration: bound with the supports.
    n_configs = math.prod(int(k) for k in (p[indices] > 0).any(dim=-1).sum(dim=1))
    if n_configs > max_configs:
        raise ValueError(
            f"{n_configs} label configurations (up to C^n = {c}^{len(indices)}) exceed "
            f"max_configs={max_configs}"
        )
    half = len(indices) // 2
    head = _enumerate(p, indices[half:]).exp()  # [C^(n - n/2), T]
    tail = _enumerate(p, indices[:half]).exp()  # [C^(n/2), T]
    chunk = max(1, _WORK_BYTES // (2 * _FLOAT64_BYTES * head.shape[0]))
    joint_entropy = 0.0
    for start in range(0, tail.shape[0], chunk):
        joint = head @ tail[start : start + chunk].T / t  # p(m_head, m_tail)
        joint_entropy -= float(torch.xlogy(joint, joint).sum())
    return joint_entropy - float(_expected_entropy(p[indices]).sum())

