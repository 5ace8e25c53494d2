"""Group ``heuristics_1m``: BALD and Entropy on a 1M x 10 x 20 float32 array (``--quick``: 100k).

- ours, numpy in: ``al_lib.heuristics.bald(array)`` (numpy in -> numpy out, computed in float64);
- ours, torch in: the same on ``torch.from_numpy(array)`` (zero-copy; float32; moved to the GPU
  first, outside the timing, when ``--device cuda``);
- BaaL: ``baal.active.heuristics.BALD().get_uncertainties(array)`` / ``Entropy()`` (numpy; its
  ``to_prob`` check of the input is part of the call).

Time is the median of repeats; peak memory is measured in a separate call.
"""

from __future__ import annotations

import torch

from benchmarks._util import Row, median_time, memory_of, peak_memory
from benchmarks.synthetic import dirichlet_mc_probs


def run(cfg) -> tuple[list[Row], dict]:
    import al_lib.heuristics as H
    from baal.active.heuristics import BALD, Entropy

    n = 100_000 if cfg.quick else 1_000_000
    probs = dirichlet_mc_probs(n, 10, 20, seed=0)
    tensor = torch.from_numpy(probs).to(cfg.device)
    rows, details = [], {"n": n, "c": 10, "t": 20, "dtype": "float32",
                         "array_mib": probs.nbytes / 2**20}
    for name, ours_fn, baal_cls in [("bald", H.bald, BALD), ("entropy", H.entropy, Entropy)]:
        heuristic = baal_cls()
        contenders = {
            "ours_numpy": (lambda f=ours_fn: f(probs), cfg.cpu),
            "ours_torch": (lambda f=ours_fn: f(tensor), cfg.device),
            "baal": (lambda h=heuristic: h.get_uncertainties(probs), cfg.cpu),
        }
        res = {}
        for label, (fn, device) in contenders.items():
            t, times, _ = median_time(fn, device, cfg.repeats, warmup=fn)
            mem = peak_memory(fn, device)
            res[label] = {"seconds_median": t, "seconds_all": times, "peak_memory": mem}
            cfg.log(f"  heuristics_1m/{name}/{label}: {t:.3f} s, peak {memory_of(mem, device)} MiB")
        details[name] = res
        torch_in = f"torch in ({cfg.device.type})"
        for label, pretty in [("ours_numpy", "numpy in"), ("ours_torch", torch_in)]:
            device = cfg.cpu if label == "ours_numpy" else cfg.device
            rows.append(Row("heuristics_1m", f"{name} N={n:,} time, {pretty}", "s",
                            res[label]["seconds_median"], res["baal"]["seconds_median"]))
            rows.append(Row("heuristics_1m", f"{name} N={n:,} peak memory, {pretty}", "MiB",
                            memory_of(res[label]["peak_memory"], device),
                            memory_of(res["baal"]["peak_memory"], cfg.cpu), kind="memory",
                            note="ours on GPU: CUDA peak" if device.type == "cuda" else ""))
    return rows, details
