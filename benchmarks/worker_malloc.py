"""A Gal-CNN fit (5 epochs of 1 024 samples, 200 MNIST labels, 1 torch thread) in a fresh process
under Dask's worker malloc setting and under flows.dask_runner.WORKER_MALLOC: wall seconds, system
seconds and minor page faults of each, and the ratio. Not in `run.py`: it measures the
environment a worker starts with, so each arm is its own process.

    .venv/bin/python benchmarks/worker_malloc.py
"""

import json
import os
import subprocess
import sys

FIT = """
import json, resource, time, torch
torch.set_num_threads(1)
from torch.utils.data import Subset
from al_lib.loop import _mc_model
from al_lib.study import load_source
from al_lib.training import ACTIVE_LEARNING_TRAINING, fit
src = load_source("mnist")
model = _mc_model(src.model_factory(0), consistent=False)
t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
fit(model, Subset(src.pool, range(200)), seed=0, progress=False, **{**ACTIVE_LEARNING_TRAINING, "max_epochs": 5})
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - t, "sys": r1.ru_stime - r0.ru_stime,
                  "faults": r1.ru_minflt - r0.ru_minflt}))
"""


def main() -> None:
    from flows.dask_runner import WORKER_MALLOC

    arms = {"Dask default (MALLOC_TRIM_THRESHOLD_=65536)": {"MALLOC_TRIM_THRESHOLD_": "65536"},
            "WORKER_MALLOC": WORKER_MALLOC}
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = {}
    for name, env in arms.items():
        done = subprocess.run([sys.executable, "-c", FIT], env={**base, **env}, capture_output=True, text=True,
                              check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
        r = out[name]
        print(f"{name}: {r['seconds']:.1f} s, {r['sys']:.1f} s in the kernel, {r['faults']:,} page faults")
    a, b = out.values()
    print(f"ratio (Dask default / WORKER_MALLOC): {a['seconds'] / b['seconds']:.2f}x time, "
          f"{a['faults'] / max(b['faults'], 1):.0f}x page faults")


if __name__ == "__main__":
    main()
