"""al_lib.heuristics against BaaL 2.1.0 (``baal.active.heuristics``), the reference library.

Same inputs give the same scores (up to the transforms below) and the same rankings wherever BaaL
is correct. Where BaaL differs:

- Sign conventions. BaaL's ``Margin`` scores ``p_top1 - p_top2`` and ``Certainty`` scores
  ``max_c mean_t p``, both ranked ascending (``reverse=False``); ours are ``margin = -(p1 - p2)``
  and ``least_confidence = 1 - max``, ranked descending (higher = more worth labelling, always).
  Rankings agree.
- ``Variance`` is the mean over classes of the *variance* over T; our ``mean_std`` is the mean of
  the *standard deviation* (ddof=0 in both). Equal rankings for two classes (``mean_std =
  sqrt(Variance)``), but they can disagree for C >= 3 (``test_variance_and_mean_std_can_disagree``).
- Binary single-sigmoid output ``[N, 1, T]``: BaaL does not expand it to ``[1 - p, p]``.
  ``Entropy`` is then 0 for every sample, ``BALD`` uses only ``-p log p`` (drops the ``1 - p``
  class) and ``Margin`` raises IndexError. Ours equals BaaL on the explicit two-class input.
- Inputs that are not normalised within ``np.allclose`` (or lie outside [0, 1]) are silently
  softmaxed (sigmoided for C == 1) by BaaL's ``to_prob``; ours treats its input as probabilities.
- Ties: BaaL ranks with an unstable ``np.argsort``, reversed for descending heuristics, so equal
  scores come out highest index first for BALD/Entropy/Variance; ours: lowest index first.
- Reductions of confidence scores: BaaL reduces Margin's and Certainty's *confidence* over the
  extra dims, ours the uncertainty, so BaaL's "max" (most confident pixel) is our "max" of the
  negated score only with BaaL's "min"; "mean" and "sum" rank alike.
- Reductions: BaaL's BALD/Entropy/Margin/Certainty default to ``reduction="none"`` (ranking a
  segmentation output then raises) and ``Variance`` forbids "none"; ours defaults to "mean". With
  the same reduction the scores agree. Non-finite scores are replaced by BaaL with 0 or 10000 and a
  warning; ours rejects NaN inputs.
- Stochastic acquisition: BaaL's ``PowerSampling``/``GibbsSampling``/``RankBasedSampling`` build the
  same distributions as ours (``RankBasedSampling`` also uses average ranks) but draw with
  ``np.random.choice`` from the global RNG (no seed), fall back to uniform over *all* samples when
  fewer than k scores are positive (ours: all positive ones first, then uniform over the zeros),
  and ``GibbsSampling`` divides the caller's score array in place.
- BatchBALD: BaaL's ``BatchBALD(num_samples=m)`` selects ``m + 1`` samples (BALD's best plus m
  greedy steps), estimates the joint entropy by sampling (``num_draw`` × T configurations) from the
  second step on, with the global torch RNG (no seed argument), and stops early on a
  ``MIN_SPREAD`` heuristic. Its ranking is not the acquisition order: selected samples are sorted by
  their step gain (BALD's value for the first, joint entropy minus conditional entropy for the
  rest) and the unselected ones follow with score 0, in argsort order. Ours enumerates exactly
  while affordable and returns the acquisition order; among exact duplicates BaaL may pick another
  copy than ours (same joint MI).
- Random: different RNG streams, not comparable.
"""

import math

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import al_lib.heuristics as H
from al_lib.heuristics import selection
from heuristics.test_scores import random_probs

baal_heuristics = pytest.importorskip("baal.active.heuristics")
baal_stochastics = pytest.importorskip("baal.active.heuristics.stochastics")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

# ours, BaaL class, transform from BaaL's score to ours, BaaL's reduction for our "max"
PAIRS = [
    (H.bald, "BALD", lambda s: s, "max"),
    (H.entropy, "Entropy", lambda s: s, "max"),
    (H.margin, "Margin", lambda s: -s, "min"),
    (H.least_confidence, "Certainty", lambda s: 1 - s, "min"),
]
SHAPES = [(60, 4, 8), (20, 3, 4, 3, 6)]


@pytest.mark.parametrize("ours, baal_name, transform, _", PAIRS)
@pytest.mark.parametrize("shape", SHAPES)
def test_pixel_scores_match(ours, baal_name, transform, _, shape):
    probs = random_probs(np.random.default_rng(len(shape)), shape)
    theirs = getattr(baal_heuristics, baal_name)(reduction="none").get_uncertainties(probs)
    np.testing.assert_allclose(ours(probs, reduction="none"), transform(theirs), atol=1e-12)


@pytest.mark.parametrize("ours, baal_name, _, baal_max", PAIRS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "max"])
@pytest.mark.parametrize("shape", SHAPES)
def test_rankings_match(ours, baal_name, _, baal_max, reduction, shape):
    probs = random_probs(np.random.default_rng(len(shape)), shape)
    baal_reduction = baal_max if reduction == "max" else reduction
    heuristic = getattr(baal_heuristics, baal_name)(reduction=baal_reduction)
    ranking = H.top_k(ours(probs, reduction=reduction), len(probs))
    np.testing.assert_array_equal(ranking, heuristic(probs))


def test_max_reduction_of_confidence_scores_differs():
    # BaaL reduces Margin/Certainty *confidence*: "max" keeps each sample's most confident pixel.
    probs = random_probs(np.random.default_rng(2), SHAPES[1])
    ours = H.top_k(H.margin(probs, reduction="max"), len(probs))
    assert not np.array_equal(ours, baal_heuristics.Margin(reduction="max")(probs))


def test_mean_std_is_sqrt_variance_for_two_classes():
    probs = random_probs(np.random.default_rng(0), (60, 2, 8))
    heuristic = baal_heuristics.Variance(reduction="mean")
    np.testing.assert_allclose(H.mean_std(probs), np.sqrt(heuristic.get_uncertainties(probs)))
    np.testing.assert_array_equal(H.top_k(H.mean_std(probs), 60), heuristic(probs))


def test_variance_and_mean_std_can_disagree():
    # A swings (±0.3, ∓0.3, 0); B swings (±0.33, ∓0.165, ∓0.165): more total std, less variance.
    a = [[0.7, 0.1], [0.1, 0.7], [0.2, 0.2]]
    b = [[0.73, 0.07], [0.135, 0.465], [0.135, 0.465]]
    probs = np.array([a, b])
    assert H.top_k(H.mean_std(probs), 2).tolist() == [1, 0]
    assert baal_heuristics.Variance(reduction="mean")(probs).tolist() == [0, 1]


def test_binary_single_output():
    p = np.random.default_rng(1).random((30, 1, 6))
    two = np.concatenate([1 - p, p], axis=1)
    for ours, baal_name, transform, _ in PAIRS:
        heuristic = getattr(baal_heuristics, baal_name)()
        np.testing.assert_allclose(ours(p), transform(heuristic.get_uncertainties(two)), atol=1e-12)
    # BaaL does not expand [N, 1, T]: a single class has entropy 0.
    np.testing.assert_allclose(baal_heuristics.Entropy().get_uncertainties(p), 0)
    with pytest.raises(IndexError):
        baal_heuristics.Margin().get_uncertainties(p)


def test_tie_breaking():
    probs = np.full((6, 2, 3), 0.5)
    assert H.top_k(H.bald(probs), 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert baal_heuristics.BALD()(probs).tolist() == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize(
    "baal_name, log_weights",
    [
        ("PowerSampling", selection._power_log_weights),
        ("GibbsSampling", selection._softmax_log_weights),
        ("RankBasedSampling", selection._softrank_log_weights),
    ],
)
def test_stochastic_distributions_match(baal_name, log_weights):
    scores = np.array([0.0, 0.2, 1.3, 0.7, 0.7, 2.0])
    sampler = getattr(baal_stochastics, baal_name)(baal_heuristics.BALD(), 3, temperature=0.5)
    expected = sampler._make_distribution(scores.copy())
    ours = torch.softmax(log_weights(torch.from_numpy(scores), 0.5), dim=0)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-12)


# --- BatchBALD -------------------------------------------------------------------------------


def _baal_batch_bald(probs, k):
    """BaaL's selection of k samples (it selects num_samples + 1), seeded through the global RNG."""
    # BaaL's many small numpy matmuls crawl when BLAS threads fight over shared cores.
    with threadpool_limits(1, user_api="blas"), torch.random.fork_rng():
        torch.manual_seed(0)
        scores = baal_heuristics.BatchBALD(num_samples=k - 1).get_uncertainties(probs)
    selected = np.flatnonzero(scores)
    assert len(selected) == k
    return selected


def _logits_problem(rng, n_unique, copies, c, t, support=None):
    """Softmax MC probabilities, each unique sample repeated ``copies`` times; with ``support``,
    each sample puts probability on only that many classes (exact zeros elsewhere)."""
    base = rng.normal(size=(n_unique, c, 1)) * 1.5
    logits = base + rng.uniform(0.1, 1.0, size=(n_unique, 1, 1)) * rng.normal(size=(n_unique, c, t))
    weights = np.exp(logits)
    if support is not None:
        mask = np.zeros((n_unique, c, 1), bool)
        for row in mask:
            row[rng.choice(c, support, replace=False)] = True
        weights = np.where(mask, weights, 0.0)
    probs = weights / weights.sum(axis=1, keepdims=True)
    return np.repeat(probs, copies, axis=0)


@pytest.mark.parametrize(
    "k, support, max_exact_configs",
    [
        (10, 3, None),  # N=200, C=10, T=20, k=10; 3 classes per sample keep 3^10 configs exact
        (6, None, 10**5),  # dense C=10: 10^6 configs, exact joint MI still affordable
    ],
)
def test_batch_bald_joint_mi_at_least_baal(k, support, max_exact_configs):
    probs = _logits_problem(np.random.default_rng(0), 50, 4, c=10, t=20, support=support)
    ours = H.batch_bald(probs, k, seed=0, max_exact_configs=max_exact_configs)
    theirs = _baal_batch_bald(probs, k)
    assert ours[0] in theirs  # both start from the BALD winner
    mi_ours = H.joint_mutual_information(probs, ours)
    mi_theirs = H.joint_mutual_information(probs, theirs)
    assert mi_ours >= mi_theirs - 1e-9
    assert mi_ours > H.joint_mutual_information(probs, H.top_k(H.bald(probs), k))
    assert mi_ours <= math.log(20)
