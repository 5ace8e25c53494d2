"""Embedding-based batch selection as pure functions of arrays (shapes are in the argument names).

* :func:`badge` (Ash et al. 2020, "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower
  Bounds"): k-means++ seeding on the gradient embeddings ``g_i = (p_i - onehot(ŷ_i)) ⊗ h_i`` of the
  last layer's cross-entropy loss at the predicted label (:func:`gradient_embeddings`).
* :func:`kcenter_greedy` (Sener & Savarese 2018, "Active Learning for Convolutional Neural
  Networks: A Core-Set Approach"): greedy k-centre, the labelled set as the initial centres.
* :func:`typiclust` (Hacohen et al. 2022, "Active Learning on a Budget"): the most typical sample of
  each of the largest clusters that hold no labelled sample (cold start: any embedding).
* :func:`probcover` (Yehuda et al. 2022, "Active Learning Through a Covering Lens"): greedy max
  coverage of the δ-ball graph (cold start: any embedding).
* :func:`class_balanced`: per-sample scores, picks spread over the predicted classes so that the
  labelled set grows towards balance (as small-text's ``ClassBalancer``).

Numpy in → numpy indices out (computed in float64), torch in → torch indices on the input's
device (computed in the input's float dtype, at least float32). Distances are Euclidean and
computed in blocks of at most ``max_work_bytes`` (default :data:`WORK_BYTES`), so the extra memory
is O(N) plus one block whatever N; only the inputs are held whole. Ties go to the lower index.
"""

from __future__ import annotations

import heapq
import numbers

import numpy as np
import torch

from al_lib.heuristics._arrays import check_k, to_kind, to_tensor
from al_lib.seeding import SeedLike, check_random_state

__all__ = [
    "WORK_BYTES",
    "badge",
    "balanced_quotas",
    "class_balanced",
    "cover_radius",
    "gradient_embeddings",
    "kcenter_greedy",
    "probcover",
    "probcover_delta",
    "typicality",
    "typiclust",
]

#: Default bound on the bytes of one block of pairwise distances.
WORK_BYTES = 64 * 2**20


# --- plumbing -----------------------------------------------------------------------------------


def _features(x, name: str, *, like: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """``x [N, D]`` as a float tensor (``like``'s dtype and device when given), validated."""
    t, was_numpy = to_tensor(x)
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t, was_numpy


def _labelled(labelled_ld, x: torch.Tensor) -> torch.Tensor:
    """The labelled features ``[L, D]`` (L may be 0) on ``x``'s device and dtype."""
    if labelled_ld is None:
        return x.new_empty((0, x.shape[1]))
    lab, _ = _features(labelled_ld, "labelled_ld", like=x)
    if lab.shape[1] != x.shape[1]:
        raise ValueError(f"labelled_ld has D={lab.shape[1]} features, the pool D={x.shape[1]}")
    return lab


def _block_rows(n_cols: int, itemsize: int, max_work_bytes: int | None) -> int:
    """Rows of a ``[rows, n_cols]`` block of ``itemsize``-byte floats within ``max_work_bytes``."""
    budget = WORK_BYTES if max_work_bytes is None else int(max_work_bytes)
    return max(1, budget // max(1, n_cols * itemsize))


def _sq_dists(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor | None = None,
              b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``[A, B]`` (|a|² + |b|² - 2 a·b, clamped at 0)."""
    a_sq = (a * a).sum(1) if a_sq is None else a_sq
    b_sq = (b * b).sum(1) if b_sq is None else b_sq
    return (a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def _min_sq_dist(x: torch.Tensor, centres: torch.Tensor, max_work_bytes: int | None) -> torch.Tensor:
    """``min_c |x_i - c|²`` for every row of ``x [N, D]`` (inf when there is no centre) → ``[N]``."""
    out = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    if not len(centres):
        return out
    x_sq, c_sq = (x * x).sum(1), (centres * centres).sum(1)
    step = _block_rows(x.shape[0], x.element_size(), max_work_bytes)
    for s in range(0, len(centres), step):
        block = _sq_dists(x, centres[s : s + step], x_sq, c_sq[s : s + step])
        out = torch.minimum(out, block.amin(1))
    return out


def _indices(picks: list[int], was_numpy: bool, device: torch.device):
    return to_kind(torch.tensor(picks, dtype=torch.int64, device=device), was_numpy)


def _mean_probs(probs) -> tuple[torch.Tensor, bool]:
    """``[N, C]`` probabilities (``[N, C, T]`` MC probabilities are averaged over T; a binary
    ``[N, 1, ...]`` becomes two classes)."""
    p, was_numpy = to_tensor(probs)
    if p.ndim == 3:
        p = p.mean(-1)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C] or MC probabilities [N, C, T], got shape {tuple(p.shape)}")
    if torch.isnan(p).any():
        raise ValueError("probs contains NaN")
    if p.shape[1] == 1:
        p = torch.cat([1 - p, p], dim=1)
    return p, was_numpy


# --- BADGE --------------------------------------------------------------------------------------


def _loss_gradient_factor(p: torch.Tensor) -> torch.Tensor:
    """``p - onehot(argmax p)`` ``[N, C]``: the cross-entropy gradient w.r.t. the logits at ŷ."""
    return p - torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).to(p.dtype)


def gradient_embeddings(probs_nc, features_nd):
    """BADGE's gradient embeddings ``g_i = (p_i - onehot(ŷ_i)) ⊗ h_i``, flattened ``[N, C·D]``.

    The gradient of the cross-entropy loss at the predicted label ŷ w.r.t. the weights of the
    last linear layer (input ``h``, output logits). Materialises ``[N, C·D]``: for small pools and
    tests; :func:`badge` never builds it.

    Parameters
    ----------
    probs_nc : array or tensor ``[N, C]`` (or MC probabilities ``[N, C, T]``, averaged over T)
    features_nd : array or tensor ``[N, D]``, the last linear layer's input

    Returns
    -------
    embeddings : ``[N, C·D]``, same kind as ``probs_nc``; row i is ``outer(a_i, h_i).ravel()``.
    """
    p, was_numpy = _mean_probs(probs_nc)
    h, _ = _features(features_nd, "features_nd", like=p)
    if h.shape[0] != p.shape[0]:
        raise ValueError(f"probs have N={p.shape[0]} rows, features N={h.shape[0]}")
    a = _loss_gradient_factor(p)
    return to_kind((a[:, :, None] * h[:, None, :]).reshape(p.shape[0], -1), was_numpy)


def badge(probs_nc, features_nd, k: int, *, seed: SeedLike = None):
    """BADGE: k-means++ seeding on the gradient embeddings; indices ``[k]`` in acquisition order.

    The first pick is the largest embedding norm (as in Ash et al.'s code); each later pick is
    drawn with probability ∝ D²(x), its squared distance to the nearest pick so far. When every
    D² is 0 (duplicates), the next pick is uniform over the samples not yet picked.

    The ``[N, C·D]`` embeddings are never built: with ``a_i = p_i - onehot(ŷ_i)``,
    ``|g_i - g_j|² = |a_i|²|h_i|² + |a_j|²|h_j|² - 2 (a_i·a_j)(h_i·h_j)``, so a step costs
    O(N (C + D)) and the memory is the inputs plus O(N).

    Parameters
    ----------
    probs_nc : array or tensor ``[N, C]`` or MC probabilities ``[N, C, T]`` (averaged over T)
    features_nd : array or tensor ``[N, D]``: the input of the model's last linear layer
    k : int, ``0 <= k <= N``
    seed : int, numpy Generator or None: the D² draws.

    Returns
    -------
    indices : int64 ``[k]``, same kind as ``probs_nc``.
    """
    p, was_numpy = _mean_probs(probs_nc)
    h, _ = _features(features_nd, "features_nd", like=p)
    n = p.shape[0]
    if h.shape[0] != n:
        raise ValueError(f"probs have N={n} rows, features N={h.shape[0]}")
    k = check_k(k, n)
    rng = check_random_state(seed)
    a = _loss_gradient_factor(p)
    g_sq = (a * a).sum(1) * (h * h).sum(1)
    picks: list[int] = []
    d2 = None
    for step in range(k):
        if step == 0:
            j = int(torch.argmax(g_sq))
        else:
            w = d2.double().cpu().numpy()
            w[picks] = 0.0
            total = w.sum()
            if not total > 0:
                w = np.ones(n)
                w[picks] = 0.0
                total = w.sum()
            j = int(rng.choice(n, p=w / total))
        picks.append(j)
        dist = (g_sq + g_sq[j] - 2.0 * (a @ a[j]) * (h @ h[j])).clamp_min_(0.0)
        dist[j] = 0.0
        d2 = dist if d2 is None else torch.minimum(d2, dist)
    return _indices(picks, was_numpy, p.device)


# --- CoreSet ------------------------------------------------------------------------------------


def kcenter_greedy(features_nd, k: int, *, labelled_ld=None, seed: SeedLike = None,
                   max_work_bytes: int | None = None):
    """Greedy k-centre (CoreSet): each pick is the sample farthest from its nearest centre.

    The centres start as the labelled samples; each pick becomes one. This is the 2-approximation
    of Sener & Savarese (2018, Algorithm 1) to the minimax facility location problem: the cover
    radius :func:`cover_radius` of labelled + picks is at most twice the optimum's.

    Parameters
    ----------
    features_nd : array or tensor ``[N, D]``, the pool's embeddings
    k : int, ``0 <= k <= N``
    labelled_ld : array or tensor ``[L, D]`` or None: the labelled set's embeddings. Without any,
        the first centre is drawn uniformly with ``seed`` (the only random draw).
    seed : int, numpy Generator or None
    max_work_bytes : int, optional: the bound of one block of distances to the labelled set.

    Returns
    -------
    indices : int64 ``[k]`` in acquisition order, same kind as ``features_nd``.
    """
    x, was_numpy = _features(features_nd, "features_nd")
    lab = _labelled(labelled_ld, x)
    n = x.shape[0]
    k = check_k(k, n)
    d2 = _min_sq_dist(x, lab, max_work_bytes)
    x_sq = (x * x).sum(1)
    picked = torch.zeros(n, dtype=torch.bool, device=x.device)
    picks: list[int] = []
    for step in range(k):
        if step == 0 and not len(lab):
            j = int(check_random_state(seed).integers(n))
        else:
            j = int(torch.argmax(d2.masked_fill(picked, -1.0)))
        picks.append(j)
        picked[j] = True
        d2 = torch.minimum(d2, _sq_dists(x, x[j : j + 1], x_sq, x_sq[j : j + 1])[:, 0])
    return _indices(picks, was_numpy, x.device)


def cover_radius(features_nd, centres_md, *, max_work_bytes: int | None = None) -> float:
    """``max_i min_c |x_i - c|``: the radius of the smallest balls around ``centres_md [M, D]``
    that cover ``features_nd [N, D]`` (inf without centres; 0 for an empty pool)."""
    x, _ = _features(features_nd, "features_nd")
    c = _labelled(centres_md, x)
    if not len(x):
        return 0.0
    return float(_min_sq_dist(x, c, max_work_bytes).max().sqrt())


# --- TypiClust ----------------------------------------------------------------------------------


def typicality(features_nd, *, n_neighbors: int = 20, max_work_bytes: int | None = None):
    """TypiClust's typicality ``1 / mean_{x' ∈ KNN(x)} |x - x'|`` of every row, within the rows.

    K = ``min(n_neighbors, N - 1)``; a single row has typicality 1. Returns ``[N]``, same kind.
    """
    x, was_numpy = _features(features_nd, "features_nd")
    n = x.shape[0]
    if n <= 1:
        return to_kind(torch.ones(n, dtype=x.dtype, device=x.device), was_numpy)
    kk = min(int(n_neighbors), n - 1)
    x_sq = (x * x).sum(1)
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    step = _block_rows(n, x.element_size(), max_work_bytes)
    for s in range(0, n, step):
        d = _sq_dists(x[s : s + step], x, x_sq[s : s + step], x_sq)
        rows = torch.arange(d.shape[0], device=x.device)
        d[rows, rows + s] = 0.0  # exactly, not |x|² + |x|² - 2|x|² rounding
        d.sqrt_()
        # The K+1 smallest include the row itself (0): their sum is that of its K nearest others.
        near = torch.topk(d, kk + 1, dim=1, largest=False).values.sum(1)
        out[s : s + step] = 1.0 / (near / kk + 1e-12)
    return to_kind(out, was_numpy)


def typiclust(features_nd, k: int, *, labelled_ld=None, n_neighbors: int = 20, min_cluster_size: int = 5,
              cluster_labels=None, seed: SeedLike = None, max_work_bytes: int | None = None):
    """TypiClust (TPC-RP): the most typical sample of each of the k largest uncovered clusters.

    The pool and the labelled set together are clustered into ``L + k`` clusters (k-means,
    scikit-learn's ``KMeans`` seeded from ``seed``, unless ``cluster_labels`` are given). The clusters
    holding a labelled sample are covered; of the others, those with at least
    ``min_cluster_size`` pool samples are taken largest first (ties → lower cluster label), and
    from each the sample with the highest :func:`typicality` within its cluster. Should fewer
    such clusters exist than k, the remaining picks continue the same way over all clusters by
    their count of samples not yet picked.

    Parameters
    ----------
    features_nd : array or tensor ``[N, D]``, the pool's embeddings (any embedding: a
        self-supervised or pretrained one at round 0, when there is no trained model)
    k : int, ``0 <= k <= N``
    labelled_ld : array or tensor ``[L, D]`` or None
    n_neighbors : int, K of the typicality (the paper's 20)
    min_cluster_size : int, the paper's 5 (1 keeps every cluster, as scikit-activeml does)
    cluster_labels : int array ``[N + L]`` or None: a clustering of the pool rows then the
        labelled rows, instead of k-means.
    seed : int, numpy Generator or None: k-means' initialisation.

    Returns
    -------
    indices : int64 ``[k]`` in acquisition order, same kind as ``features_nd``.
    """
    x, was_numpy = _features(features_nd, "features_nd")
    lab = _labelled(labelled_ld, x)
    n, n_lab = x.shape[0], lab.shape[0]
    k = check_k(k, n)
    if k == 0:
        return _indices([], was_numpy, x.device)
    if cluster_labels is None:
        from sklearn.cluster import KMeans

        both = torch.cat([x, lab]).double().cpu().numpy()
        seed_int = int(check_random_state(seed).integers(2**31))
        cluster_labels = KMeans(n_clusters=min(n_lab + k, n + n_lab), n_init=1, random_state=seed_int).fit_predict(both)
    labels = np.asarray(cluster_labels, dtype=np.int64)
    if labels.shape != (n + n_lab,):
        raise ValueError(f"cluster_labels must be [N + L] = [{n + n_lab}], got shape {labels.shape}")
    pool_labels = labels[:n]
    n_clusters = int(labels.max()) + 1
    members = [np.flatnonzero(pool_labels == c) for c in range(n_clusters)]
    covered = set(labels[n:].tolist())
    first = [c for c in range(n_clusters) if c not in covered and len(members[c]) >= min_cluster_size]
    picked = np.zeros(n, dtype=bool)
    typ_cache: dict[int, np.ndarray] = {}
    picks: list[int] = []

    def take(c: int) -> None:
        if c not in typ_cache:
            typ_cache[c] = np.asarray(typicality(x[torch.as_tensor(members[c], device=x.device)],
                                                 n_neighbors=n_neighbors, max_work_bytes=max_work_bytes)
                                      .double().cpu())
        t = np.where(picked[members[c]], -np.inf, typ_cache[c])
        j = int(members[c][int(np.argmax(t))])
        picks.append(j)
        picked[j] = True

    for c in sorted(first, key=lambda c: (-len(members[c]), c))[:k]:
        take(c)
    while len(picks) < k:  # fewer eligible clusters than k: sweep all clusters by what is left
        left = [(int((~picked[m]).sum()), c) for c, m in enumerate(members)]
        for count, c in sorted(left, key=lambda t: (-t[0], t[1])):
            if count == 0 or len(picks) == k:
                break
            take(c)
    return _indices(picks, was_numpy, x.device)


# --- ProbCover ----------------------------------------------------------------------------------


def _ball_graph(x: torch.Tensor, delta: float, max_work_bytes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr [N+1], neighbours [E])`` of ``|x_i - x_j| <= delta`` (self included)."""
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    step = _block_rows(n, x.element_size(), max_work_bytes)
    counts, cols = [], []
    for s in range(0, n, step):
        within = _sq_dists(x[s : s + step], x, x_sq[s : s + step], x_sq) <= delta * delta
        rows = torch.arange(within.shape[0], device=x.device)
        within[rows, rows + s] = True
        counts.append(within.sum(1).cpu().numpy())
        cols.append(torch.nonzero(within)[:, 1].cpu().numpy())
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return indptr, np.concatenate(cols).astype(np.int64)


def probcover(features_nd, k: int, *, delta: float, labelled_ld=None, seed: SeedLike = None,
              max_work_bytes: int | None = None):
    """ProbCover: greedy maximum coverage of δ-balls (Yehuda et al. 2022, Algorithm 1).

    Each sample covers the pool samples within distance ``delta`` (itself included); the labelled
    samples' balls are covered from the start. Each pick is the sample whose ball holds the most
    uncovered samples (ties → lower index); once everything is covered, the remaining picks are
    uniform over the samples not yet picked (seeded), as the paper's "random when fully covered".

    The graph is held in CSR form: memory O(N + E), E = the number of pairs within ``delta``
    (the paper picks δ so that balls are mostly class-pure: E stays a small multiple of N).

    Parameters
    ----------
    features_nd : array or tensor ``[N, D]``
    k : int, ``0 <= k <= N``
    delta : float > 0, the ball radius (Euclidean)
    labelled_ld : array or tensor ``[L, D]`` or None
    seed : int, numpy Generator or None
    max_work_bytes : int, optional: the bound of one block of distances.

    Returns
    -------
    indices : int64 ``[k]`` in acquisition order, same kind as ``features_nd``.
    """
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not delta > 0:
        raise ValueError(f"delta must be a number > 0, got {delta!r}")
    x, was_numpy = _features(features_nd, "features_nd")
    lab = _labelled(labelled_ld, x)
    n = x.shape[0]
    k = check_k(k, n)
    indptr, nbrs = _ball_graph(x, float(delta), max_work_bytes)
    covered = (_min_sq_dist(x, lab, max_work_bytes) <= float(delta) ** 2).cpu().numpy()
    # degree[i] = uncovered samples in ball(i); the graph is symmetric, so covering j lowers the
    # degree of every i in ball(j).
    owner = np.repeat(np.arange(n), np.diff(indptr))
    degree = np.bincount(owner, weights=~covered[nbrs], minlength=n).astype(np.int64)
    picked = np.zeros(n, dtype=bool)
    rng = check_random_state(seed)
    picks: list[int] = []
    for _ in range(k):
        score = np.where(picked, -1, degree)
        j = int(np.argmax(score))
        if score[j] <= 0:
            j = int(rng.choice(np.flatnonzero(~picked)))
        picks.append(j)
        picked[j] = True
        ball = nbrs[indptr[j] : indptr[j + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        if len(new):
            hit = np.concatenate([nbrs[indptr[m] : indptr[m + 1]] for m in new.tolist()])
            degree -= np.bincount(hit, minlength=n)
    return _indices(picks, was_numpy, x.device)


def probcover_delta(features_nd, n_clusters: int, *, alpha: float = 0.95, cluster_labels=None,
                    seed: SeedLike = None, max_work_bytes: int | None = None) -> float:
    """ProbCover's automatic ball radius: the largest δ whose balls stay ``alpha``-pure.

    Yehuda et al. 2022 (section 4.2): cluster the embedding with k-means into ``n_clusters``
    clusters (the number of classes) and use the clusters as pseudo-labels; the ball of x is
    *pure* when every sample within δ of x is in x's cluster, and the *purity* of δ is the fraction
    of pure balls. Purity falls as δ grows; the paper takes the largest δ with purity ≥ α = 0.95.

    Exactly, with no grid: x's ball is pure iff ``δ < r_x``, ``r_x`` = the distance from x to the
    nearest sample of another cluster, so purity(δ) = #{x: r_x > δ} / N and the answer is just below
    the ``(N - ceil(α N) + 1)``-th smallest ``r_x`` (returned times ``1 - 1e-6``, so that the
    balls of :func:`probcover`, ``|x - y| <= δ``, keep the purity). Memory: the distances in blocks
    of ``max_work_bytes``; time O(N² D), like the ball graph itself.

    Parameters
    ----------
    features_nd : array or tensor ``[N, D]``
    n_clusters : int >= 2, the clusters of the pseudo-labels (the number of classes)
    alpha : float in (0, 1], the purity to keep (the paper's 0.95)
    cluster_labels : int array ``[N]`` or None: pseudo-labels to use instead of k-means.
    seed : int, numpy Generator or None: k-means' initialisation.
    max_work_bytes : int, optional: the bound of one block of distances.

    Returns
    -------
    delta : float > 0

    Raises
    ------
    ValueError
        Fewer than 2 non-empty clusters, or no δ > 0 is α-pure (samples of different clusters at
        the same point).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha <= 1:
        raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
    x, _ = _features(features_nd, "features_nd")
    n = x.shape[0]
    if cluster_labels is None:
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or n_clusters < 2:
            raise ValueError(f"n_clusters must be an int >= 2, got {n_clusters!r}")
        from sklearn.cluster import KMeans

        seed_int = int(check_random_state(seed).integers(2**31))
        cluster_labels = KMeans(n_clusters=min(int(n_clusters), n), n_init=1,
                                random_state=seed_int).fit_predict(x.double().cpu().numpy())
    labels = torch.as_tensor(np.asarray(cluster_labels, dtype=np.int64), device=x.device)
    if labels.shape != (n,):
        raise ValueError(f"cluster_labels must be [N] = [{n}], got shape {tuple(labels.shape)}")
    if len(torch.unique(labels)) < 2:
        raise ValueError("probcover_delta needs at least 2 non-empty clusters")
    x_sq = (x * x).sum(1)
    step = _block_rows(n, x.element_size(), max_work_bytes)
    r_sq = torch.empty(n, dtype=x.dtype, device=x.device)
    for s in range(0, n, step):
        block = _sq_dists(x[s : s + step], x, x_sq[s : s + step], x_sq)
        block[labels[s : s + step, None] == labels[None, :]] = float("inf")
        r_sq[s : s + step] = block.amin(1)
    m = int(np.ceil(alpha * n - 1e-9))  # balls that must stay pure
    bound = float(torch.sort(r_sq).values[n - m].sqrt())
    if not bound > 0:
        raise ValueError(f"no delta > 0 keeps {alpha:.0%} of the balls pure: samples of different clusters coincide")
    return bound * (1 - 1e-6)


# --- class balance ------------------------------------------------------------------------------


def balanced_quotas(available_c, k: int, *, labelled_counts_c=None) -> np.ndarray:
    """How many of k picks go to each class so that the labelled counts get as even as possible.

    Water-filling: each of the k picks goes to the class with the fewest labels so far (labelled +
    already assigned; ties → lower class) among those that still have an available sample.

    Parameters
    ----------
    available_c : int array ``[C]``, pool samples predicted as each class
    k : int, ``0 <= k <= sum(available_c)``
    labelled_counts_c : int array ``[C]`` or None (zeros): labels each class already has

    Returns
    -------
    quotas : int64 ``[C]``, ``quotas <= available_c``, summing to k.
    """
    avail = np.asarray(available_c, dtype=np.int64)
    counts = np.zeros_like(avail) if labelled_counts_c is None else np.asarray(labelled_counts_c, dtype=np.int64)
    if avail.ndim != 1 or counts.shape != avail.shape:
        raise ValueError(f"available_c and labelled_counts_c must both be [C], got {avail.shape}, {counts.shape}")
    k = check_k(k, int(avail.sum()))
    quotas = np.zeros_like(avail)
    heap = [(int(counts[c]), c) for c in range(len(avail)) if avail[c] > 0]
    heapq.heapify(heap)
    for _ in range(k):
        count, c = heapq.heappop(heap)
        quotas[c] += 1
        if quotas[c] < avail[c]:
            heapq.heappush(heap, (count + 1, c))
    return quotas


def class_balanced(scores_n, predicted_n, k: int, *, n_classes: int | None = None, labelled_counts_c=None):
    """The best-scored samples of each predicted class, with :func:`balanced_quotas` per class.

    Like small-text's ``ClassBalancer``: the batch is spread over the classes the model predicts,
    favouring those with the fewest labels, and within a class the base strategy's scores decide.

    Parameters
    ----------
    scores_n : array or tensor ``[N]`` (higher = more worth labelling; no NaN)
    predicted_n : int array or tensor ``[N]``, the predicted class of each sample
    k : int, ``0 <= k <= N``
    n_classes : int, optional (default: max predicted + 1, or len(labelled_counts_c))
    labelled_counts_c : int array ``[C]`` or None

    Returns
    -------
    indices : int64 ``[k]``, by score (best first, ties → lower index), same kind as ``scores_n``.
    """
    s, was_numpy = to_tensor(scores_n)
    device = s.device
    s = s.double().cpu().numpy()
    pred = np.asarray(predicted_n.cpu() if isinstance(predicted_n, torch.Tensor) else predicted_n, dtype=np.int64)
    if s.ndim != 1 or pred.shape != s.shape:
        raise ValueError(f"scores_n and predicted_n must both be [N], got {s.shape}, {pred.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contains NaN")
    if len(pred) and pred.min() < 0:
        raise ValueError("predicted classes must be >= 0")
    if n_classes is None:
        n_classes = len(labelled_counts_c) if labelled_counts_c is not None else int(pred.max(initial=-1)) + 1
    if len(pred) and pred.max() >= n_classes:
        raise ValueError(f"predicted class {int(pred.max())} >= n_classes={n_classes}")
    k = check_k(k, len(s))
    quotas = balanced_quotas(np.bincount(pred, minlength=n_classes), k, labelled_counts_c=labelled_counts_c)
    order = np.lexsort((np.arange(len(s)), -s))  # best first, ties → lower index
    rank_in_class = np.empty(len(s), dtype=np.int64)
    ordered = pred[order]
    for c in range(n_classes):
        where = ordered == c
        rank_in_class[order[where]] = np.arange(int(where.sum()))
    chosen = order[rank_in_class[order] < quotas[pred[order]]]
    return to_kind(torch.as_tensor(chosen, dtype=torch.int64, device=device), was_numpy)
