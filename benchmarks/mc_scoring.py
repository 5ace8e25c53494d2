"""Group ``mc_scoring``: MC scoring throughput and peak memory, ours vs BaaL, T=20, same weights.

For each model (the Gal et al. MNIST CNN and the VGG-style net), one pool of random inputs and one
state dict shared by every contender:

- ours: ``al_lib.inference.score_pool(model, pool, "bald", k=100, iterations=20)`` on the model
  patched by ``al_lib.bayesian.patch_module`` (prefix-cached MC inference, streaming top-k);
- BaaL default: ``baal.bayesian.dropout.patch_module`` + ``ModelWrapper(model,
  TrainingArgs(replicate_in_memory=True))`` + ``predict_on_dataset(pool, iterations=20)``, then
  ``BALD()`` ranks it (top 100);
- BaaL best: the same with ``MCCachingModule`` (caches Linear/Conv2d outputs whose input did not
  change) and ``replicate_in_memory=False`` (a loop of T forward passes): "MCCachingModule + loop";
- floor: one deterministic forward pass of the unpatched model over the pool (eval mode, same
  loader and batch size, softmax), the cost of a single prediction per sample.

Every contender uses the same batch size, ``num_workers=0`` and the same device.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks._util import Row, median_time, memory_of, peak_memory

ITERATIONS = 20
K = 100
BATCH_SIZE = 128

# name, build_model args, pool size (full run), pool size (--quick)
MODELS = [
    ("gal_cnn", ("gal_cnn", (1, 28, 28), 10), 2048, 256),
    ("vgg", ("vgg", (3, 32, 32), 10), 192, 32),
]


def _pool(n: int, shape, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def _ours(model: nn.Module, pool, device):
    from al_lib.bayesian import patch_module
    from al_lib.inference import score_pool

    patched = patch_module(model)

    def run():
        return score_pool(
            patched, pool, "bald", min(K, len(pool)), iterations=ITERATIONS, batch_size=BATCH_SIZE,
            device=device, progress=False, seed=0,
        )

    return run


def _baal(model: nn.Module, pool, device, *, caching: bool):
    from baal.active.heuristics import BALD
    from baal.bayesian.caching_utils import MCCachingModule
    from baal.bayesian.dropout import patch_module
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    model = patch_module(model)
    if caching:
        model = MCCachingModule(model)
    model.to(device)
    args = TrainingArgs(
        batch_size=BATCH_SIZE,
        use_cuda=device.type == "cuda",
        workers=0,
        replicate_in_memory=not caching,
    )
    wrapper = ModelWrapper(model, args)
    heuristic = BALD()

    def run():
        logits = wrapper.predict_on_dataset(pool, iterations=ITERATIONS, verbose=False)
        return heuristic(logits)[:K]  # BaaL softmaxes logits itself (to_prob)

    return run


def _floor(model: nn.Module, pool, device):
    model = model.to(device).eval()
    loader = DataLoader(pool, batch_size=BATCH_SIZE, shuffle=False, num_workers=0)

    def run():
        out = []
        with torch.inference_mode():
            for x, _ in loader:
                out.append(torch.softmax(model(x.to(device)), dim=1).cpu())
        return torch.cat(out)

    return run


def run(cfg) -> tuple[list[Row], dict]:
    from al_lib.models import build_model

    rows, details = [], {}
    for name, args, n_full, n_quick in MODELS:
        n = n_quick if cfg.quick else n_full
        reference = build_model(*args, seed=0)
        state = copy.deepcopy(reference.state_dict())
        pool = _pool(n, args[1])
        warm = torch.utils.data.Subset(pool, range(min(BATCH_SIZE, n)))

        def fresh():
            model = build_model(*args)
            model.load_state_dict(state)
            return model

        contenders = {
            "ours": lambda p: _ours(fresh(), p, cfg.device),
            "baal_default": lambda p: _baal(fresh(), p, cfg.device, caching=False),
            "baal_best": lambda p: _baal(fresh(), p, cfg.device, caching=True),
            "floor": lambda p: _floor(fresh(), p, cfg.device),
        }
        res = {}
        for label, make in contenders.items():
            fn = make(pool)
            t, times, _ = median_time(fn, cfg.device, cfg.repeats, warmup=make(warm))
            mem = peak_memory(fn, cfg.device)
            res[label] = {
                "seconds_median": t,
                "seconds_all": times,
                "samples_per_s": n / t,
                "peak_memory": mem,
            }
            cfg.log(f"  mc_scoring/{name}/{label}: {n / t:,.0f} samples/s, "
                    f"peak {memory_of(mem, cfg.device)} MiB")
        details[name] = {"pool_size": n, "iterations": ITERATIONS, "batch_size": BATCH_SIZE, "k": K,
                         "results": res}
        ours = res["ours"]["samples_per_s"]
        targets = {
            "gal_cnn": {"baal_default": 10.0, "baal_best": 3.0, "floor": None},
            "vgg": {"baal_default": 15.0, "baal_best": None, "floor": 1 / 1.5},
        }[name]
        for label, pretty in [("baal_default", "BaaL default"), ("baal_best", "BaaL best"),
                              ("floor", "1 det. pass")]:
            rows.append(Row(
                "mc_scoring", f"{name} N={n} throughput", "samples/s", ours,
                res[label]["samples_per_s"], kind="throughput", target=targets[label],
                baal_label=pretty,
            ))
        for label, pretty in [("baal_default", "BaaL default"), ("baal_best", "BaaL best")]:
            unit = "MiB"
            rows.append(Row(
                "mc_scoring", f"{name} N={n} peak memory", unit,
                memory_of(res["ours"]["peak_memory"], cfg.device),
                memory_of(res[label]["peak_memory"], cfg.device), kind="memory",
                baal_label=pretty,
            ))
    return rows, details
