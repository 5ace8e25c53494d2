"""Seeded synthetic MC probabilities for the heuristic benchmarks."""

from __future__ import annotations

import numpy as np
import torch


def latent_mc_probs(
    n: int,
    c: int = 10,
    t: int = 20,
    *,
    seed: int = 0,
    latent_dim: int = 8,
    clusters: int = 40,
    scale: tuple[float, float] = (0.01, 0.3),
) -> np.ndarray:
    """MC-dropout-like probabilities ``[n, c, t]`` (float64) with redundancy across the pool.

    ``logits[i, :, t] = mu_i + s_i · A_i z_t``: each MC sample ``t`` is a latent ``z_t`` shared by
    the whole pool (as one dropout mask is), so samples' errors are correlated; samples come in
    ``clusters`` with similar means ``mu_i`` and loadings ``A_i`` (near-duplicates, which
    BatchBALD should spread over); ``s_i`` is log-uniform in ``scale`` so BALD varies over orders
    of magnitude (most samples confident, a tail of uncertain ones). With the defaults and n=2000,
    BALD quantiles are about 0.005 (median), 0.08 (90%), 0.3 (max), and a batch of 50 carries
    ~2.8 of the at most ``log T`` = 3.0 nats.
    """
    rng = np.random.default_rng(seed)
    cluster = rng.integers(clusters, size=n)
    mu = rng.normal(size=(clusters, c))[cluster] * 2.5 + rng.normal(size=(n, c)) * 0.5
    loadings = rng.normal(size=(clusters, c, latent_dim))[cluster] + rng.normal(
        size=(n, c, latent_dim)
    ) * 0.3
    s = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), size=(n, 1, 1)))
    z = rng.normal(size=(latent_dim, t))
    logits = mu[:, :, None] + s * (loadings @ z)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def dirichlet_mc_probs(
    n: int, c: int = 10, t: int = 20, *, seed: int = 0, chunk: int = 2**16
) -> np.ndarray:
    """Float32 ``[n, c, t]``: per-sample mean ``π_i`` (softmax of Gaussian logits of random
    sharpness), MC samples ``~ Dirichlet(κ_i π_i)`` with concentration ``κ_i`` log-uniform in
    [2, 500] (so BALD varies). Generated in chunks with torch (fast, bounded extra memory) under
    a forked, seeded global RNG (torch's gamma sampler takes no generator)."""
    out = np.empty((n, c, t), dtype=np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            sharpness = 0.5 + 3.5 * torch.rand(m, 1, 1)
            mean = torch.softmax(torch.randn(m, c, 1) * sharpness, dim=1)
            kappa = torch.exp(torch.empty(m, 1, 1).uniform_(np.log(2.0), np.log(500.0)))
            alpha = (kappa * mean).clamp_min(1e-3).expand(m, c, t).contiguous()
            gamma = torch._standard_gamma(alpha).clamp_min(1e-12)
            out[start : start + m] = (gamma / gamma.sum(dim=1, keepdim=True)).numpy()
    return out
