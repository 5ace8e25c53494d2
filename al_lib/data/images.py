"""Image files as datasets: a class-per-subfolder (or flat) folder, or a CSV manifest.

Both decode PNG/JPEG with Pillow on access (construction only lists and validates), convert to
one colour ``mode`` so every item has the same number of channels, and by default return a
float32 tensor ``[C, H, W]`` in [0, 1]. Sample ids are stable strings: the relative posix path
for a folder, the ``id`` column for a manifest.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from al_lib.data.manifest import ManifestError, read_manifest

logger = logging.getLogger(__name__)

__all__ = ["ImageDecodeError", "ImageFolderDataset", "ManifestDataset", "ManifestError", "image_to_tensor"]

_MODES = ("L", "RGB", "RGBA")
#: Pillow modes with a single (grey) channel, possibly plus alpha: the default mode becomes "L".
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_MISSING_LABEL = -1
#: What Pillow raises for unreadable, truncated, unknown or oversized files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """An image file could not be opened or decoded; ``.path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        super().__init__(f"cannot decode image file {self.path!r}: {reason}")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A decoded 8-bit PIL image as float32 ``[C, H, W]`` in [0, 1] (pixel / 255)."""
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only memory
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)


def _load_image(path: Path, mode: str) -> Image.Image:
    """Decode ``path`` fully and convert it to ``mode``; ImageDecodeError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P":  # via RGBA so palette transparency is honoured, not warned about
                image = image.convert("RGBA")
            return image.convert(mode)
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc


def _default_mode(path: Path) -> str:
    """"L" when the image at ``path`` is greyscale, else "RGB"; reads the header only."""
    try:
        with Image.open(path) as image:
            return "L" if image.mode in _GREY_MODES else "RGB"
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc


class _ImageFiles(Dataset):
    """Shared machinery: a list of files with ids, optional int targets, decoded on access."""

    def __init__(self, paths: Sequence[str | Path], ids: list[str], targets: np.ndarray | None,
                 classes: list[str] | None, transform: Callable | None, mode: str | None):
        if mode is not None and mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES} or None, got {mode!r}")
        self._files = paths  # str or Path; Path objects only on demand (1M of them cost seconds)
        self.ids = ids
        self.targets = targets
        self.classes = classes
        self.transform = transform
        self._mode = mode

    @property
    def mode(self) -> str:
        """Colour mode every image is converted to; when not given, "L" if the first image is
        greyscale, else "RGB" (decided from that one file's header, so set it explicitly for a
        folder mixing greyscale and colour images)."""
        if self._mode is None:
            self._mode = _default_mode(self._files[0])
        return self._mode

    @functools.cached_property
    def paths(self) -> list[Path]:
        """The image files, ``[N]`` (built on first access)."""
        return [Path(f) for f in self._files]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> Any:
        image = _load_image(self._files[index], self.mode)
        x = image_to_tensor(image) if self.transform is None else self.transform(image)
        return x if self.targets is None else (x, int(self.targets[index]))

    def __repr__(self) -> str:
        n_classes = "unlabelled" if self.classes is None else f"{len(self.classes)} classes"
        return f"{type(self).__name__}(n={len(self)}, {n_classes})"


class ImageFolderDataset(_ImageFiles):
    """Images under ``root``: one subfolder per class, or a flat folder without labels.

    With subfolders, classes are the sorted names of the (non-hidden) subfolders holding at
    least one image, searched recursively; items are ``(x, target)``. With images directly in
    ``root`` and no such subfolders, there are no labels and items are ``x``. Both at once is
    an error. Hidden files and folders (leading ".") are skipped.

    Parameters
    ----------
    root : path-like
    transform : callable, optional
        Receives the PIL image (already in ``mode``); default: :func:`image_to_tensor`, giving
        float32 ``[C, H, W]`` in [0, 1] with C = 1 ("L"), 3 ("RGB") or 4 ("RGBA").
    mode : {"L", "RGB", "RGBA"} or None
        None: see :attr:`mode`. Alpha is dropped when converting RGBA to L or RGB.
    extensions : tuple of str
        File suffixes to include, case-insensitive.

    Attributes
    ----------
    ids : list of str, [N]
        Paths relative to ``root`` in posix form with extension (e.g. ``"cat/001.png"``), sorted.
    paths : list of Path, [N]
    classes : list of str or None
    targets : ndarray of int64, [N], or None
    """

    def __init__(self, root: str | os.PathLike, *, transform: Callable | None = None,
                 mode: str | None = None, extensions: Sequence[str] = (".png", ".jpg", ".jpeg")):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"image folder {os.fspath(root)!r} is not a directory")
        suffixes = {e.lower() for e in extensions}
        flat = _list_images(self.root, suffixes, recursive=False)
        by_class = {d.name: _list_images(d, suffixes, recursive=True) for d in _subfolders(self.root)}
        by_class = {name: files for name, files in by_class.items() if files}
        if flat and by_class:
            raise ValueError(
                f"{self.root}: has both images at the top level ({flat[0].name!r}) and class "
                "subfolders; use one layout"
            )
        if not flat and not by_class:
            raise ValueError(f"{self.root}: no image files with extensions {sorted(suffixes)}")
        classes = sorted(by_class) or None
        paths = flat or [p for name in classes for p in by_class[name]]
        targets = None if flat else np.repeat(np.arange(len(classes)), [len(by_class[c]) for c in classes])
        ids = [p.relative_to(self.root).as_posix() for p in paths]
        super().__init__(paths, ids, targets, classes, transform, mode)
        logger.debug("image folder %s: %d images, classes=%s", self.root, len(paths), classes)


def _subfolders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _list_images(folder: Path, suffixes: set[str], *, recursive: bool) -> list[Path]:
    """Image files under ``folder`` sorted by relative posix path, skipping hidden entries."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = [
        p for p in candidates
        if p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


class ManifestDataset(_ImageFiles):
    """Images listed in a CSV manifest with columns ``id,path[,label][,split]``.

    Validated at construction (without decoding any image) by
    :func:`al_lib.data.manifest.read_manifest` — required columns present, ids non-empty and
    unique, paths non-empty, relative and not escaping ``root`` — and labels in ``classes`` when
    given. Errors are :class:`ManifestError` naming the file, the row (1-based,
    the header being row 1) and the field. Surrounding whitespace in fields is ignored; extra
    columns are allowed and ignored.

    Parameters
    ----------
    csv_path : path-like
    root : path-like, optional
        Directory the ``path`` column is relative to. Default: the CSV's own directory. The
        product's ``data/pool/manifest.csv`` holds paths relative to the *workspace* root, so
        pass ``root=workspace`` there.
    transform, mode :
        As for :class:`ImageFolderDataset`.
    classes : sequence of str, optional
        Allowed label names, in class-index order. Default: the labels found, sorted
        (numerically when all are integers, e.g. "2" before "10").
    table : DataFrame, optional
        The manifest as :func:`~al_lib.data.manifest.read_manifest` returned it for ``csv_path``
        (already validated: it is not read again).

    Attributes
    ----------
    ids : list of str, [N]
    paths : list of Path, [N]
        ``root / path`` (lexically normalised; symlinks are not followed for the escape check).
    classes : list of str or None
        None when there is no ``label`` column.
    targets : ndarray of int64, [N], or None
        Class indices; -1 where the label cell is empty (an unlabelled sample).
    splits : list of str, [N], or None
        The ``split`` column, when present.

    Items are ``(x, target)`` with a label column, else ``x``.
    """

    def __init__(self, csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 transform: Callable | None = None, mode: str | None = None,
                 classes: Sequence[str] | None = None, table: pd.DataFrame | None = None):
        self.csv_path = Path(csv_path)
        self.root = self.csv_path.parent if root is None else Path(root)
        table = read_manifest(self.csv_path) if table is None else table
        root = os.fspath(self.root)
        paths = [os.path.join(root, p) for p in table["path"]]
        labels = list(zip(table.index, table["label"])) if "label" in table else None
        targets, classes = (
            (None, None) if labels is None else _encode_labels(self.csv_path, labels, classes)
        )
        self.splits = table["split"].tolist() if "split" in table else None
        super().__init__(paths, table["id"].tolist(), targets, classes, transform, mode)
        logger.debug("manifest %s: %d rows, classes=%s", self.csv_path, len(paths), classes)


def _encode_labels(csv_path: Path, labels: list[tuple[int, str]],
                   classes: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """Class indices [N] (-1 for an empty cell) and the class list."""
    if classes is None:
        classes = _sorted_names({v for _, v in labels if v})
    else:
        classes = list(classes)
        if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique str names, got {classes}")
    index = {c: i for i, c in enumerate(classes)}
    targets = np.empty(len(labels), np.int64)
    for i, (row, value) in enumerate(labels):
        if value and value not in index:
            raise ManifestError(csv_path, f"label {value!r} is not one of the classes {classes}",
                                row=row, field="label")
        targets[i] = index[value] if value else _MISSING_LABEL
    return targets, classes


def _sorted_names(names: set[str]) -> list[str]:
    """Sorted class names; numerically when all are integers so "10" follows "9"."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)
