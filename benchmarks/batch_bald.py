"""Group ``batch_bald``: BatchBALD selection time and the selected batch's joint MI, ours vs BaaL.

N=2000, C=10, T=20, k=50 (``--quick``: N=500, k=10) on seeded synthetic MC probabilities with
redundancy across the pool (:func:`benchmarks.synthetic.latent_mc_probs`).

- ours: ``al_lib.heuristics.batch_bald(probs, k, seed=0, device=--device)`` (defaults), median of
  repeats (numpy in, numpy out);
- BaaL: ``baal.active.heuristics.BatchBALD(num_samples=k - 1).get_uncertainties(probs)`` (BaaL
  selects ``num_samples + 1``: BALD's best, then ``num_samples`` greedy steps; the selected ones
  are the non-zero scores), with the global torch RNG seeded (BaaL takes no seed). BaaL runs
  ``--baal-repeats`` times (default 1: minutes per run). BaaL stops early when gains stay below
  0.1 nats for 10 steps; how many it selected is recorded.

Both batches' joint mutual information ``I(y_batch; w)`` is estimated with the same estimator,
seed and number of draws (``al_lib.heuristics.estimate_joint_mutual_information``: unbiased,
``log T - E H(w | y)``), with standard errors; top-k BALD and a random batch are references.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks._util import Row, median_time, time_call
from benchmarks.synthetic import latent_mc_probs

MI_SEED = 12345


def _baal_select(probs: np.ndarray, k: int) -> np.ndarray:
    from baal.active.heuristics import BatchBALD

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        scores = BatchBALD(num_samples=k - 1).get_uncertainties(probs)
    selected = np.flatnonzero(scores)
    # BaaL's scores are the step gains (BALD for the first): order by score as BaaL ranks them.
    return selected[np.argsort(-scores[selected], kind="stable")]


def run(cfg) -> tuple[list[Row], dict]:
    import al_lib.heuristics as H

    n, k = (500, 10) if cfg.quick else (2000, 50)
    mi_draws = 50_000 if cfg.quick else 200_000
    probs = latent_mc_probs(n, 10, 20, seed=0)

    def select():
        return H.batch_bald(probs, k, seed=0, device=cfg.device)

    t_ours, times_ours, ours = median_time(select, cfg.device, cfg.repeats, warmup=select)
    cfg.log(f"  batch_bald/ours: {t_ours:.3f} s")
    times_baal, theirs = [], None
    for _ in range(max(1, cfg.baal_repeats)):
        t, theirs = time_call(lambda: _baal_select(probs, k), cfg.cpu)
        times_baal.append(t)
        cfg.log(f"  batch_bald/baal: {t:.1f} s ({len(theirs)} selected)")
    t_baal = float(np.median(times_baal))

    def mi(indices):
        est, stderr = H.estimate_joint_mutual_information(
            probs, indices, num_samples=mi_draws, seed=MI_SEED, return_stderr=True
        )
        return {"mi": est, "stderr": stderr, "size": len(indices)}

    refs = {
        "ours": mi(ours),
        "baal": mi(theirs),
        "top_k_bald": mi(H.top_k(H.bald(probs), k)),
        "random": mi(np.random.default_rng(0).choice(n, k, replace=False)),
    }
    details = {
        "n": n, "c": 10, "t": 20, "k": k, "mi_draws": mi_draws, "mi_seed": MI_SEED,
        "log_t": float(np.log(20)),
        "ours_seconds": times_ours, "baal_seconds": times_baal,
        "ours_selection": np.asarray(ours).tolist(), "baal_selection": np.asarray(theirs).tolist(),
        "baal_selected": len(theirs),
        "joint_mi": refs,
    }
    note = "" if len(theirs) == k else f"BaaL stopped early: {len(theirs)} of {k}"
    rows = [
        Row("batch_bald", f"N={n} k={k} selection time", "s", t_ours, t_baal, kind="speedup",
            target=100.0, note=note),
        Row("batch_bald", f"N={n} k={k} joint MI", "nats", refs["ours"]["mi"], refs["baal"]["mi"],
            kind="difference", target=0.0,
            note=(f"stderr {refs['ours']['stderr']:.4f}/{refs['baal']['stderr']:.4f}; "
                  f"top-k BALD {refs['top_k_bald']['mi']:.4f}, random {refs['random']['mi']:.4f}, "
                  f"log T {np.log(20):.4f}")),
    ]
    return rows, details
