"""Group ``round_overhead``: what a production round costs besides training and scoring, vs pool size.

For pools of 3k, 30k and 100k generated PNG files (28x28 greyscale noise, seeded, in 10 class
folders; ``--quick``: 300 and 3k) it times ``al init`` (copy, manifest, git + DVC tracking of the
pool) and then two simulated rounds through the real Prefect flow on the ephemeral API:

- round 0 is the cold one (every image checked once, by content);
- round 1 is the steady state a production pool sees every round: the phases ingest, validate,
  train, score, query and record (commit + tag) are timed by the flow itself (``seconds``).

Training and scoring are held constant on purpose (1 epoch, 200 scored images, T=2): the
**overhead** is the round minus train and score, and the target is that it stays flat — at the
largest pool within 1.5x of the smallest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._util import Row

CLASSES = [str(d) for d in range(10)]
PARAMS = dict(query_size=10, mc_iterations=2, pool_subsample=200, initial_labels=20,
              training={"max_epochs": 1, "patience": None, "val_fraction": 0.0, "batch_size": 32})
OVERHEAD_TARGET = 1.5


def write_pool(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct 28x28 greyscale PNGs in class folders ``root/<digit>/<i>.png``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / CLASSES[i % len(CLASSES)]
        if i < len(CLASSES):
            folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:07d}.png")
    return root


def measure(n: int, scratch: Path, log) -> dict:
    """Init + two simulated rounds on an ``n``-image pool; the seconds of each phase."""
    from flows.round import al_round
    from tasks.create import create_workspace

    images = write_pool(scratch / f"images-{n}", n)
    start = time.perf_counter()
    ws = create_workspace(scratch / f"ws-{n}", images=images, labels="oracle", holdout=50, **PARAMS)
    init = time.perf_counter() - start
    log(f"  {n} images: al init {init:.1f} s")
    rounds = []
    for _ in range(2):
        start = time.perf_counter()
        result = al_round(str(ws.root), simulate=True)
        rounds.append({"total": time.perf_counter() - start, **result["seconds"]})
        log(f"  {n} images: round {result['round']} " +
            ", ".join(f"{k} {v:.1f}" for k, v in rounds[-1].items()))
    steady = rounds[1]
    overhead = steady["total"] - steady["train"] - steady["score"]
    shutil.rmtree(images)
    shutil.rmtree(ws.root)
    return {"n": n, "init": init, "round0": rounds[0], "round1": steady, "overhead": overhead}


def run(cfg) -> tuple[list[Row], dict]:
    from prefect.testing.utilities import prefect_test_harness

    sizes = [300, 3000] if cfg.quick else [3000, 30000, 100000]
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    for key, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
                       ("DVC_NO_ANALYTICS", "1")):
        os.environ.setdefault(key, value)
    measured = []
    with tempfile.TemporaryDirectory(prefix="al-round-overhead-") as tmp, \
            prefect_test_harness(server_startup_timeout=180):
        for n in sizes:
            measured.append(measure(n, Path(tmp), cfg.log))
    rows = []
    for m in measured:
        rows.append(Row("round_overhead", f"al init, {m['n']:,} images", "s", m["init"], None, kind="at_most"))
        rows.append(Row("round_overhead", f"round overhead (not train/score), {m['n']:,} images", "s",
                        m["overhead"], None, kind="at_most",
                        note=", ".join(f"{k} {v:.2f}s" for k, v in m["round1"].items())))
    first, last = measured[0], measured[-1]
    rows.append(Row("round_overhead", f"overhead {last['n']:,} / {first['n']:,} images", "x",
                    last["overhead"] / first["overhead"], None, kind="at_most", target=OVERHEAD_TARGET))
    return rows, {"sizes": sizes, "measured": measured, "params": PARAMS}
