"""al_lib.heuristics.diversity against scikit-activeml 1.0.1, the test-only reference.

Same inputs → the same picks, except where the algorithms differ by design:

- Ties: scikit-activeml breaks ties at random (``rand_argmax``); ours → the lower index. The
  inputs here are continuous (no ties) except ProbCover's integer coverage counts, where the test
  checks that each of ours is one of the maxima scikit-activeml chose among, state by state.
- BADGE draws D² samples with ``RandomState.choice``; ours with a numpy ``Generator``. Given a
  Generator on the same legacy-seeded MT19937 stream, the draws are the same numbers. Its D² is
  ``min(D², |g|²)``: the origin (a zero gradient, a certain prediction) counts as a centre, which
  Ash et al.'s algorithm (and ours) does not have. Where every embedding is nearer the others
  than the origin, the picks are identical; elsewhere only the first (the largest norm) is.
- CoreSet without labels: scikit-activeml's first centre is ``rand_argmax`` of all zeros; ours a
  seeded uniform draw. Tested: the rest of the greedy from a common first centre, and the same
  cover radius.
- TypiClust clusters with ``KMeans(n_clusters=L + k, random_state=...)``; we seed ours
  differently, so the test hands both the same clustering (``cluster_labels`` / a fixed
  ``cluster_algo``). scikit-activeml keeps clusters of any size (our ``min_cluster_size=1``; the
  paper's default, ours, is 5) and, once all clusters are used, picks by typicality 1 everywhere
  (random); ours sweeps the clusters again.
- ProbCover: scikit-activeml can choose δ itself (purity ≥ α of a KMeans clustering); ours takes
  δ as given: both get ``deltas=[δ]``.
"""

import numpy as np
import pytest

from al_lib.heuristics.diversity import badge, cover_radius, kcenter_greedy, probcover, typiclust
from heuristics.test_diversity import _blobs, _probs

skactiveml = pytest.importorskip("skactiveml")
from skactiveml.pool import Badge, CoreSet, ProbCover, TypiClust  # noqa: E402

from benchmarks.skactiveml_adapter import GivenClassifier  # noqa: E402


def _legacy_stream(seed, n_unlabelled):
    """A numpy Generator drawing what scikit-activeml's ``random_state_`` draws in a query.

    scikit-activeml reseeds per query: ``RandomState((RandomState(seed).randint(1, 2**31) *
    (n_unlabelled + 1)) % 2**31)``; a Generator on a legacy-seeded MT19937 gives the same doubles.
    """
    derived = (np.random.RandomState(seed).randint(1, 2**31) * (n_unlabelled + 1)) % 2**31
    bits = np.random.MT19937()
    bits._legacy_seeding(int(derived))
    return np.random.Generator(bits)


def _badge_ref(p, h, k, seed):
    clf = GivenClassifier(probs=p, classes=np.arange(p.shape[1])).fit(h[: p.shape[1]], np.arange(p.shape[1]))
    strategy = Badge(clf_embedding_flag_name="return_embeddings", random_state=seed)
    return list(strategy.query(h, np.full(len(h), np.nan), clf, fit_clf=False, batch_size=k))


@pytest.mark.parametrize("seed", [0, 1])
def test_badge_same_picks_where_the_origin_is_never_nearest(seed):
    """Embeddings closer to each other than to 0: there both D² are the same and so are the picks."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([60, 20, 10, 10], size=80)
    h = 10 + 0.3 * rng.normal(size=(80, 6))
    assert badge(p, h, 10, seed=_legacy_stream(seed, 80)).tolist() == _badge_ref(p, h, 10, seed)


def test_badge_first_pick_and_where_the_origin_differs():
    p, h = _probs(80, c=4, seed=0), _blobs(80, d=6, seed=0)
    ours, ref = badge(p, h, 10, seed=_legacy_stream(0, 80)).tolist(), _badge_ref(p, h, 10, 0)
    assert ours[0] == ref[0]  # the largest gradient norm
    assert ours != ref  # scikit-activeml's D² = min(D², |g|²): the origin is a centre too


def test_coreset_same_picks_with_labels():
    x, lab = _blobs(120, d=4, seed=2), _blobs(6, d=4, seed=3)
    X = np.concatenate([x, lab])
    y = np.concatenate([np.full(120, np.nan), np.zeros(6)])
    ref = CoreSet(random_state=0).query(X, y, batch_size=12)
    assert kcenter_greedy(x, 12, labelled_ld=lab).tolist() == list(ref)


def test_coreset_without_labels_same_greedy_and_radius():
    x = _blobs(100, d=3, seed=4)
    ref = list(CoreSet(random_state=0).query(x, np.full(100, np.nan), batch_size=8))
    ours = kcenter_greedy(x, 7, labelled_ld=x[ref[:1]]).tolist()
    assert ours == ref[1:]
    assert cover_radius(x, x[ref]) == cover_radius(x, x[[ref[0], *ours]])


class _Fixed:
    """A cluster_algo for scikit-activeml that returns a given clustering."""

    labels = None

    def __init__(self, n_clusters=None, random_state=None):
        self.n_clusters = n_clusters

    def fit_predict(self, X):
        return self.labels


def test_typiclust_same_picks_on_the_same_clustering():
    rng = np.random.default_rng(5)
    x, lab = _blobs(150, d=3, centres=6, seed=5), _blobs(3, d=3, centres=6, seed=6)
    k = 5
    clusters = rng.permutation(np.repeat(np.arange(8), [40, 30, 25, 20, 15, 10, 7, 6]))
    _Fixed.labels = clusters
    X = np.concatenate([x, lab])
    y = np.concatenate([np.full(150, np.nan), np.zeros(3)])
    ref = TypiClust(random_state=0, cluster_algo=_Fixed, k=7).query(X, y, batch_size=k)
    ours = typiclust(x, k, labelled_ld=lab, n_neighbors=7, min_cluster_size=1, cluster_labels=clusters)
    assert ours.tolist() == list(ref)


@pytest.mark.filterwarnings("ignore:The maximum purity")
def test_probcover_same_greedy_coverage():
    x, lab = _blobs(120, d=2, seed=7, spread=1.0), _blobs(2, d=2, seed=8)
    delta, k = 0.8, 10
    X = np.concatenate([x, lab])
    y = np.concatenate([np.full(120, np.nan), np.zeros(2)])
    ref, utilities = ProbCover(deltas=[delta], random_state=0).query(X, y, batch_size=k, return_utilities=True)
    for i in range(k):  # in every state scikit-activeml went through, our pick is one of the best
        ours = int(probcover(x, 1, delta=delta, labelled_ld=np.concatenate([lab, x[ref[:i]]]))[0])
        assert utilities[i][ours] == np.nanmax(utilities[i])
    if len(set(ref)) == k and all(np.sum(u == np.nanmax(u)) == 1 for u in utilities):
        assert probcover(x, k, delta=delta, labelled_ld=lab).tolist() == list(ref)
