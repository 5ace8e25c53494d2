"""`al add-images`: grow a workspace's pool between rounds with new, unlabelled images.

Everything is checked before anything changes: the folder is flat (class subfolders are refused:
the pool's new images are unlabelled, their labels come back through ``al import-labels``), no id
is in the manifest already, no destination file is taken, and every image decodes completely
(:func:`tasks.create.check_sources`: no symlinks either). Then, under the workspace lock, the new files are copied
into ``data/pool/images/`` (ids and paths follow `al init`'s rules, :func:`tasks.create.pool_image_path`;
files already there are never copied again), DVC re-tracks the folder (``dvc add`` hashes only
the new files), the rows are appended to ``data/pool/manifest.csv``, and manifest +
``data/pool/images.dvc`` go into one git commit. A failure on the way puts the files back.
"""

from __future__ import annotations

import csv
import filecmp
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from al_lib.data import ImageFolderDataset
from tasks import dvc_repo, git_repo
from tasks.create import check_sources, copy_into_pool, pool_image_path
from tasks.lock import workspace_lock
from tasks.workspace import IMAGES_DIR, MANIFEST, Workspace, write_file

logger = logging.getLogger(__name__)

__all__ = ["AddImagesError", "AddedImages", "add_images"]

_NAMED = 5  # problems an error message names


class AddImagesError(ValueError):
    """New images refused (the message names each file and id); nothing was changed."""


@dataclass(frozen=True)
class AddedImages:
    """What :func:`add_images` did.

    Attributes
    ----------
    ids : list of str, [K]
        The new sample ids (file names, e.g. ``"img-0042.png"``), in manifest order.
    paths : list of str, [K]
        Their workspace paths, ``data/pool/images/<id>``.
    n_pool : int
        Manifest rows after adding.
    commit : str or None
        The git commit of the manifest and ``data/pool/images.dvc`` (None: nothing changed).
    """

    ids: list[str]
    paths: list[str]
    n_pool: int
    commit: str | None


def add_images(
    workspace: str | os.PathLike,
    images: str | os.PathLike,
    *,
    split: str | None = None,
    image_cache: str | os.PathLike | None = None,
) -> AddedImages:
    """Add the images of the flat folder ``images`` to the workspace's pool, unlabelled.

    Parameters
    ----------
    workspace : path-like
        A workspace made by `al init` (git + DVC, ``data/pool/images`` tracked by its ``.dvc`` file).
    images : path-like
        A folder of image files (.png, .jpg, .jpeg) without subfolders; a file's name (with its
        extension) becomes its id, as for `al init --images` of a flat folder.
    split : str, optional
        The manifest ``split`` of the new rows (e.g. ``"test"``: held out, never queried). The
        column is added (empty for the existing rows) when the manifest has none.
    image_cache : path-like, optional
        The image-check cache of the workspace's validation (``.al/image-checks.json``): what
        decoding the new images showed is remembered there, so the next round only hashes them.

    Returns
    -------
    AddedImages

    Raises
    ------
    AddImagesError
        Class subfolders, an id already in the manifest, a destination taken by another file, a
        pool folder not tracked by ``images.dvc``, or what :func:`tasks.create.check_sources`
        refuses (a symlink, two new images landing on one pool file, an image that does not
        decode). Nothing is changed.
    FileNotFoundError
        ``workspace`` has no pool manifest, or ``images`` is not a folder.
    """
    ws = Workspace(workspace)
    source = Path(images)
    if not ws.path(MANIFEST).is_file():
        raise FileNotFoundError(f"{ws.root}: no {MANIFEST} — is it a workspace? (create one with `al init`)")
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder")
    if split is not None and not split.strip():
        raise ValueError("split must be a non-empty name, e.g. 'test'")
    if not ws.path(IMAGES_DIR + ".dvc").is_file():
        raise AddImagesError(f"{ws.root}: {IMAGES_DIR} is not tracked by {IMAGES_DIR}.dvc (a pipeline output, as in "
                             "the demo workspace?): `al add-images` grows pools made by `al init`")
    with workspace_lock(ws.root):
        manifest_text = ws.path(MANIFEST).read_text()
        manifest = pd.read_csv(io.StringIO(manifest_text), dtype=str, keep_default_na=False)
        new = _new_images(source)
        present = _refuse_clashes(new, manifest, ws)
        check_sources(new, source, image_cache=image_cache, error=AddImagesError)  # links, collisions, decoding
        commit = _add(ws, new, present, manifest, manifest_text, split, source)
    logger.info("added %d images from %s to %s (%d in the pool)", len(new), source, ws.root,
                len(manifest) + len(new))
    return AddedImages(new["id"].tolist(), new["path"].tolist(), len(manifest) + len(new), commit)


def _new_images(folder: Path) -> pd.DataFrame:
    """``id, src, path`` of each image in the flat ``folder``; class subfolders are refused."""
    found = ImageFolderDataset(folder)  # lists only; ValueError for an empty or mixed folder
    if found.classes is not None:
        raise AddImagesError(
            f"{folder}: has class subfolders ({', '.join(found.classes)}): `al add-images` adds unlabelled "
            "pool images, so give a flat folder of images (labels come back through `al import-labels`); "
            "nothing was added")
    table = pd.DataFrame({"id": [str(i) for i in found.ids], "src": [str(p) for p in found.paths]})
    table["path"] = [pool_image_path(sid, src) for sid, src in zip(table["id"], table["src"])]
    return table


def _refuse_clashes(new: pd.DataFrame, manifest: pd.DataFrame, ws: Workspace) -> set[str]:
    """Refuse ids the manifest has and destinations taken; returns the destinations already
    holding an identical copy (left behind by an interrupted run: not copied again)."""
    def column(name: str) -> list[str]:
        return manifest[name].tolist() if name in manifest.columns else []

    rows = {sid: row for row, sid in enumerate(column("id"), start=2)}  # CSV rows: the header is row 1
    used = {os.path.normpath(path): row for row, path in enumerate(column("path"), start=2) if path}
    problems, present = [], set()
    for sid, src, path in new.itertuples(index=False):
        if sid in rows:
            problems.append(f"{src}: id {sid!r} is already in {MANIFEST} (row {rows[sid]})")
        elif path in used:
            problems.append(f"{src}: its destination {path} is already used by {MANIFEST} row {used[path]}")
        elif ws.path(path).exists():
            if not (ws.path(path).is_file() and filecmp.cmp(src, ws.path(path), shallow=False)):
                problems.append(f"{src}: its destination {path} exists (not in {MANIFEST}) with other content")
            else:
                present.add(path)
    _refuse(problems, "ids or files clash")
    return present


def _refuse(problems: list[str], what: str) -> None:
    if problems:
        more = f"; and {len(problems) - _NAMED} more" if len(problems) > _NAMED else ""
        raise AddImagesError(f"{len(problems)} new {what} — nothing was added: "
                             + "; ".join(problems[:_NAMED]) + more)


def _add(ws: Workspace, new: pd.DataFrame, present: set[str], manifest: pd.DataFrame, manifest_text: str,
         split: str | None, source: Path) -> str | None:
    """Copy, re-track, append the manifest rows, commit; on any failure put the files back."""
    dvc_file = ws.path(IMAGES_DIR + ".dvc")
    dvc_text = dvc_file.read_bytes()
    to_copy = new[~new["path"].isin(present)]
    tracked = False
    try:
        copy_into_pool(to_copy, ws)
        tracked = True  # from here on, images.dvc may have changed
        dvc_repo.track(ws.root, [IMAGES_DIR])  # hashes the new files only (DVC's state db)
        write_file(ws.path(MANIFEST), _appended(manifest, manifest_text, new, split))
        return git_repo.commit_paths(ws.root, [MANIFEST, IMAGES_DIR + ".dvc", "data/pool/.gitignore"],
                                     f"pool: add {len(new)} images from {source.name}")
    except BaseException:
        logger.error("adding images to %s failed: putting the pool back as it was", ws.root)
        write_file(ws.path(MANIFEST), manifest_text)
        for path in to_copy["path"]:  # every destination was free before (checked): ours to remove
            ws.path(path).unlink(missing_ok=True)
        if tracked:
            write_file(dvc_file, dvc_text)
            try:  # DVC's view and git's index back to the old folder
                dvc_repo.track(ws.root, [IMAGES_DIR])
            except Exception as exc:  # noqa: BLE001 — the first error is the one to report
                logger.error("could not re-track %s (run `dvc add %s`): %s", IMAGES_DIR, IMAGES_DIR, exc)
        raise


def _appended(manifest: pd.DataFrame, text: str, new: pd.DataFrame, split: str | None) -> str:
    """The manifest with the new rows appended; existing rows keep their bytes unless a ``split``
    column has to be added."""
    rows = pd.DataFrame({"id": new["id"], "path": new["path"], "split": split or ""})
    columns = list(manifest.columns)
    if split is not None and "split" not in columns:
        merged = pd.concat([manifest.assign(split=""), rows], ignore_index=True)
        return merged[columns + ["split"]].to_csv(index=False, lineterminator="\n")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(
        [[row.get(column, "") for column in columns] for row in rows.to_dict("records")])
    return text + ("" if not text or text.endswith("\n") else "\n") + buffer.getvalue()
