"""The pool manifest: a CSV ``id,path[,label][,split]`` listing the images of a pool.

:func:`read_manifest` is the one reader (and validator) of that format: required columns present,
ids non-empty and unique, paths non-empty, relative, normalised and never escaping the root
(:mod:`al_lib.paths`). Errors are :class:`ManifestError` naming the file, the row (1-based, the
header being row 1) and the field. Surrounding whitespace in fields is ignored; a UTF-8 BOM and
CRLF line ends are accepted; extra columns are allowed and ignored.
"""

from __future__ import annotations

import csv
import os
import posixpath
from pathlib import Path

import pandas as pd

from al_lib.paths import relative_path_problem

__all__ = ["MANIFEST_COLUMNS", "ManifestError", "read_manifest"]

#: Required columns, then the optional ones the reader keeps.
MANIFEST_COLUMNS = ("id", "path", "label", "split")
_REQUIRED_COLUMNS = ("id", "path")


class ManifestError(ValueError):
    """Invalid manifest CSV; ``.file``, ``.row`` (1-based, header = 1) and ``.field`` locate it."""

    def __init__(self, file: str | os.PathLike, message: str, *, row: int | None = None,
                 field: str | None = None):
        self.file, self.row, self.field = os.fspath(file), row, field
        where = "".join([f", row {row}" if row is not None else "", f", field {field!r}" if field else ""])
        super().__init__(f"{self.file}{where}: {message}")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest CSV.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    DataFrame
        Columns ``id``, ``path`` and, when the file has them, ``label`` and ``split`` (all str,
        stripped; ``path`` lexically normalised, ``/``-separated), in file order. The index is the
        CSV line of each row (header = 1), for error messages about a row.

    Raises
    ------
    ManifestError
        Not UTF-8, malformed CSV, no header or data rows, a missing or duplicate column, a row
        with the wrong number of fields, an empty or duplicate id, an empty, absolute or escaping
        path.
    """
    path = Path(path)
    columns = _read_columns(path)
    rows = columns.pop("row")
    return pd.DataFrame(columns, index=pd.Index(rows, name="row"), dtype=str)


def _read_columns(csv_path: Path) -> dict[str, list]:
    """Validated columns ``id``, ``path`` (normalised), optional ``label`` / ``split``, and ``row``."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            fields = _header_index(csv_path, header)
            optional = [k for k in ("label", "split") if k in fields]
            out: dict[str, list] = {"row": [], "id": [], "path": [], **{k: [] for k in optional}}
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
                out["row"].append(row)
                out["id"].append(values["id"])
                out["path"].append(_check_path(csv_path, row, values["path"]))
                for k in optional:
                    out[k].append(values[k])
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
