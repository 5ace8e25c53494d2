"""BatchBALD against brute-force enumeration of joint mutual information."""

import importlib
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import al_lib.heuristics as H
# The package re-exports a function of the same name, so fetch the module itself.
bb = importlib.import_module("al_lib.heuristics.batch_bald")
from al_lib.seeding import torch_generator
from heuristics.test_scores import random_probs

FAST = settings(max_examples=30, deadline=None)


def brute_force_joint_mi(probs, indices):
    """I(y_S; w) by looping over every label configuration of S (independent of the library)."""
    c, t = probs.shape[1], probs.shape[2]
    joint_entropy = 0.0
    for labels in itertools.product(range(c), repeat=len(indices)):
        per_w = np.ones(t)
        for i, y in zip(indices, labels):
            per_w = per_w * probs[i, y]
        p = per_w.mean()
        joint_entropy -= p * math.log(p) if p > 0 else 0.0
    log_p = np.log(np.where(probs > 0, probs, 1))
    expected = sum(-(probs[i] * log_p[i]).sum(0).mean() for i in indices)
    return joint_entropy - expected


@st.composite
def tiny_problems(draw):
    n = draw(st.integers(2, 6))
    c = draw(st.integers(1, 3))
    t = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["dirichlet", "sharp", "mixed"]))
    probs = random_probs(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), (n, c, t), kind)
    return probs, draw(st.integers(1, min(3, n)))


def _two_class(probs):
    return np.concatenate([1 - probs, probs], axis=1) if probs.shape[1] == 1 else probs


# --- joint mutual information --------------------------------------------------------------------


@FAST
@given(problem=tiny_problems(), data=st.data())
def test_joint_mi_matches_brute_force(problem, data):
    probs, k = problem
    indices = data.draw(st.lists(st.integers(0, len(probs) - 1), min_size=0, max_size=k))
    got = H.joint_mutual_information(probs, indices)
    assert got == pytest.approx(brute_force_joint_mi(_two_class(probs), indices), abs=1e-10)
    assert -1e-10 <= got <= math.log(probs.shape[-1]) + 1e-10  # I(y_S; w) <= H(w) = log T


def test_joint_mi_of_one_sample_is_bald_and_order_free():
    probs = random_probs(np.random.default_rng(0), (6, 3, 5))
    bald = H.bald(probs)
    for i in range(6):
        assert H.joint_mutual_information(probs, [i]) == pytest.approx(bald[i], abs=1e-12)
    a = H.joint_mutual_information(probs, [0, 3, 5])
    reordered = H.joint_mutual_information(torch.from_numpy(probs), [5, 0, 3])
    assert reordered == pytest.approx(a, abs=1e-12)
    assert H.joint_mutual_information(probs, []) == 0.0
    with pytest.raises(ValueError, match="max_configs"):
        H.joint_mutual_information(probs, [0, 1, 2], max_configs=26)
    with pytest.raises(IndexError):
        H.joint_mutual_information(probs, [6])


# --- greedy selection ------------------------------------------------------------------------


@FAST
@given(problem=tiny_problems())
def test_each_greedy_step_maximises_brute_force_joint_mi(problem):
    probs, k = problem
    selected = H.batch_bald(probs, k, seed=0).tolist()
    two = _two_class(probs)
    for step in range(k):
        before = selected[:step]
        candidates = [i for i in range(len(probs)) if i not in before]
        mi = {i: brute_force_joint_mi(two, before + [i]) for i in candidates}
        assert mi[selected[step]] >= max(mi.values()) - 1e-9
    assert len(set(selected)) == k


@FAST
@given(problem=tiny_problems(), kind=st.sampled_from(["numpy", "float64", "float32"]))
def test_k1_is_top_bald(problem, kind):
    probs, _ = problem
    given_probs = {
        "numpy": probs,
        "float64": torch.from_numpy(probs),
        "float32": torch.from_numpy(probs).float(),
    }[kind]
    np.testing.assert_array_equal(
        np.asarray(H.batch_bald(given_probs, 1)), np.asarray(H.top_k(H.bald(given_probs), 1))
    )


@FAST
@given(problem=tiny_problems(), as_torch=st.booleans())
def test_gains_are_the_brute_force_joint_mi_increments(problem, as_torch):
    probs, k = problem
    given_probs = torch.from_numpy(probs) if as_torch else probs
    picks, gains = H.batch_bald(given_probs, k, seed=0, return_gains=True)
    assert isinstance(gains, torch.Tensor) == as_torch and gains.dtype in (np.float64, torch.float64)
    np.testing.assert_array_equal(np.asarray(picks), np.asarray(H.batch_bald(probs, k, seed=0)))
    two, picks = _two_class(probs), np.asarray(picks).tolist()
    mi = [brute_force_joint_mi(two, picks[:j]) for j in range(k + 1)]
    np.testing.assert_allclose(np.asarray(gains), np.diff(mi), atol=1e-9)


def test_duplicates_are_not_acquired_twice():
    # A splits the T=4 weight samples into {1,2} | {3,4}; B into {1,3} | {2,4}, a little softer.
    a = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    b = np.array([[0.95, 0.05, 0.95, 0.05], [0.05, 0.95, 0.05, 0.95]])
    flat = np.full((2, 4), 0.5)
    probs = np.stack([flat, a, a, b, a, flat])
    np.testing.assert_array_equal(H.top_k(H.bald(probs), 2), [1, 2])  # top-k takes the copy
    np.testing.assert_array_equal(H.batch_bald(probs, 2), [1, 3])  # BatchBALD does not


def test_ties_go_to_the_lower_index_and_all_can_be_taken():
    probs = np.tile(random_probs(np.random.default_rng(0), (1, 3, 4)), (5, 1, 1))
    np.testing.assert_array_equal(H.batch_bald(probs, 5), [0, 1, 2, 3, 4])
    constant = np.full((4, 2, 3), 0.5)
    np.testing.assert_array_equal(H.batch_bald(constant, 3), [0, 1, 2])


def test_array_kinds_and_validation():
    probs = random_probs(np.random.default_rng(0), (10, 1, 6))  # binary, sigmoid output
    out = H.batch_bald(probs, 3)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, H.batch_bald(_two_class(probs), 3))
    t = H.batch_bald(torch.from_numpy(probs).float(), 3, device="cpu")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.device.type == "cpu"
    assert H.batch_bald(probs, 0).shape == (0,)
    onehot = random_probs(np.random.default_rng(1), (6, 3, 4), "onehot")
    assert H.batch_bald(onehot, 6).shape == (6,)
    with pytest.raises(ValueError, match="k must be"):
        H.batch_bald(probs, 11)
    with pytest.raises(ValueError, match=r"\[N, C, T\]"):
        H.batch_bald(np.full((4, 2, 3, 5), 0.5), 1)


# --- exact vs sampled estimation, memory chunks ----------------------------------------------


def _gains(configs, probs, candidates, dtype=torch.float64, work_bytes=bb._WORK_BYTES):
    p_t = probs.to(dtype).permute(2, 0, 1).contiguous()
    ent = -torch.xlogy(probs, probs).sum(dim=1)
    return bb._gains(configs, p_t, ent, candidates, work_bytes)


def _exact_gains(probs, selected, candidates):
    """Brute-force I(y_x; w | y_S) = I(y_S, y_x; w) - I(y_S; w)."""
    base = brute_force_joint_mi(probs, selected)
    return np.array([brute_force_joint_mi(probs, selected + [int(i)]) - base for i in candidates])


def test_exact_gains_match_brute_force_in_float64_and_float32():
    probs = torch.from_numpy(random_probs(np.random.default_rng(3), (12, 3, 8)))
    selected, candidates = [0, 4, 7], torch.arange(12)
    expected = _exact_gains(probs.numpy(), selected, candidates)
    configs = bb._Configs(bb._enumerate(probs, selected))
    np.testing.assert_allclose(_gains(configs, probs, candidates).numpy(), expected, atol=1e-12)
    got32 = _gains(configs, probs, candidates, torch.float32).numpy()
    np.testing.assert_allclose(got32, expected, atol=2e-6)
    # Chunked over candidates and configurations (a few of each per chunk): same numbers.
    tiny = _gains(configs, probs, candidates, work_bytes=200).numpy()
    np.testing.assert_allclose(tiny, expected, atol=1e-12)


def test_sampled_gains_approximate_exact():
    probs = torch.from_numpy(random_probs(np.random.default_rng(3), (12, 3, 8)))
    selected, candidates = [0, 4, 7], torch.arange(12)
    expected = _exact_gains(probs.numpy(), selected, candidates)
    sampled = bb._sample_configs(probs, selected, 20_000, torch_generator(0))
    np.testing.assert_allclose(_gains(sampled, probs, candidates).numpy(), expected, atol=0.01)


def test_sampled_gains_are_unbiased_and_thinning_keeps_them_so(monkeypatch):
    # Few draws per estimate, many estimates: the mean converges to the exact gains.
    probs = torch.from_numpy(random_probs(np.random.default_rng(7), (6, 3, 5), "sharp"))
    selected, candidates = [0, 1, 2, 3], torch.arange(6)
    expected = _exact_gains(probs.numpy(), selected, candidates)
    monkeypatch.setattr(bb, "_THIN_VARIANCE", 0.5)  # thin hard
    plain, thinned, rows = [], [], []
    for seed in range(150):
        gen = torch_generator(seed)
        configs = bb._sample_configs(probs, selected, 40, gen)
        plain.append(_gains(configs, probs, candidates).numpy())
        configs = bb._thin(configs, gen)
        thinned.append(_gains(configs, probs, candidates).numpy())
        rows.append(configs.log_joint.shape[0])
    plain, thinned = np.array(plain), np.array(thinned)
    for est in (plain, thinned):
        stderr = est.std(axis=0) / np.sqrt(len(est))
        assert np.all(np.abs(est.mean(axis=0) - expected) < 4 * stderr + 1e-9)
    assert np.mean(rows) < 40  # it did thin


def test_thinning_drops_certain_configurations_only(monkeypatch):
    monkeypatch.setattr(bb, "_THIN_VARIANCE", 1e-12)  # no variance to spare: thin only h = 0
    log_joint = torch.log(torch.tensor([[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]]))
    configs = bb._Configs(log_joint, torch.full((3,), 1 / 3, dtype=torch.float64), torch.zeros(3))
    thinned = bb._thin(configs, torch_generator(0))
    # The certain one (posterior entropy 0) contributes nothing and goes; the others stay as is.
    torch.testing.assert_close(thinned.log_joint, log_joint[1:])
    torch.testing.assert_close(thinned.weight, configs.weight[1:])


def test_lazy_evaluation_picks_as_evaluating_every_candidate(monkeypatch):
    probs = random_probs(np.random.default_rng(8), (300, 4, 10))
    lazy = H.batch_bald(probs, 7, seed=0)  # 4^6 configurations: exact throughout
    monkeypatch.setattr(bb, "_FIRST_BLOCK", 10**6)  # one block: every candidate, every step
    np.testing.assert_array_equal(H.batch_bald(probs, 7, seed=0), lazy)


def test_float32_steps_pick_as_float64(monkeypatch):
    probs = random_probs(np.random.default_rng(9), (200, 4, 10))
    expected = H.batch_bald(probs, 6)  # exact (4^5 configs at most), small: float64
    monkeypatch.setattr(bb, "_FLOAT64_WORK", 0)
    np.testing.assert_array_equal(H.batch_bald(probs, 6), expected)


def test_forced_sampling_matches_exact_selection_quality():
    probs = random_probs(np.random.default_rng(4), (40, 3, 8), "sharp")
    exact = H.batch_bald(probs, 4)
    sampled = H.batch_bald(probs, 4, max_exact_configs=1, num_samples=5000, seed=0)
    again = H.batch_bald(probs, 4, max_exact_configs=1, num_samples=5000, seed=0)
    np.testing.assert_array_equal(sampled, again)  # seeded
    mi_exact = H.joint_mutual_information(probs, exact)
    assert H.joint_mutual_information(probs, sampled) >= mi_exact - 0.02


def test_sampled_selection_beats_top_k_on_redundant_pool():
    # MC samples share a latent (as dropout masks do), each sample thrice; C=10, T=20, k=8:
    # exact for 4 picks (10^4 configurations), sampled beyond.
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(60, 10, 1)) * 2 + (rng.normal(size=(60, 10, 4)) * 0.3) @ rng.normal(
        size=(4, 20)
    )
    probs = np.repeat(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 3, axis=0)
    picks = H.batch_bald(probs, 8, seed=0, num_samples=2000)
    assert len(set(picks.tolist())) == 8
    np.testing.assert_array_equal(picks, H.batch_bald(probs, 8, seed=0, num_samples=2000))
    ours = H.estimate_joint_mutual_information(probs, picks, num_samples=20_000, seed=0)
    top = H.top_k(H.bald(probs), 8)
    assert ours > H.estimate_joint_mutual_information(probs, top, num_samples=20_000, seed=0) + 0.02


def test_chunking_does_not_change_the_result(monkeypatch):
    probs = random_probs(np.random.default_rng(5), (30, 3, 6))
    expected = H.batch_bald(probs, 4)
    mi = H.joint_mutual_information(probs, expected)
    np.testing.assert_array_equal(H.batch_bald(probs, 4, max_work_bytes=2048), expected)
    monkeypatch.setattr(bb, "_WORK_BYTES", 2048)  # a few candidates / configurations per chunk
    np.testing.assert_array_equal(H.batch_bald(probs, 4), expected)
    assert H.joint_mutual_information(probs, expected) == pytest.approx(mi, abs=1e-12)


# --- Monte Carlo joint mutual information ----------------------------------------------------


@pytest.mark.parametrize("kind", ["dirichlet", "sharp", "mixed"])
def test_estimated_joint_mi_matches_exact(kind):
    probs = random_probs(np.random.default_rng(11), (8, 3, 7), kind)
    for indices in ([2], [0, 3, 5], [1, 2, 4, 6, 7], [5, 5]):
        exact = H.joint_mutual_information(probs, indices)
        est, stderr = H.estimate_joint_mutual_information(
            probs, indices, num_samples=20_000, seed=0, return_stderr=True
        )
        assert abs(est - exact) < 4 * stderr + 1e-9
        assert stderr < 0.01


def test_estimated_joint_mi_is_unbiased_with_few_samples():
    probs = random_probs(np.random.default_rng(12), (5, 3, 4))
    exact = H.joint_mutual_information(probs, [0, 1, 2])
    ests = [
        H.estimate_joint_mutual_information(probs, [0, 1, 2], num_samples=7, seed=s)
        for s in range(400)
    ]
    assert abs(np.mean(ests) - exact) < 4 * np.std(ests) / np.sqrt(len(ests))


def test_estimated_joint_mi_seeding_and_edge_cases():
    probs = random_probs(np.random.default_rng(13), (10, 4, 5), "mixed")
    a = H.estimate_joint_mutual_information(probs, [1, 3, 5], num_samples=1000, seed=3)
    as_tensor = torch.from_numpy(probs)
    assert a == H.estimate_joint_mutual_information(as_tensor, [1, 3, 5], num_samples=1000, seed=3)
    assert H.estimate_joint_mutual_information(probs, [], seed=0) == 0.0
    assert H.estimate_joint_mutual_information(probs, [], seed=0, return_stderr=True) == (0.0, 0.0)
    assert 0 <= a <= math.log(5)
    with pytest.raises(IndexError):
        H.estimate_joint_mutual_information(probs, [10])
    with pytest.raises(ValueError, match="num_samples"):
        H.estimate_joint_mutual_information(probs, [1], num_samples=0)
    # A large batch (C^n far beyond enumeration) is cheap and stays within [0, log T].
    big = random_probs(np.random.default_rng(14), (200, 10, 20))
    est = H.estimate_joint_mutual_information(big, range(50), num_samples=5000, seed=0)
    assert 0 < est <= math.log(20)
