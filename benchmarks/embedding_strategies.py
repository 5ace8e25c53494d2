"""Group ``embedding_strategies``: BADGE, CoreSet, TypiClust, ProbCover vs scikit-activeml 1.0.1, EPIG vs BaaL.

The same features on both sides: a 100k x 64 float32 pool (``--quick``: 20k) of 50 Gaussian
clusters, C = 10 class probabilities (Dirichlet), 100 labelled samples, k = 100 picks.

- ours: the pure functions of :mod:`al_lib.heuristics.diversity` on torch float32 tensors (what
  the strategies of :mod:`al_lib.embedding_strategies` call on their candidates);
- scikit-activeml: ``Badge``, ``CoreSet``, ``TypiClust``, ``ProbCover`` ``.query`` on the float64
  numpy arrays (its own validation included); Badge gets the probabilities and embeddings from a
  classifier that returns them.
- ProbCover at 10k for both (``--quick``: 5k): scikit-activeml builds the dense N x N distance
  matrix (80 GB at 100k); ours a CSR δ-ball graph in blocks.
- EPIG vs BaaL's ``EPIG().compute_score`` at 10k pool x 200 targets (T = 20): BaaL's joint is
  ``[N, C, M*·C]`` at once, ours in blocks of 64 MiB.

TypiClust's time is mostly k-means (scikit-learn's KMeans on both sides, n_clusters = L + k).
Time: the median of ``cfg.repeats`` for ours, one run for the reference; peak memory in a separate call.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks._util import Row, median_time, memory_of, peak_memory


def _data(n: int, d: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d)).astype(np.float32) * 3
    x = centres[rng.integers(50, size=n)] + rng.normal(size=(n, d)).astype(np.float32)
    probs = rng.dirichlet(np.full(c, 0.5), size=n).astype(np.float32)
    return x.astype(np.float32), probs


def _measure(fn, cfg, repeats):
    t, times, _ = median_time(fn, cfg.cpu, repeats)
    return {"seconds_median": t, "seconds_all": times, "peak_memory": peak_memory(fn, cfg.cpu)}


def run(cfg) -> tuple[list[Row], dict]:
    import warnings

    from skactiveml.pool import Badge, CoreSet, ProbCover, TypiClust

    from al_lib.heuristics.diversity import badge, kcenter_greedy, probcover, typiclust
    from al_lib.heuristics.epig import epig
    from benchmarks.skactiveml_adapter import GivenClassifier

    warnings.filterwarnings("ignore", message="The maximum purity")

    n = 20_000 if cfg.quick else 100_000
    n_cover = 5_000 if cfg.quick else 10_000
    d, c, n_lab, k = 64, 10, 100, 100
    x, probs = _data(n + n_lab, d, c)
    pool, lab = x[:n], x[n:]
    pool_t, lab_t, probs_t = torch.from_numpy(pool), torch.from_numpy(lab), torch.from_numpy(probs[:n])
    X64 = x.astype(np.float64)
    y = np.concatenate([np.full(n, np.nan), np.zeros(n_lab)])
    clf = GivenClassifier(probs=probs[:n].astype(np.float64), classes=np.arange(c)).fit(X64[:c], np.arange(c))
    # ProbCover on a subsample: δ of about a ball's worth of neighbours in these clusters
    xc, labc = pool[:n_cover], lab
    Xc = np.concatenate([xc, labc]).astype(np.float64)
    yc = np.concatenate([np.full(n_cover, np.nan), np.zeros(n_lab)])
    delta = 4.0
    cases = {
        "badge": (lambda: badge(probs_t, pool_t, k, seed=0),
                  lambda: Badge(clf_embedding_flag_name="return_embeddings", random_state=0).query(
                      X64[:n], np.full(n, np.nan), clf, fit_clf=False, batch_size=k), n),
        "coreset": (lambda: kcenter_greedy(pool_t, k, labelled_ld=lab_t),
                    lambda: CoreSet(random_state=0).query(X64, y, batch_size=k), n),
        "typiclust": (lambda: typiclust(pool_t, k, labelled_ld=lab_t, seed=0),
                      lambda: TypiClust(random_state=0, k=20).query(X64, y, batch_size=k), n),
        "probcover": (lambda: probcover(torch.from_numpy(xc), k, delta=delta, labelled_ld=torch.from_numpy(labc)),
                      lambda: ProbCover(deltas=[delta], random_state=0).query(Xc, yc, batch_size=k), n_cover),
    }
    rows, details = [], {"n": n, "n_probcover": n_cover, "d": d, "c": c, "labelled": n_lab, "k": k,
                         "probcover_delta": delta}
    for name, (ours_fn, ref_fn, size) in cases.items():
        ours = _measure(ours_fn, cfg, cfg.repeats)
        ref = _measure(ref_fn, cfg, 1)
        details[name] = {"ours": ours, "skactiveml": ref}
        cfg.log(f"  embedding_strategies/{name}: ours {ours['seconds_median']:.2f} s, "
                f"scikit-activeml {ref['seconds_median']:.2f} s")
        rows.append(Row("embedding_strategies", f"{name} N={size:,} k={k} time", "s", ours["seconds_median"],
                        ref["seconds_median"], baal_label="scikit-activeml"))
        rows.append(Row("embedding_strategies", f"{name} N={size:,} k={k} peak memory", "MiB",
                        memory_of(ours["peak_memory"], cfg.cpu), memory_of(ref["peak_memory"], cfg.cpu),
                        kind="memory", baal_label="scikit-activeml"))
    from baal.active.heuristics import EPIG

    rng = np.random.default_rng(1)
    n_epig, m_epig, t = (2_000, 100, 20) if cfg.quick else (10_000, 200, 20)
    p = rng.dirichlet(np.full(c, 0.5), size=(n_epig, t)).transpose(0, 2, 1).astype(np.float32)
    q = rng.dirichlet(np.full(c, 0.5), size=(m_epig, t)).transpose(0, 2, 1).astype(np.float32)
    ours = _measure(lambda: epig(torch.from_numpy(p), torch.from_numpy(q)), cfg, cfg.repeats)
    ref = _measure(lambda: EPIG().compute_score(p, q), cfg, 1)
    details["epig"] = {"ours": ours, "baal": ref, "n": n_epig, "targets": m_epig, "t": t}
    rows.append(Row("embedding_strategies", f"epig N={n_epig:,} M*={m_epig} time", "s", ours["seconds_median"],
                    ref["seconds_median"]))
    rows.append(Row("embedding_strategies", f"epig N={n_epig:,} M*={m_epig} peak memory", "MiB",
                    memory_of(ours["peak_memory"], cfg.cpu), memory_of(ref["peak_memory"], cfg.cpu), kind="memory"))
    return rows, details
