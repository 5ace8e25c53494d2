"""EPIG (Bickford Smith et al. 2023, "Prediction-Oriented Bayesian Active Learning").

``EPIG(x) = E_{x* ~ p*}[ I(y; y* | x, x*) ]``: the expected information a label of x gives about
the predictions on target inputs x* (a sample of the inputs the model will be used on), with
``p(y, y* | x, x*) = E_θ[p(y | x, θ) p(y* | x*, θ)]`` estimated from the same T parameter samples
for both. So the pool's and the target's MC probabilities must come from the same T models:
consistent MC dropout with the same seed (:func:`al_lib.bayesian.patch_module` with
``consistent=True``), an ensemble, or one :func:`~al_lib.inference.predict_mc` call on both.
"""

from __future__ import annotations

import torch

from al_lib.heuristics._arrays import prepare_probs, to_kind

__all__ = ["WORK_BYTES", "epig"]

#: Default bound on the bytes of one block of joint predictive distributions.
WORK_BYTES = 64 * 2**20


def _entropy(p: torch.Tensor, dims) -> torch.Tensor:
    return -torch.xlogy(p, p).sum(dim=dims)


def epig(probs_nct, target_probs_mct, *, max_work_bytes: int | None = None):
    """EPIG of every pool sample against a target set; higher = more worth labelling.

    ``EPIG(x) = H[y|x] + mean_{x*} H[y*|x*] - mean_{x*} H[y, y*|x, x*]`` (nats), with
    ``p(y, y*) = (1/T) Σ_t p_t(y|x) p_t(y*|x*)``, which equals the mean over the target inputs of
    ``KL(p(y, y*) || p(y) p(y*))`` (the paper's Eq. 5 with its Monte Carlo estimates).

    Parameters
    ----------
    probs_nct : array or tensor ``[N, C, T]``, the pool's MC probabilities
    target_probs_mct : array or tensor ``[M, C*, T]``, the target inputs' MC probabilities from
        the same T parameter samples (see the module docstring); C* may differ from C.
    max_work_bytes : int, optional
        Bound on one block of joint distributions ``[b, C, M·C*]`` (default :data:`WORK_BYTES`).
        Memory: the inputs plus one block, whatever N and M.

    Returns
    -------
    scores : ``[N]``, same kind as ``probs_nct`` (float64 for numpy).
    """
    p, was_numpy = prepare_probs(probs_nct)
    q, _ = prepare_probs(target_probs_mct)
    q = q.to(device=p.device, dtype=p.dtype)
    if p.ndim != 3 or q.ndim != 3:
        raise ValueError(f"epig takes [N, C, T] and [M, C*, T] probabilities, got {tuple(p.shape)} and {tuple(q.shape)}")
    if p.shape[2] != q.shape[2]:
        raise ValueError(f"pool and target need the same T parameter samples, got T={p.shape[2]} and T={q.shape[2]}")
    n, c, t = p.shape
    m, c_star, _ = q.shape
    if m == 0:
        raise ValueError("epig needs at least one target input")
    h_pool = _entropy(p.mean(-1), 1)  # [N]
    h_target = _entropy(q.mean(-1), 1).mean()  # scalar
    budget = WORK_BYTES if max_work_bytes is None else int(max_work_bytes)
    # Blocks of target inputs so that one [1, C, mb*C*] row fits; then blocks of pool rows.
    mb = max(1, min(m, budget // max(1, c * c_star * p.element_size())))
    nb = max(1, budget // max(1, c * mb * c_star * p.element_size()))
    h_joint = torch.zeros(n, dtype=p.dtype, device=p.device)
    for ms in range(0, m, mb):
        qb = q[ms : ms + mb].permute(2, 0, 1).reshape(t, -1)  # [T, mb*C*]
        for ns in range(0, n, nb):
            joint = (p[ns : ns + nb] @ qb) / t  # [b, C, mb*C*]
            joint = joint.reshape(joint.shape[0], c, -1, c_star)  # [b, C, mb, C*]
            h_joint[ns : ns + nb] += _entropy(joint, (1, 3)).sum(1)
    scores = h_pool + h_target - h_joint / m
    return to_kind(scores, was_numpy)
