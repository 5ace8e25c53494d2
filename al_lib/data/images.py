"""Image files as datasets: a class-per-subfolder (or flat) folder, or a CSV manifest.

Both decode PNG/JPEG with Pillow on access (construction only lists and validates), convert to
one colour ``mode`` so every item has the same number of channels, and by default return a
float32 tensor ``[C, H, W]`` in [0, 1]. Sample ids are stable strings: the relative posix path
for a folder, the ``id`` column for a manifest.
"""

from __future__ import annotations

import csv
import logging
import os
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from al_lib.paths import relative_path_problem

logger = logging.getLogger(__name__)

__all__ = ["ImageDecodeError", "ImageFolderDataset", "ManifestDataset", "ManifestError", "image_to_tensor"]

_MODES = ("L", "RGB", "RGBA")
#: Pillow modes with a single (grey) channel, possibly plus alpha: the default mode becomes "L".
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_REQUIRED_COLUMNS = ("id", "path")
_MISSING_LABEL = -1
#: What Pillow raises for unreadable, truncated, unknown or oversized files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """An image file could not be opened or decoded; ``.path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        super().__init__(f"cannot decode image file {self.path!r}: {reason}")


class ManifestError(ValueError):
    """Invalid manifest CSV; ``.file``, ``.row`` (1-based, header = 1) and ``.field`` locate it."""

    def __init__(self, file: str | os.PathLike, message: str, *, row: int | None = None,
                 field: str | None = None):
        self.file, self.row, self.field = os.fspath(file), row, field
        where = "".join([f", row {row}" if row is not None else "", f", field {field!r}" if field else ""])
        super().__init__(f"{self.file}{where}: {message}")


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

    def __init__(self, paths: list[Path], ids: list[str], targets: np.ndarray | None,
                 classes: list[str] | None, transform: Callable | None, mode: str | None):
        if mode is not None and mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES} or None, got {mode!r}")
        self.paths = paths
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
            self._mode = _default_mode(self.paths[0])
        return self._mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        image = _load_image(self.paths[index], self.mode)
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

    Validated at construction (without decoding any image): required columns present, ids
    non-empty and unique, paths non-empty, relative and not escaping ``root``, labels in
    ``classes`` when given. Errors are :class:`ManifestError` naming the file, the row (1-based,
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
                 classes: Sequence[str] | None = None):
        self.csv_path = Path(csv_path)
        self.root = self.csv_path.parent if root is None else Path(root)
        columns = _read_manifest(self.csv_path)
        paths = [self.root / p for p in columns["path"]]
        labels = columns.get("label")
        targets, classes = (
            (None, None) if labels is None else _encode_labels(self.csv_path, labels, classes)
        )
        self.splits = None if "split" not in columns else [v for _, v in columns["split"]]
        super().__init__(paths, columns["id"], targets, classes, transform, mode)
        logger.debug("manifest %s: %d rows, classes=%s", self.csv_path, len(paths), classes)


def _read_manifest(csv_path: Path) -> dict[str, list]:
    """Validated columns: ``id`` [str], ``path`` [normalised relative str], and, when present,
    ``label`` / ``split`` as [(row, value)]."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            fields = _header_index(csv_path, header)
            optional = [k for k in ("label", "split") if k in fields]
            out: dict[str, list] = {"id": [], "path": [], **{k: [] for k in optional}}
            first_row: dict[str, int] = {}
            for record in reader:
                if not record:  # blank line
                    continue
                row = reader.line_num
                if len(record) != len(header):
                    raise ManifestError(
                        csv_path, f"expected {len(header)} fields, got {len(record)}", row=row
                    )
                values = {k: record[i].strip() for k, i in fields.items()}
                _check_id(csv_path, row, values["id"], first_row)
                out["id"].append(values["id"])
                out["path"].append(_check_path(csv_path, row, values["path"]))
                for k in optional:
                    out[k].append((row, values[k]))
    except UnicodeDecodeError as exc:
        raise ManifestError(csv_path, f"is not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise ManifestError(csv_path, f"malformed CSV: {exc}", row=reader.line_num) from None
    if not out["id"]:
        raise ManifestError(csv_path, "has no data rows")
    return out


def _header_index(csv_path: Path, header: list[str]) -> dict[str, int]:
    """Column positions of the known fields; errors for an empty header, duplicate or missing
    required columns."""
    if not header:
        raise ManifestError(csv_path, "is empty (no header row)", row=1)
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise ManifestError(csv_path, f"duplicate column(s) {duplicates}", row=1)
    for column in _REQUIRED_COLUMNS:
        if column not in header:
            raise ManifestError(csv_path, f"missing required column {column!r} (header: {header})",
                                row=1, field=column)
    return {h: i for i, h in enumerate(header) if h in ("id", "path", "label", "split")}


def _check_id(csv_path: Path, row: int, value: str, first_row: dict[str, int]) -> None:
    if not value:
        raise ManifestError(csv_path, "empty id", row=row, field="id")
    if value in first_row:
        raise ManifestError(csv_path, f"duplicate id {value!r} (first at row {first_row[value]})",
                            row=row, field="id")
    first_row[value] = row


def _check_path(csv_path: Path, row: int, value: str) -> str:
    """``value`` lexically normalised; ManifestError when empty, absolute or escaping root."""
    problem = relative_path_problem(value)
    if problem:
        raise ManifestError(csv_path, problem, row=row, field="path")
    return posixpath.normpath(value)


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
