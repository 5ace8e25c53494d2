"""al_lib.heuristics.diversity against brute-force versions and the papers' definitions."""

import itertools

import numpy as np
import pytest
import torch

from al_lib.heuristics.diversity import (
    badge,
    balanced_quotas,
    class_balanced,
    cover_radius,
    gradient_embeddings,
    kcenter_greedy,
    probcover,
    typicality,
    typiclust,
)
from al_lib.seeding import check_random_state


def _blobs(n, d=3, centres=4, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)) * 4
    return c[rng.integers(centres, size=n)] + spread * rng.normal(size=(n, d))


def _probs(n, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(c) * 0.7, size=n)


# --- BADGE ----------------------------------------------------------------------------------------


def test_gradient_embeddings_are_the_last_layer_loss_gradient():
    """(p - onehot(ŷ)) ⊗ h is d CE(softmax(W h), ŷ) / dW, computed here by autograd."""
    rng = np.random.default_rng(1)
    h = torch.tensor(rng.normal(size=(5, 3)))
    w = torch.tensor(rng.normal(size=(4, 3)), requires_grad=True)
    p = torch.softmax(h @ w.T, 1)
    emb = gradient_embeddings(p.detach().numpy(), h.numpy())
    for i in range(5):
        w.grad = None
        loss = torch.nn.functional.cross_entropy((h[i] @ w.T)[None], p[i].argmax()[None])
        loss.backward()
        np.testing.assert_allclose(emb[i], w.grad.numpy().ravel(), atol=1e-12)


def _badge_brute(p, h, k, seed):
    g = np.stack([np.outer(pi - np.eye(len(pi))[pi.argmax()], hi).ravel() for pi, hi in zip(p, h)])
    rng = check_random_state(seed)
    picks = [int(np.argmax((g**2).sum(1)))]
    while len(picks) < k:
        d2 = np.min([((g - g[j]) ** 2).sum(1) for j in picks], axis=0)
        d2[picks] = 0
        picks.append(int(rng.choice(len(g), p=d2 / d2.sum())))
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_badge_is_kmeans_pp_on_gradient_embeddings(seed):
    p, h = _probs(60, seed=seed), _blobs(60, d=5, seed=seed)
    assert badge(p, h, 12, seed=seed).tolist() == _badge_brute(p, h, 12, seed)


def test_badge_torch_and_mc_probs():
    p, h = _probs(40), _blobs(40, d=5)
    mc = np.repeat(p[:, :, None], 3, axis=2)
    out = badge(torch.tensor(mc, dtype=torch.float32), torch.tensor(h, dtype=torch.float32), 6, seed=3)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert out.tolist() == badge(p, h, 6, seed=3).tolist()
    assert len(set(out.tolist())) == 6


def test_badge_duplicates_fall_back_to_uniform_over_the_rest():
    p = np.tile([[0.6, 0.4]], (5, 1))
    h = np.ones((5, 2))
    picks = badge(p, h, 5, seed=0).tolist()
    assert sorted(picks) == list(range(5))


def test_badge_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="rows"):
        badge(_probs(5), _blobs(6), 2)


# --- CoreSet --------------------------------------------------------------------------------------


def _kcenter_brute(x, lab, k):
    centres = list(lab)
    picks = []
    for _ in range(k):
        d = [min(np.linalg.norm(xi - c) for c in centres) if i not in picks else -1 for i, xi in enumerate(x)]
        j = int(np.argmax(d))
        picks.append(j)
        centres.append(x[j])
    return picks


def test_kcenter_greedy_equals_brute_force():
    x, lab = _blobs(80, seed=3), _blobs(5, seed=4)
    assert kcenter_greedy(x, 10, labelled_ld=lab).tolist() == _kcenter_brute(x, lab, 10)


def test_kcenter_greedy_is_a_2_approximation():
    """Sener & Savarese: the greedy cover radius is at most twice the optimal k-centre radius."""
    x, lab = _blobs(14, d=2, seed=5, spread=1.0), _blobs(1, d=2, seed=6)
    k = 3
    greedy = cover_radius(x, np.concatenate([lab, x[kcenter_greedy(x, k, labelled_ld=lab)]]))
    best = min(cover_radius(x, np.concatenate([lab, x[list(s)]])) for s in itertools.combinations(range(14), k))
    assert best <= greedy <= 2 * best + 1e-12


def test_kcenter_greedy_without_labels_starts_at_a_seeded_random_sample():
    x = _blobs(30, seed=7)
    a, b = kcenter_greedy(x, 4, seed=1), kcenter_greedy(x, 4, seed=1)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 4
    first = int(check_random_state(1).integers(30))
    assert a[0] == first and a[1:].tolist() == kcenter_greedy(x, 3, labelled_ld=x[[first]]).tolist()


def test_kcenter_greedy_small_blocks_give_the_same_picks():
    x, lab = _blobs(50, seed=8), _blobs(20, seed=9)
    assert kcenter_greedy(x, 7, labelled_ld=lab, max_work_bytes=64).tolist() == kcenter_greedy(x, 7, labelled_ld=lab).tolist()


def test_kcenter_greedy_torch_float32():
    x, lab = _blobs(50, seed=8), _blobs(3, seed=9)
    out = kcenter_greedy(torch.tensor(x, dtype=torch.float32), 5, labelled_ld=torch.tensor(lab, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.tolist() == kcenter_greedy(x, 5, labelled_ld=lab).tolist()


# --- TypiClust ------------------------------------------------------------------------------------


def test_typicality_is_inverse_mean_knn_distance():
    x = _blobs(25, seed=10)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    expected = [1 / np.sort(row)[1:6].mean() for row in d]
    np.testing.assert_allclose(typicality(x, n_neighbors=5), expected, rtol=1e-9)
    np.testing.assert_allclose(typicality(x, n_neighbors=5, max_work_bytes=8), expected, rtol=1e-9)
    assert typicality(x[:1]).tolist() == [1.0]


def test_typiclust_picks_the_densest_point_of_the_largest_uncovered_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    sizes = [30, 20, 10]
    x = np.concatenate([c + rng.normal(size=(s, 2)) for c, s in zip(centres, sizes)])
    clusters = np.repeat([0, 1, 2], sizes)
    lab = centres[[0]] + 0.01  # the largest cluster is covered
    picks = typiclust(x, 2, labelled_ld=lab, n_neighbors=5, cluster_labels=np.concatenate([clusters, [0]]))
    # cluster 1 (20) first, then cluster 2 (10); each its most typical member
    for pick, c in zip(picks.tolist(), [1, 2]):
        members = np.flatnonzero(clusters == c)
        assert pick == members[np.argmax(typicality(x[members], n_neighbors=5))]


def test_typiclust_kmeans_default_and_small_clusters():
    x = _blobs(100, d=2, centres=5, seed=11)
    picks = typiclust(x, 5, seed=0)
    assert len(set(picks.tolist())) == 5 and picks.tolist() == typiclust(x, 5, seed=0).tolist()
    # every cluster below min_cluster_size: the sweep still returns k distinct picks
    assert len(set(typiclust(x[:8], 6, min_cluster_size=50, seed=0).tolist())) == 6


# --- ProbCover ------------------------------------------------------------------------------------


def _probcover_brute(x, lab, k, delta):
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    ball = d <= delta
    covered = np.zeros(len(x), bool)
    for lp in lab:
        covered |= np.linalg.norm(x - lp, axis=1) <= delta
    picks = []
    for _ in range(k):
        gain = np.array([(ball[i] & ~covered).sum() if i not in picks else -1 for i in range(len(x))])
        j = int(np.argmax(gain))
        picks.append(j)
        covered |= ball[j]
    return picks


def test_probcover_equals_brute_force_max_coverage():
    x, lab = _blobs(90, d=2, seed=12, spread=1.0), _blobs(3, d=2, seed=13)
    assert probcover(x, 12, delta=1.0, labelled_ld=lab).tolist() == _probcover_brute(x, lab, 12, 1.0)
    assert probcover(x, 12, delta=1.0, labelled_ld=lab, max_work_bytes=100).tolist() == _probcover_brute(x, lab, 12, 1.0)


def test_probcover_fully_covered_then_random_rest():
    x = np.array([[0.0], [0.1], [0.2], [5.0]])
    picks = probcover(x, 4, delta=1.0, seed=0).tolist()
    assert picks[:2] == [0, 3] and sorted(picks) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="delta"):
        probcover(x, 1, delta=0)


# --- class balance --------------------------------------------------------------------------------


def test_balanced_quotas_water_fill():
    assert balanced_quotas([5, 5, 5], 6).tolist() == [2, 2, 2]
    assert balanced_quotas([5, 5, 5], 6, labelled_counts_c=[3, 0, 0]).tolist() == [0, 3, 3]
    assert balanced_quotas([1, 10, 10], 7).tolist() == [1, 3, 3]
    with pytest.raises(ValueError):
        balanced_quotas([1, 1], 3)


def test_class_balanced_takes_the_best_of_each_class():
    rng = np.random.default_rng(0)
    scores = rng.random(40)
    pred = rng.integers(3, size=40)
    picks = class_balanced(scores, pred, 9, n_classes=3)
    assert np.bincount(pred[picks], minlength=3).tolist() == [3, 3, 3]
    for c in range(3):
        members = np.flatnonzero(pred == c)
        assert set(picks[pred[picks] == c].tolist()) == set(members[np.argsort(-scores[members])[:3]].tolist())
    assert np.all(np.diff(scores[picks]) <= 0)  # best first
    t = class_balanced(torch.tensor(scores), torch.tensor(pred), 9, n_classes=3)
    assert isinstance(t, torch.Tensor) and t.tolist() == picks.tolist()


def _purity_brute(x, clusters, delta):
    """Fraction of samples whose δ-ball (|x - y| <= δ) holds only their own cluster."""
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return float(np.mean([(clusters[d[i] <= delta] == clusters[i]).all() for i in range(len(x))]))


@pytest.mark.parametrize("alpha", [0.95, 0.8, 1.0])
def test_probcover_delta_is_the_largest_alpha_pure_radius(alpha):
    from al_lib.heuristics.diversity import probcover_delta

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(c, 0.6, size=(40, 2)) for c in ((0, 0), (3, 0), (0, 3))]).astype(np.float32)
    clusters = np.repeat(np.arange(3), 40)
    delta = probcover_delta(x, 3, alpha=alpha, cluster_labels=clusters)
    assert _purity_brute(x, clusters, delta) >= alpha  # pure enough ...
    assert _purity_brute(x, clusters, delta * (1 + 1e-4)) < alpha  # ... and the largest such δ
    assert probcover_delta(torch.from_numpy(x), 3, alpha=alpha, cluster_labels=clusters, max_work_bytes=200) \
        == pytest.approx(delta, rel=1e-5)  # blocks of distances: float32 rounding differs


def test_probcover_delta_clusters_with_seeded_kmeans():
    from sklearn.cluster import KMeans

    from al_lib.heuristics.diversity import probcover_delta
    from al_lib.seeding import check_random_state

    x = np.random.default_rng(0).normal(size=(90, 4)).astype(np.float32)
    delta = probcover_delta(x, 4, seed=7)
    assert delta == probcover_delta(x, 4, seed=7) > 0
    clusters = KMeans(4, n_init=1, random_state=int(check_random_state(7).integers(2**31))).fit_predict(
        x.astype(np.float64))
    assert delta == pytest.approx(probcover_delta(x, 4, cluster_labels=clusters), rel=1e-6)
    with pytest.raises(ValueError, match="2 non-empty clusters"):
        probcover_delta(x, 4, cluster_labels=np.zeros(90, dtype=int))
    with pytest.raises(ValueError, match="n_clusters"):
        probcover_delta(x, 1)
    with pytest.raises(ValueError, match="alpha"):
        probcover_delta(x, 4, alpha=0)
    with pytest.raises(ValueError, match="coincide"):
        probcover_delta(np.zeros((4, 2)), 2, cluster_labels=[0, 1, 0, 1])
