"""The labels table: its schema, the rules of each field, its CSV file, and merging into it.

One labelled sample is one row ``id,label,round,source,annotator,labelled_at``
(:data:`LABEL_COLUMNS`). This module is the one place that knows those columns and their rules:
:class:`~al_lib.data.ActiveLearningDataset` stores and returns labels in this schema
(``history()`` / ``load_history()``), a workspace's ``data/labels.csv`` is read and written with
:func:`read_labels` / :func:`write_labels`, and returned annotations (parsed by
:mod:`al_lib.annotations`) are folded in with :func:`merge_annotations`, which decides conflicts.

Every problem of a file raises :class:`AnnotationError` naming the file, the row (CSV line,
header = 1; or Label Studio task) and the field; all problems of a file are reported at once.
Nothing is written on error; writes are atomic.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import numbers
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from al_lib.atomic import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "ANNOTATION_COLUMNS",
    "AnnotationError",
    "LABEL_COLUMNS",
    "MergeReport",
    "SOURCES",
    "check_annotator",
    "check_round",
    "check_source",
    "empty_labels",
    "labels_frame",
    "merge_annotations",
    "read_labels",
    "utc_iso",
    "utc_now",
    "write_labels",
]

#: Where a label came from. "correction" marks a relabelled sample.
SOURCES = ("oracle", "human", "import", "random", "correction")
#: Columns of the labels table (``data/labels.csv``, ``ActiveLearningDataset.history()``).
LABEL_COLUMNS = ("id", "label", "round", "source", "annotator", "labelled_at")
#: Columns of a parsed annotation file (:func:`al_lib.annotations.read_annotations`), the input of
#: :func:`merge_annotations`.
ANNOTATION_COLUMNS = ("id", "label", "annotator", "source_file", "row")
_MAX_LISTED = 20  # errors spelled out in a message; ``.errors`` keeps them all
_ON_CONFLICT = ("error", "relabel")
# id and label stay as given (object): str in a workspace, ints from an ActiveLearningDataset over
# int ids / unnamed classes.
_DTYPES = {"id": object, "label": object, "round": "int64", "source": object, "annotator": object,
           "labelled_at": object}


# ---------------------------------------------------------------------- field rules


def utc_now() -> datetime:
    """Current time as an aware UTC datetime (the default clock of new labels)."""
    return datetime.now(timezone.utc)


def check_round(value: Any) -> int:
    """``value`` as an int round; ValueError unless a non-negative int (numpy ints accepted)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"round must be a non-negative int, got {value!r}")
    return int(value)


def check_source(value: Any) -> int:
    """The index of ``value`` in :data:`SOURCES`; ValueError naming the known ones otherwise."""
    if value not in SOURCES:
        raise ValueError(f"{value!r} is not a known source (known: {', '.join(SOURCES)})")
    return SOURCES.index(value)


def check_annotator(value: Any) -> str | None:
    """``value`` when a str or None; ValueError otherwise."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"annotator must be a str or None, got {value!r}")
    return value


def utc_iso(value: Any) -> str:
    """Normalise an aware datetime or ISO-8601 string to ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    One fixed format makes timestamps sort correctly as strings and round-trip exactly.
    """
    if isinstance(value, str):
        return _utc_iso_from_str(value)
    if not isinstance(value, datetime):
        raise ValueError(f"labelled_at must be a datetime or ISO-8601 str, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"labelled_at {value.isoformat()!r} has no timezone; give UTC explicitly")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.lru_cache(maxsize=1024)  # a round's labels share a few timestamps: parse each once
def _utc_iso_from_str(text: str) -> str:
    try:  # Python < 3.11 does not read a "Z" suffix
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"labelled_at {text!r} is not an ISO-8601 timestamp") from None
    return utc_iso(value)


def is_missing(value: Any) -> bool:
    """None or a NaN-like (pandas' missing value)."""
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _scalar(value: Any) -> Any:
    """numpy scalars as plain Python values."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------- the error


class AnnotationError(ValueError):
    """Invalid annotations or labels file.

    Parameters
    ----------
    file : str or path-like
        The offending file.
    errors : list of (row, field, message)
        Every problem found; ``row`` (int) and ``field`` (str) may be None for file-level
        problems. The message lists the first 20.
    unit : {"row", "task"}
        What ``row`` counts: CSV lines (header = 1) or Label Studio tasks (1-based).

    Attributes
    ----------
    file : str
    row, field : int or None, str or None
        Location of the first problem.
    errors : list of (row, field, message)
    unit : str
    """

    def __init__(self, file: str | os.PathLike, errors: Sequence[tuple[int | None, str | None, str]],
                 *, unit: str = "row"):
        if not errors:
            raise ValueError("AnnotationError needs at least one error")
        self.file, self.unit, self.errors = os.fspath(file), unit, list(errors)
        self.row, self.field = self.errors[0][:2]
        lines = [self.locate(row, fld) + f": {msg}" for row, fld, msg in self.errors[:_MAX_LISTED]]
        if len(self.errors) > 1:
            more = len(self.errors) - _MAX_LISTED
            lines = [f"{len(self.errors)} errors in {self.file}:"] + lines
            lines += [f"... and {more} more"] if more > 0 else []
        super().__init__("\n".join(lines))

    def locate(self, row: int | None, field: str | None = None) -> str:
        """``"<file>, row 4, field 'label'"`` (parts that are None left out)."""
        return _where(self.file, self.unit, row) + (f", field {field!r}" if field else "")


@dataclass
class MergeReport:
    """What :func:`merge_annotations` did.

    Attributes
    ----------
    n_new : int
        Ids labelled for the first time.
    n_already_present : int
        Annotations already in the labels table with the same label (skipped).
    n_relabelled : int
        Ids whose label changed (``on_conflict="relabel"`` only).
    n_duplicates : int
        Repeated identical annotations across the given files (counted once).
    class_counts : dict of str -> int
        Number of new labels per class.
    files : list of str
        Source files that contributed annotations, in order of first appearance.
    """

    n_new: int = 0
    n_already_present: int = 0
    n_relabelled: int = 0
    n_duplicates: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- the table in memory


def labels_frame(columns: dict[str, Sequence] | None = None) -> pd.DataFrame:
    """A labels table with the fixed column order and dtypes of :data:`LABEL_COLUMNS`.

    Parameters
    ----------
    columns : dict of column -> sequence, optional
        One equally long sequence per column of :data:`LABEL_COLUMNS`; None (or missing columns
        with no rows) gives an empty table.

    Returns
    -------
    DataFrame
        ``round`` int64; ``source``, ``labelled_at`` str; ``id`` and ``label`` as given (str,
        or int for int ids / unnamed classes); ``annotator`` str or None (never NaN).
    """
    columns = columns or {}
    return pd.DataFrame({c: pd.Series(list(columns.get(c, ())), dtype=_DTYPES[c]) for c in LABEL_COLUMNS},
                        columns=list(LABEL_COLUMNS))


def empty_labels() -> pd.DataFrame:
    """The labels table with no rows (what a new workspace starts from)."""
    return labels_frame()


# ---------------------------------------------------------------------- merging


def merge_annotations(
    labels: pd.DataFrame,
    annotations: pd.DataFrame | Iterable[pd.DataFrame],
    *,
    round: int,
    source: str = "human",
    labelled_at: datetime | str | None = None,
    on_conflict: str = "error",
) -> tuple[pd.DataFrame, MergeReport]:
    """Fold validated annotations into the labels table.

    Parameters
    ----------
    labels : DataFrame
        The current labelled set, columns exactly :data:`LABEL_COLUMNS`
        (``id,label,round,source,annotator,labelled_at``), unique ids. Not modified.
    annotations : DataFrame or iterable of DataFrames
        Frames from :func:`read_annotations` (columns :data:`ANNOTATION_COLUMNS`), in the order
        they should apply.
    round : int
        Round stamped on new labels (the round whose snapshot first contains them).
    source : str
        One of :data:`SOURCES` for new labels (relabelled rows get ``"correction"``).
    labelled_at : datetime (aware) or ISO-8601 str, optional
        Timestamp of the new labels; default now (UTC), in ActiveLearningDataset's format.
    on_conflict : {"error", "relabel"}
        What to do when an id already has a *different* label: raise, or update the row.

    Returns
    -------
    labels : DataFrame
        A new frame, same columns and dtypes as :func:`read_labels`: the old rows (relabelled
        ones updated in place), then the new rows in annotation order. Ids are unique.
    report : MergeReport

    Raises
    ------
    AnnotationError
        An id annotated differently in two files, or (``on_conflict="error"``) differently from
        its existing label; all problems of the first offending file are listed. Nothing is
        returned or changed.
    ValueError
        Bad ``labels`` / ``annotations`` columns, ``round``, ``source``, ``on_conflict``.
    """
    if on_conflict not in _ON_CONFLICT:
        raise ValueError(f"on_conflict must be one of {_ON_CONFLICT}, got {on_conflict!r}")
    check_source(source)
    round = check_round(round)
    stamp = utc_iso(utc_now() if labelled_at is None else labelled_at)
    table = _labels_columns(labels)
    incoming = _annotation_rows(annotations)
    report = MergeReport(files=list(dict.fromkeys(r[3] for r in incoming)))
    new, relabel, errors = _plan_merge(table, incoming, on_conflict == "relabel", report)
    if errors:
        file = next(f for f in report.files if f in errors)
        raise AnnotationError(file, sorted(errors[file], key=_error_order), unit=_unit_of(file))
    for old, label, annotator in relabel:
        for column, value in zip(LABEL_COLUMNS[1:], (label, round, "correction", annotator, stamp)):
            table[column][old] = value
    for id_, label, annotator in new:
        for column, value in zip(LABEL_COLUMNS, (id_, label, round, source, annotator, stamp)):
            table[column].append(value)
    result = labels_frame(table)
    if result["id"].duplicated().any():  # cannot happen by construction; never write such a table
        raise AssertionError("merge produced duplicate ids")
    report.n_new, report.n_relabelled = len(new), len(relabel)
    report.class_counts = dict(sorted(Counter(label for _, label, _ in new).items()))
    logger.info("merged annotations from %d file(s): %d new, %d already present, %d relabelled",
                len(report.files), report.n_new, report.n_already_present, report.n_relabelled)
    return result, report


def _plan_merge(table: dict[str, list], incoming: list[tuple], relabel: bool, report: MergeReport):
    """Sort annotations into new ids and relabels (counting the rest in ``report``).

    Returns ``(new [(id, label, annotator)], relabels [(table position, label, annotator)],
    errors {file: [(row, field, message)]})``.
    """
    position = {id_: i for i, id_ in enumerate(table["id"])}
    seen: dict[str, tuple[str, str, int]] = {}  # id -> (label, file, row) of its first annotation
    new, relabels, errors = [], [], {}
    for id_, label, annotator, file, row in incoming:
        if id_ in seen:
            first_label, first_file, first_row = seen[id_]
            if label != first_label:
                errors.setdefault(file, []).append((row, "label", (
                    f"sample {id_!r} is labelled {label!r} here but {first_label!r} in "
                    f"{_where(first_file, _unit_of(first_file), first_row)}")))
            report.n_duplicates += 1
            continue
        seen[id_] = (label, file, row)
        old = position.get(id_)
        if old is None:
            new.append((id_, label, annotator))
        elif label == table["label"][old]:
            report.n_already_present += 1  # re-ingesting a file must not duplicate labels
        elif relabel:
            relabels.append((old, label, annotator))
        else:
            errors.setdefault(file, []).append((row, "label", (
                f"sample {id_!r} is already labelled {table['label'][old]!r} (round {table['round'][old]}); "
                f"this file says {label!r} (pass on_conflict='relabel' to correct it)")))
    return new, relabels, errors


def _annotation_rows(annotations) -> list[tuple[str, str, str | None, str, int]]:
    """(id, label, annotator, source_file, row) for every annotation, in order."""
    frames = [annotations] if isinstance(annotations, pd.DataFrame) else list(annotations)
    rows = []
    for frame in frames:
        missing = [c for c in ANNOTATION_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"annotations lack column(s) {missing}; expected {list(ANNOTATION_COLUMNS)}")
        rows += [(str(i), str(lab), _optional_str(a), str(f), int(r)) for i, lab, a, f, r in
                 zip(*(frame[c].tolist() for c in ANNOTATION_COLUMNS))]
    return rows


def _labels_columns(labels: pd.DataFrame) -> dict[str, list]:
    """The labels table as plain column lists (copies), checked: exact columns, unique ids."""
    if sorted(labels.columns) != sorted(LABEL_COLUMNS):
        raise ValueError(f"labels must have columns {list(LABEL_COLUMNS)}, got {list(labels.columns)}")
    table = {c: labels[c].tolist() for c in LABEL_COLUMNS}
    table["id"] = [str(i) for i in table["id"]]
    table["label"] = [str(x) for x in table["label"]]
    table["annotator"] = [_optional_str(a) for a in table["annotator"]]
    duplicated = pd.Series(table["id"]).duplicated()
    if duplicated.any():
        raise ValueError(f"labels hold duplicate id {table['id'][int(duplicated.to_numpy().argmax())]!r}")
    return table


def _optional_str(value: Any) -> str | None:
    """None for missing (None, NaN, ""), else the str."""
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    return str(value)


# ---------------------------------------------------------------------- labels.csv


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Load ``data/labels.csv``.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    DataFrame
        Columns exactly :data:`LABEL_COLUMNS`; ``id``, ``label``, ``source``, ``labelled_at``
        str (timestamps normalised to ActiveLearningDataset's format), ``round`` int64,
        ``annotator`` str or None. An empty frame with these columns when the file is missing.

    Raises
    ------
    AnnotationError
        Listing every problem: missing or unknown columns, wrong field count, empty id or label,
        duplicate id, round not a non-negative integer, unknown source, bad timestamp.
    """
    path = Path(path)
    table: dict[str, list] = {c: [] for c in LABEL_COLUMNS}
    if not path.exists():
        logger.info("%s does not exist: no labels yet", path)
        return labels_frame(table)
    rows, errors = _csv_rows(path, _read_text(path, "row"), required=LABEL_COLUMNS, extra="error")
    first_row: dict[str, int] = {}
    for row, values in rows:
        problems = _label_row_problems(values, first_row.get(values["id"]) if values["id"] else None)
        errors += [(row, fld, msg) for fld, msg in problems]
        first_row.setdefault(values["id"], row)
        if not problems:
            values["round"] = int(values["round"])
            values["annotator"] = values["annotator"] or None
            values["labelled_at"] = utc_iso(values["labelled_at"])
            for c in LABEL_COLUMNS:
                table[c].append(values[c])
    if errors:
        raise AnnotationError(path, sorted(errors, key=_error_order))
    logger.debug("read %d labels from %s", len(table["id"]), path)
    return labels_frame(table)


def _label_row_problems(values: dict[str, str], duplicate_of: int | None) -> list[tuple[str, str]]:
    """(field, message) for each invalid field of one labels.csv row (all text), by the field rules."""
    problems = [(c, "is empty") for c in ("id", "label") if not values[c]]
    if duplicate_of is not None:
        problems.append(("id", f"{values['id']!r} is a duplicate of row {duplicate_of}"))
    if not (values["round"].isascii() and values["round"].isdigit()):
        problems.append(("round", f"{values['round']!r} is not a non-negative integer"))
    for column, rule in (("source", check_source), ("labelled_at", utc_iso)):
        try:
            rule(values[column])
        except ValueError as exc:
            problems.append((column, str(exc)))
    return problems


def write_labels(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Store the labels table atomically, sorted by (round, labelled_at, id).

    Parameters
    ----------
    path : str or path-like
        Destination (``data/labels.csv``); its directory must exist.
    frame : DataFrame
        Columns :data:`LABEL_COLUMNS` (any order), unique ids.

    Raises
    ------
    AnnotationError
        Duplicate ids (field ``id``); nothing is written.
    ValueError
        Wrong columns.
    """
    if sorted(frame.columns) != sorted(LABEL_COLUMNS):
        raise ValueError(f"labels must have columns {list(LABEL_COLUMNS)}, got {list(frame.columns)}")
    ids = frame["id"].astype(str)
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise AnnotationError(path, [(None, "id", f"duplicate ids {_preview(duplicated)}; nothing written")])
    frame = frame.assign(id=ids).sort_values(["round", "labelled_at", "id"], kind="stable")
    text = frame.to_csv(index=False, columns=list(LABEL_COLUMNS), lineterminator="\n")
    atomic_write_text(path, text)
    logger.info("wrote %d labels to %s", len(frame), path)


# ---------------------------------------------------------------------- CSV and message helpers


def _read_text(path: Path, unit: str) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); AnnotationError when undecodable or empty."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(path, [(None, None, f"cannot be read: {exc.strerror or exc}")], unit=unit) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise AnnotationError(path, [(None, None, f"is not UTF-8 text: byte {data[exc.start]:#04x} "
                                                  f"on line {line}")], unit=unit) from None
    if not text.strip():
        raise AnnotationError(path, [(None, None, "is empty")], unit=unit)
    return text


def _csv_rows(path: Path, text: str, *, required: Sequence[str], optional: Sequence[str] = (),
              extra: str) -> tuple[list[tuple[int, dict[str, str]]], list[tuple]]:
    """(line, {column: stripped value}) per data record of a CSV, plus per-row errors.

    ``extra`` says what to do with columns outside required + optional: "ignore" (warn) or
    "error". Header problems raise at once: no row can be read without a header.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, errors, start = [], [], 1
    try:
        header = [h.strip() for h in next(reader)]
        _check_header(path, header, required, optional, extra, reader.line_num)
        wanted = {c: header.index(c) for c in (*required, *optional) if c in header}
        start = reader.line_num + 1
        for record in reader:
            row, start = start, reader.line_num + 1  # a quoted field may span lines: report its first
            if not record:  # blank line
                continue
            if len(record) != len(header):
                errors.append((row, None, f"expected {len(header)} fields, got {len(record)}"))
                continue
            rows.append((row, {c: record[i].strip() for c, i in wanted.items()}))
    except csv.Error as exc:
        errors.append((start, None, f"malformed CSV: {exc}"))
    return rows, errors


def _check_header(path, header, required, optional, extra, line) -> None:
    problems = []
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        problems.append(f"duplicate column(s) {duplicated}")
    missing = [c for c in required if c not in header]
    if missing:
        problems.append(f"missing required column(s) {missing}")
    unknown = [h for h in header if h not in required and h not in optional]
    if unknown and extra == "error":
        problems.append(f"unknown column(s) {unknown}")
    elif unknown:
        logger.warning("%s: ignoring column(s) %s", path, unknown)
    if problems:
        expected = list(required) + [f"[{c}]" for c in optional]
        raise AnnotationError(path, [(line, None, f"{'; '.join(problems)} (header {header}, expected "
                                                  f"{expected})")])


def _unit_of(file: str | os.PathLike) -> str:
    """What a row number counts in ``file``: Label Studio tasks for JSON, lines for CSV."""
    return "task" if os.fspath(file).lower().endswith(".json") else "row"


def _where(file: str | os.PathLike, unit: str, row: int | None) -> str:
    return os.fspath(file) + (f", {unit} {row}" if row is not None else "")


def _error_order(error: tuple) -> tuple:
    """File-level errors first, then by row; stable otherwise."""
    return (error[0] is not None, error[0] or 0)


def _preview(items: Sequence[str]) -> str:
    """Comma-separated, cut after 20 items."""
    shown = ", ".join(map(str, items[:_MAX_LISTED]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")
