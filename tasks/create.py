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
from al_lib.data.manifest import read_manifest
from al_lib.labels import labels_frame, utc_iso, utc_now
from tasks import dvc_repo, git_repo
from tasks.lock import workspace_lock
from tasks.pipeline import write_dvc_yaml
from tasks.plots_template import install_plots_template
from tasks.workspace import (
    HELD_OUT_SPLITS, IMAGES_DIR, LABELS, MANIFEST, ORACLE_LABELS, PARAMS_FILE, ROUND_FILE, Params, ParamsError,
    Workspace, parse_params, write_file, write_params,
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

    Returns the :class:`Workspace`. Everything is checked before anything is made — the sources
    (:func:`check_sources`: no symlinks, no colliding ids, every image decodes completely) and the
    parameters (:func:`tasks.workspace.parse_params`; ``query_size`` within the queryable pool) —
    and a failure after that removes what was made, so nothing half-built blocks a re-init.
    """
    if (images is None) == (manifest is None):
        raise ValueError("give exactly one of images=DIR or manifest=CSV")
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    root = Path(path).resolve()
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty: choose a new folder for the workspace")
    if images is not None:
        source, rows = ImageFolderDataset(images), None
    else:
        manifest_table = read_manifest(manifest)
        source, rows = ManifestDataset(manifest, table=manifest_table), list(manifest_table.index)
    table = _source_table(source, rows)
    classes = classes or source.classes
    if labels != "none" and table["label"].eq("").all():
        labels = "none"
    if not classes:
        raise ValueError("no classes found: give --classes, or images in class subfolders / a label column")
    unknown = sorted(set(table["label"]) - set(classes) - {""})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    table = _assign_holdout(table, holdout, seed)
    table["path"] = [pool_image_path(sid, src) for sid, src in zip(table["id"], table["src"])]
    check_sources(table, Path(images if images is not None else Path(manifest).parent),
                  what=str(manifest) if manifest is not None else None)
    params = Params(classes=list(classes), seed=seed, model=_model_for(table), **params_overrides)
    params = parse_params(params.as_dict(), root / PARAMS_FILE)
    _check_query_size(params, table, labels)

    existed = root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        ws = Workspace(root)
        copy_into_pool(table, ws)
        _write_tables(ws, table, labels)
        write_params(ws.path(PARAMS_FILE), params)
        ws.write_round(0)
        write_dvc_yaml(root, held_out=_has_test_labels(table, labels))
        write_file(ws.path(".gitignore"), "\n".join(GITIGNORE) + "\n")
        init_workspace_repo(root, initial_files=[PARAMS_FILE, ROUND_FILE, "dvc.yaml", ".gitignore", MANIFEST]
                            + ([ORACLE_LABELS] if labels == "oracle" else []))
        git_repo.commit_paths(root, install_plots_template(root), "workspace: offline page for dvc plots show")
        dvc_repo.track(root, [IMAGES_DIR, LABELS])
        git_repo.commit_paths(root, [IMAGES_DIR + ".dvc", LABELS + ".dvc", "data/pool/.gitignore",
                                     "data/.gitignore"], "workspace: pool images and initial labels")
    except BaseException:  # a half-built workspace would block a re-init: take it all away
        logger.error("creating the workspace %s failed: removing what was made", root)
        _remove_partial(root, keep_folder=existed)
        raise
    logger.info("created workspace %s: %d images, %d classes, labels as %s", root, len(table), len(classes), labels)
    return ws


def _remove_partial(root: Path, *, keep_folder: bool) -> None:
    """Remove a workspace :func:`create_workspace` began in ``root`` (empty or absent before)."""
    if not keep_folder:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _where(src: str, sid: str, row, what: str | None) -> str:
    """``<src>: id 'X'`` (an image folder) or ``<manifest>, row R, field 'path': <src>, id 'X'``."""
    return f"{src}: id {sid!r}" if row is None else f"{what}, row {row}, field 'path': {src}, id {sid!r}"


def check_sources(table: pd.DataFrame, folder: Path, *, what: str | None = None,
                  image_cache: str | os.PathLike | None = None, error: type[ValueError] | None = None) -> None:
    """Refuse source images a workspace must not take, before anything is copied.

    ``table`` has columns ``id``, ``src`` (the source file), ``path`` (its pool path) and
    optionally ``row`` (the manifest CSV line of each id). Refused, all problems named by file,
    row and field: a symlink (a pool holds regular files only; a link could bring in any file of
    the machine), ids whose pool paths collide (``x.png`` / ``./x.png`` / ``../x.png``), a file
    that does not decode completely (:func:`tasks.validation.check_images`, decompression bombs
    included). ``what`` names the manifest (its rows are then named), ``image_cache`` is
    :func:`~tasks.validation.check_images`'s. Raises ``error`` (default :class:`SourceImageError`).
    """
    from tasks.validation import check_images

    rows = table["row"].tolist() if "row" in table else [None] * len(table)
    problems = []
    linked_folders: dict[Path, Path | None] = {}
    for sid, src, row in zip(table["id"], table["src"], rows):
        link = Path(src) if Path(src).is_symlink() else _linked_folder(Path(src).parent, Path(folder), linked_folders)
        if link is not None:
            problems.append(f"{_where(src, sid, row, what)} is a symlink ({link} -> "
                            f"{os.readlink(link)}): a pool takes regular files only")
    first = {}
    for sid, path, row in zip(table["id"], table["path"], rows):
        if path in first:
            problems.append(f"{what or folder}{'' if row is None else f', row {row}'}, field 'id': {sid!r} lands on "
                            f"the same pool file {path} as id {first[path][0]!r}"
                            + ("" if first[path][1] is None else f" (row {first[path][1]})"))
        else:
            first[path] = (sid, row)
    _refuse_sources(problems, error or SourceImageError)
    checks = check_images(table["src"].tolist(), cache=image_cache)
    for sid, src, row, facts in zip(table["id"], table["src"], rows, checks.facts):
        if facts is None or not facts.decodes:
            problems.append(f"{_where(src, sid, row, what)} "
                            + ("is no readable file" if facts is None else f"does not decode ({facts.error})"))
    _refuse_sources(problems, error or SourceImageError)


class SourceImageError(ValueError):
    """Source images refused (symlink, colliding ids, undecodable); nothing was created or added."""


_NAMED = 5  # problems a refusal names


def _refuse_sources(problems: list[str], error: type[ValueError]) -> None:
    if problems:
        more = f"; and {len(problems) - _NAMED} more" if len(problems) > _NAMED else ""
        raise error(f"{len(problems)} source image problem(s), nothing was changed: "
                    + "; ".join(problems[:_NAMED]) + more)


def _linked_folder(path: Path, top: Path, seen: dict[Path, Path | None]) -> Path | None:
    """The first symlink among ``path`` and its parents strictly below ``top`` (``top`` itself may
    be reached through a link), or None; ``seen`` remembers the answer per folder."""
    if path in seen:
        return seen[path]
    if Path(os.path.abspath(path)) == Path(os.path.abspath(top)) or path == path.parent:
        answer = None
    else:
        answer = path if path.is_symlink() else _linked_folder(path.parent, top, seen)
    seen[path] = answer
    return answer


def _check_query_size(params: Params, table: pd.DataFrame, labels: str) -> None:
    """A query size the pool can never fill is a mistake of the command line, not a late round."""
    held_out = table["split"].str.lower().isin(HELD_OUT_SPLITS)
    queryable = ~held_out & ((table["label"] == "") | (labels != "seed"))
    n = int(queryable.sum())
    if 0 < n < params.query_size:
        raise ParamsError(f"{PARAMS_FILE}: field 'query_size' is {params.query_size}, more than the {n} pool images "
                          "that can ever be queried: give a smaller --query-size")


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


def _source_table(source, rows: list[int] | None = None) -> pd.DataFrame:
    """id, source path, label name ('' when unknown) and split of every image (and its manifest
    ``row`` when ``rows`` are given)."""
    names = source.classes or []
    targets = source.targets if source.targets is not None else np.full(len(source.ids), -1)
    return pd.DataFrame({**({} if rows is None else {"row": rows}),
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
        raise ValueError(f"holdout {holdout}: cannot hold out {holdout} of {len(eligible)} labelled images "
                         "(give a smaller --holdout)")
    chosen = np.random.default_rng(seed).choice(eligible, size=holdout, replace=False)
    table = table.copy()
    table.loc[chosen, "split"] = "test"
    return table


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
    n = len(seed_rows)
    ws.write_labels(labels_frame({"id": seed_rows["id"], "label": seed_rows["label"], "round": [0] * n,
                                  "source": ["import"] * n, "annotator": [None] * n,
                                  "labelled_at": [utc_iso(utc_now())] * n}))
    if labels == "oracle":
        write_file(ws.path(ORACLE_LABELS), known[["id", "label"]].to_csv(index=False))


def _model_for(table: pd.DataFrame) -> dict:
    """Input shape from the first (source) image; the Gal CNN for small images, a VGG-style net otherwise."""
    with Image.open(table["src"].iloc[0]) as first:
        channels = 1 if first.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        width, height = first.size
    name = "gal_cnn" if max(width, height) <= 64 else "vgg"
    return {"name": name, "input_shape": [channels, height, width]}
