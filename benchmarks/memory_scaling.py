"""Group ``memory_scaling``: peak memory of scoring a pool of N samples, N = 10k, 100k, 1M.

A tiny MC-dropout MLP (16 -> 64 -> dropout -> 10) on synthetic 16-dim inputs, T=20, BALD, k=100:

- ours: ``al_lib.inference.score_pool`` streams: each batch's ``[B, C, T]`` probabilities are scored
  and folded into a running top-k, so memory should not grow with N;
- BaaL: ``ModelWrapper.predict_on_dataset`` stacks the whole ``[N, C, T]`` output, then
  ``BALD().get_uncertainties`` ranks it (``replicate_in_memory=True``, BaaL's default).

The pool tensor itself (N x 16 float32) is allocated before either is measured. One call each
(memory is the point; its wall time, with tracemalloc on, is recorded in the JSON only).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks._util import Row, memory_of, peak_memory, time_call

ITERATIONS = 20
K = 100
BATCH_SIZE = 1024
FEATURES, CLASSES = 16, 10


def _mlp(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(FEATURES, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, CLASSES)
        )


def run(cfg) -> tuple[list[Row], dict]:
    from al_lib.bayesian import patch_module as our_patch
    from al_lib.inference import score_pool
    from baal.active.heuristics import BALD
    from baal.bayesian.dropout import patch_module as baal_patch
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    sizes = [2_000, 20_000, 100_000] if cfg.quick else [10_000, 100_000, 1_000_000]
    state = _mlp().state_dict()
    rows, details = [], {}
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        x = torch.randn(n, FEATURES, generator=gen)
        pool = TensorDataset(x, torch.zeros(n, dtype=torch.long))

        ours_model = our_patch(_mlp())
        ours_model.load_state_dict(state)

        def ours():
            return score_pool(ours_model, pool, "bald", K, iterations=ITERATIONS,
                              batch_size=BATCH_SIZE, device=cfg.device, progress=False, seed=0)

        baal_model = baal_patch(_mlp())
        baal_model.load_state_dict(state)
        baal_model.to(cfg.device)
        wrapper = ModelWrapper(baal_model, TrainingArgs(batch_size=BATCH_SIZE, workers=0,
                                                        use_cuda=cfg.device.type == "cuda"))

        def baal():
            logits = wrapper.predict_on_dataset(pool, iterations=ITERATIONS, verbose=False)
            return BALD()(logits)[:K]

        res = {}
        for label, fn in [("ours", ours), ("baal", baal)]:
            seconds, mem = time_call(lambda fn=fn: peak_memory(fn, cfg.device), cfg.device)
            res[label] = {"peak_memory": mem, "seconds_with_tracemalloc": seconds}
            peak = memory_of(mem, cfg.device)
            cfg.log(f"  memory_scaling/N={n}/{label}: peak {peak} MiB, {seconds:.2f} s")
        nct_mib = n * CLASSES * ITERATIONS * 4 / 2**20
        details[str(n)] = {"results": res, "n_c_t_float32_mib": nct_mib}
        rows.append(Row("memory_scaling", f"score N={n:,} peak memory", "MiB",
                        memory_of(res["ours"]["peak_memory"], cfg.device),
                        memory_of(res["baal"]["peak_memory"], cfg.device), kind="memory",
                        note=f"[N,C,T] float32 = {nct_mib:.0f} MiB"))
    first = memory_of(details[str(sizes[0])]["results"]["ours"]["peak_memory"], cfg.device)
    last = memory_of(details[str(sizes[-1])]["results"]["ours"]["peak_memory"], cfg.device)
    growth = last / max(first, 1.0)
    details["ours_growth"] = growth
    # "Flat in N": ours at the largest N within 2x of ours at the smallest (N grows 100x).
    rows.append(Row("memory_scaling", f"ours peak N={sizes[-1]:,} / N={sizes[0]:,}", "x",
                    growth, None, kind="at_most", target=2.0,
                    note="flat in N: within 2x while N grows 50-100x"))
    return rows, details
