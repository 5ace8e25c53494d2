"""al_lib.heuristics.epig: the paper's definition (brute force) and BaaL 2.1.0's EPIG."""

import numpy as np
import pytest
import torch

from al_lib.heuristics.epig import epig
from heuristics.test_scores import random_probs as _random_probs


def random_probs(n, c, t, seed):
    return _random_probs(np.random.default_rng(seed), (n, c, t))


def _epig_brute(p, q):
    """Mean over x* of KL(p(y, y*) || p(y) p(y*)), the joint averaged over the T samples."""
    out = np.zeros(len(p))
    for i in range(len(p)):
        kls = []
        for j in range(len(q)):
            joint = np.mean([np.outer(p[i, :, t], q[j, :, t]) for t in range(p.shape[2])], axis=0)
            prod = np.outer(p[i].mean(1), q[j].mean(1))
            kls.append(np.sum(joint * np.log(joint / prod)))
        out[i] = np.mean(kls)
    return out


def test_epig_is_the_expected_mutual_information_with_target_predictions():
    p, q = random_probs(12, 3, 5, seed=0), random_probs(7, 4, 5, seed=1)
    np.testing.assert_allclose(epig(p, q), _epig_brute(p, q), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(epig(p, q, max_work_bytes=1), _epig_brute(p, q), rtol=1e-10, atol=1e-12)


def test_epig_is_zero_without_epistemic_uncertainty_and_nonnegative():
    p = np.repeat(random_probs(6, 3, 1, seed=2), 4, axis=2)  # every T sample the same
    q = random_probs(5, 3, 4, seed=3)
    np.testing.assert_allclose(epig(p, q), 0, atol=1e-12)
    assert (epig(random_probs(30, 3, 4, seed=4), q) >= -1e-12).all()


def test_epig_torch_matches_numpy_and_checks_t():
    p, q = random_probs(10, 3, 5, seed=5), random_probs(4, 3, 5, seed=6)
    out = epig(torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.shape == (10,)
    np.testing.assert_allclose(out.numpy(), epig(p, q), atol=1e-5)
    with pytest.raises(ValueError, match="same T"):
        epig(p, q[:, :, :4])


def test_epig_equals_baal():
    from baal.active.heuristics import EPIG

    p, q = random_probs(20, 4, 8, seed=7), random_probs(9, 4, 8, seed=8)
    ref = EPIG().compute_score(p.astype(np.float32), q.astype(np.float32))
    np.testing.assert_allclose(epig(p, q), ref, atol=1e-5)
