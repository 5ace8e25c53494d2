"""Validate-step time against pool size: cold (first validation) and warm (pool validated before).

    .venv/bin/python benchmarks/validation_overhead.py            # 3k and 30k images (about a minute)
    .venv/bin/python benchmarks/validation_overhead.py --full     # also 100k (a few minutes)
    .venv/bin/python benchmarks/validation_overhead.py --sizes 1000 5000 --repeats 5

For each size it writes a workspace of small distinct PNG files (28x28 greyscale noise, seeded)
with a manifest and 20 labels in a temporary folder, then times
``tasks.validation.load_and_validate`` with Data Docs and an image cache, as the round's validate
step calls it:

- ``cold``: no image cache yet — every image is hashed and fully decoded (the old behaviour
  decoded every image on every round: this is its cost, per round);
- ``warm``: the pool was validated before (median of ``--repeats`` runs) — images are known by
  their stat key, nothing is read or decoded; ``images`` = checking the files alone;
- ``process``: a warm validation in a fresh Python process, as ``al stage validate`` (under
  ``dvc repro``) or a new ``al round`` runs it: imports, Great Expectations' included.

In-process timings start after Great Expectations was imported (and a first tiny validation ran),
so they are the step's own cost.
Not a test: it prints a table and writes nothing outside its temporary folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from tasks import validation  # noqa: E402
from tasks.validation import check_images, load_and_validate  # noqa: E402

CLASSES = [str(d) for d in range(10)]
IMAGES = "data/pool/images"
LABELS_HEADER = "id,label,round,source,annotator,labelled_at"


def write_pool(root: Path, n: int, seed: int = 0) -> list[str]:
    """A workspace with ``n`` distinct 28x28 PNG files, ``data/pool/manifest.csv`` and 20 labels.

    Returns the image paths relative to ``root``.
    """
    rng = np.random.default_rng(seed)
    (root / IMAGES).mkdir(parents=True)
    paths = [f"{IMAGES}/{i:07d}.png" for i in range(n)]
    for start in range(0, n, 1000):  # a block of pixels at a time: bounded memory
        block = rng.integers(0, 256, size=(min(1000, n - start), 28, 28), dtype=np.uint8)
        for offset, pixels in enumerate(block):
            Image.fromarray(pixels, mode="L").save(root / paths[start + offset])
    manifest = ["id,path,split"] + [f"{i:07d},{p}," for i, p in enumerate(paths)]
    (root / "data/pool/manifest.csv").write_text("\n".join(manifest) + "\n")
    labels = [LABELS_HEADER] + [f"{i:07d},{CLASSES[i % 10]},0,random,,2024-01-01T00:00:00Z" for i in range(min(20, n))]
    (root / "data/labels.csv").write_text("\n".join(labels) + "\n")
    return paths


def timed(function, *args):
    """(wall seconds, CPU seconds of this process and its children, result) of one call."""
    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    wall, cpu_before = time.perf_counter(), cpu()
    result = function(*args)
    return time.perf_counter() - wall, cpu() - cpu_before, result


def validate(root: Path) -> dict:
    """One validation as the round runs it; returns the image counts."""
    report = load_and_validate(root, CLASSES, docs_dir=root / "validation/data_docs",
                               image_cache=root / ".al/image-checks.json")
    assert report.success, report.summary()
    return report.image_checks


PROCESS = """
import sys
from tasks.validation import load_and_validate
report = load_and_validate(sys.argv[1], [str(d) for d in range(10)], docs_dir=sys.argv[1] + "/validation/data_docs",
                           image_cache=sys.argv[1] + "/.al/image-checks.json")
assert report.success and report.image_checks["checked"] == 0, report.summary()
"""


def in_new_process(root: Path) -> None:
    """A warm validation in a fresh interpreter: start-up and imports included."""
    repository = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", PROCESS, str(root)], cwd=repository, check=True,
                   capture_output=True, env={**os.environ, "GX_ANALYTICS_ENABLED": "false"})


def gx_manifest_suite(root: Path) -> tuple[float, float]:
    """Great Expectations alone on the manifest suite (internals: the frame is built beforehand)."""
    manifest = pd.read_csv(root / "data/pool/manifest.csv", dtype=str, keep_default_na=False)
    frame, _ = validation._manifest_frame(root, manifest, True, root / ".al/image-checks.json")
    batch = validation._Batch("manifest", "data/pool/manifest.csv", frame, validation._expectations(
        frame, validation._MANIFEST_CHECKS, validation.MANIFEST_COLUMNS))
    return timed(validation._validate, [batch], None)[:2]


def measure(n: int, repeats: int, base: Path) -> dict:
    root = base / f"pool-{n}"
    paths = write_pool(root, n)
    time.sleep(2.1)  # files older than the racy window, as a pool written before the round is
    cold = timed(validate, root)
    warm_runs = [timed(validate, root) for _ in range(repeats)]
    warm = sorted(warm_runs)[len(warm_runs) // 2]  # the median run
    files = [str(root.resolve() / p) for p in paths]
    images = timed(lambda: check_images(files, cache=root / ".al/image-checks.json", prune=True))
    process = timed(in_new_process, root)
    gx = gx_manifest_suite(root)
    shutil.rmtree(root)
    return {"n": n, "cold": cold, "warm": warm, "images": images, "process": process, "gx": gx}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 100k images")
    parser.add_argument("--sizes", type=int, nargs="+", help="pool sizes (default: 3000 30000 [100000])")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per size (median)")
    args = parser.parse_args(argv)
    sizes = args.sizes or [3000, 30000] + ([100000] if args.full else [])

    with tempfile.TemporaryDirectory(prefix="al-validation-bench-") as tmp:
        base = Path(tmp)
        write_pool(base / "warmup", 10)
        wall, cpu, _ = timed(validate, base / "warmup")  # imports Great Expectations
        print(f"Great Expectations import + a first tiny validation: {wall:.2f} s ({cpu:.2f} s CPU)")
        rows = []
        for n in sizes:
            rows.append(measure(n, args.repeats, base))
            print(f"  {n} images done", flush=True)

    first = rows[0]
    print(f"\nseconds wall / CPU; ratios of CPU seconds to the {first['n']}-image pool's")
    print(f"{'images':>8} {'cold':>12} {'warm':>12} {'warm ratio':>10} {'new process':>12} {'ratio':>6} "
          f"{'image checks':>12} {'GX manifest':>12}  image counts (cold | warm)")
    for row in rows:
        cold, warm, process = row["cold"], row["warm"], row["process"]
        print(f"{row['n']:>8} {cold[0]:>5.2f}/{cold[1]:<6.2f} {warm[0]:>5.2f}/{warm[1]:<6.2f} "
              f"{warm[1] / first['warm'][1]:>10.2f} {process[0]:>5.2f}/{process[1]:<6.2f} "
              f"{process[1] / first['process'][1]:>6.2f} {row['images'][0]:>5.2f}/{row['images'][1]:<6.2f} "
              f"{row['gx'][0]:>5.2f}/{row['gx'][1]:<6.2f}  "
              f"{cold[2]['checked']} checked | {warm[2]['checked']} checked, {warm[2]['remembered']} remembered, "
              f"{warm[2]['hashed']} hashed")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
