"""`al init`: create a workspace from a folder of images or a CSV manifest."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from al_lib.data import ImageFolderDataset, ManifestDataset
from al_lib.data.active_dataset import HISTORY_COLUMNS, utc_now
from tasks import dvc_repo, git_repo
from tasks.lock import workspace_lock
from tasks.pipeline import write_dvc_yaml
from tasks.plots_template import install_plots_template
from tasks.workspace import (
    HELD_OUT_SPLITS, IMAGES_DIR, LABELS, MANIFEST, ORACLE_LABELS, PARAMS_FILE, ROUND_FILE, Params, Workspace,
    write_file, write_params,
)

logger = logging.getLogger(__name__)
LABEL_MODES = ("seed", "oracle", "none")
GITIGNORE = ["/models/", "/data/scores/", "/validation/data_docs/", "/.al/", "__pycache__/"]
#: Lines every workspace's .gitignore gets (a repository that existed before keeps its own).
GITIGNORE_DEFAULTS = ("__pycache__/", "*.py[cod]", ".venv/", ".pytest_cache/")


def create_workspace(
    path: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    labels: str = "seed",
    classes: list[str] | None = None,
    holdout: int = 0,
    seed: int = 0,
    **params_overrides,
) -> Workspace:
    """Create a workspace at ``path``: copy the images in, write manifest, labels, params, dvc.yaml.

    Parameters
    ----------
    images : folder of images, class-per-subfolder (labelled) or flat (unlabelled)
    manifest : CSV ``id,path[,label][,split]``, paths relative to the CSV's folder
    labels : {"seed", "oracle", "none"}
        What known labels become: the labelled seed set (source "import"), the hidden ground
        truth of a simulation oracle (``data/oracle/labels.csv``), or nothing.
    holdout : int
        Put this many random labelled images in a ``test`` split (never queried; they measure
        the model each round).
    **params_overrides
        Fields of params.yaml (heuristic, query_size, ...).

    Returns the :class:`Workspace`. Nothing is left behind if a check fails before copying.
    """
    if (images is None) == (manifest is None):
        raise ValueError("give exactly one of images=DIR or manifest=CSV")
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    root = Path(path).resolve()
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty: choose a new folder for the workspace")
    source = ImageFolderDataset(images) if images is not None else ManifestDataset(manifest)
    table = _source_table(source)
    classes = classes or source.classes
    if labels != "none" and table["label"].eq("").all():
        labels = "none"
    if not classes:
        raise ValueError("no classes found: give --classes, or images in class subfolders / a label column")
    unknown = sorted(set(table["label"]) - set(classes) - {""})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    table = _assign_holdout(table, holdout, seed)

    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    _copy_images(table, ws)
    _write_tables(ws, table, labels)
    params = Params(classes=list(classes), seed=seed, model=_model_for(table, ws), **params_overrides)
    write_params(ws.path(PARAMS_FILE), params)
    ws.write_round(0)
    write_dvc_yaml(root, held_out=_has_test_labels(table, labels))
    write_file(ws.path(".gitignore"), "\n".join(GITIGNORE) + "\n")
    init_workspace_repo(root, initial_files=[PARAMS_FILE, ROUND_FILE, "dvc.yaml", ".gitignore", MANIFEST]
                        + ([ORACLE_LABELS] if labels == "oracle" else []))
    git_repo.commit_paths(root, install_plots_template(root), "workspace: offline page for dvc plots show")
    dvc_repo.track(root, [IMAGES_DIR, LABELS])
    git_repo.commit_paths(root, [IMAGES_DIR + ".dvc", LABELS + ".dvc", "data/pool/.gitignore", "data/.gitignore"],
                          "workspace: pool images and initial labels")
    logger.info("created workspace %s: %d images, %d classes, labels as %s", root, len(table), len(classes), labels)
    return ws


def init_workspace_repo(path: str | os.PathLike, *, initial_files=()) -> str:
    """Make ``path`` a git + DVC workspace and commit its skeleton with ``initial_files``; return HEAD.

    Idempotent: an existing repository is never re-initialised; only what is missing is added and
    committed. Do not list files that will be DVC-tracked.
    """
    repo = Path(path)
    git_repo.init_repo(repo)
    with workspace_lock(repo):
        dvc_repo.init_dvc(repo)
        git_repo.ensure_gitignore(repo / ".gitignore", GITIGNORE_DEFAULTS)
        skeleton = [".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore"]
        git_repo.commit_paths(repo, skeleton + [str(f) for f in initial_files], "initialise active-learning workspace")
        return git_repo.head_commit(repo)


def _has_test_labels(table: pd.DataFrame, labels: str) -> bool:
    """Whether data/labels.csv gets labels of held-out images (they measure the model)."""
    held_out = table["split"].str.lower().isin(HELD_OUT_SPLITS) & (table["label"] != "")
    return labels != "none" and bool(held_out.any())


def _source_table(source) -> pd.DataFrame:
    """id, source path, label name ('' when unknown) and split of every image."""
    names = source.classes or []
    targets = source.targets if source.targets is not None else np.full(len(source.ids), -1)
    return pd.DataFrame({
        "id": [str(i) for i in source.ids],
        "src": [str(p) for p in source.paths],
        "label": [names[t] if t >= 0 else "" for t in targets],
        "split": getattr(source, "splits", None) or [""] * len(source.ids),
    })


def _assign_holdout(table: pd.DataFrame, holdout: int, seed: int) -> pd.DataFrame:
    if holdout <= 0:
        return table
    eligible = np.flatnonzero((table["label"] != "").to_numpy() & ~table["split"].str.lower().isin(HELD_OUT_SPLITS))
    if holdout >= len(eligible):
        raise ValueError(f"cannot hold out {holdout} of {len(eligible)} labelled images")
    chosen = np.random.default_rng(seed).choice(eligible, size=holdout, replace=False)
    table = table.copy()
    table.loc[chosen, "split"] = "test"
    return table


def _copy_images(table: pd.DataFrame, ws: Workspace) -> None:
    """Copy each image to data/pool/images/<id-derived path>; fill the ``path`` column."""
    table["path"] = [pool_image_path(sid, src) for sid, src in zip(table["id"], table["src"])]
    copy_into_pool(table, ws)


def pool_image_path(sample_id: str, source: str | os.PathLike) -> str:
    """Where the pool keeps the image of ``sample_id``: ``data/pool/images/<id>`` with ``source``'s
    suffix, derived from the id alone and never escaping the images folder (`al init` and
    `al add-images` place images alike)."""
    return str(PurePosixPath(IMAGES_DIR) / _safe_relative(sample_id, Path(source).suffix))


def copy_into_pool(table: pd.DataFrame, ws: Workspace) -> None:
    """Copy each ``src`` of ``table`` to its workspace-relative ``path``, creating folders."""
    for src, rel in zip(table["src"], table["path"]):
        dest = ws.path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def _safe_relative(sample_id: str, suffix: str) -> str:
    """A relative file name for an id, never escaping the images folder."""
    parts = [p for p in PurePosixPath(sample_id.replace("\\", "/")).parts if p not in ("..", ".", "/")]
    name = "/".join(parts) or "image"
    return name if name.lower().endswith(suffix.lower()) else name + suffix


def _write_tables(ws: Workspace, table: pd.DataFrame, labels: str) -> None:
    columns = ["id", "path"] + (["split"] if table["split"].ne("").any() else [])
    write_file(ws.path(MANIFEST), table[columns].to_csv(index=False))
    known = table[table["label"] != ""]
    held_out = known["split"].str.lower().isin(HELD_OUT_SPLITS)
    # Held-out labels always go to labels.csv: they measure the model and are never queried.
    seed_rows = known if labels == "seed" else known[held_out] if labels == "oracle" else known.iloc[0:0]
    now = utc_now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rows = pd.DataFrame({"id": seed_rows["id"], "label": seed_rows["label"], "round": 0, "source": "import",
                         "annotator": "", "labelled_at": now})[list(HISTORY_COLUMNS)]
    ws.write_labels(rows)
    if labels == "oracle":
        write_file(ws.path(ORACLE_LABELS), known[["id", "label"]].to_csv(index=False))


def _model_for(table: pd.DataFrame, ws: Workspace) -> dict:
    """Input shape from the first image; the Gal CNN for small images, a VGG-style net otherwise."""
    with Image.open(ws.path(table["path"].iloc[0])) as first:
        channels = 1 if first.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        width, height = first.size
    name = "gal_cnn" if max(width, height) <= 64 else "vgg"
    return {"name": name, "input_shape": [channels, height, width]}
