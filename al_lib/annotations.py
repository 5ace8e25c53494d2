"""Returned annotations → the labelled set (``data/labels.csv``).

Annotators drop files into a workspace's ``data/inbox/``: a CSV ``id,label[,annotator]`` or a
Label Studio "JSON" export (a list of task objects). :func:`read_annotations` parses and validates
one such file, :func:`merge_annotations` folds validated annotations into the labels table, and
:func:`read_labels` / :func:`write_labels` load and (atomically) store that table.

Every problem raises :class:`AnnotationError` naming the file, the row (CSV line, header = 1) or
Label Studio task (1-based index in the export) and the field; all problems of a file are reported
at once so an annotator can fix them in one go. Nothing is written on error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from al_lib.atomic import atomic_write_text
from al_lib.data.active_dataset import (
    HISTORY_COLUMNS,
    SOURCES,
    _check_classes,
    _check_round,
    _source_code,
    _utc_iso,
    utc_now,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ANNOTATION_COLUMNS",
    "AnnotationError",
    "MergeReport",
    "merge_annotations",
    "read_annotations",
    "read_labels",
    "write_labels",
]

#: Columns of the frame returned by :func:`read_annotations`.
ANNOTATION_COLUMNS = ("id", "label", "annotator", "source_file", "row")
_MAX_LISTED = 20  # errors spelled out in a message; ``.errors`` keeps them all
_ON_CONFLICT = ("error", "relabel")


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


# ---------------------------------------------------------------------- reading annotations


def read_annotations(
    path: str | os.PathLike,
    *,
    known_ids: Iterable[str],
    classes: Sequence[str],
    label_studio_from_name: str | None = None,
) -> pd.DataFrame:
    """Parse and validate one returned annotation file.

    Parameters
    ----------
    path : str or path-like
        ``.csv`` with columns ``id,label`` and optionally ``annotator`` (other columns are
        ignored with a warning), or ``.json``: a Label Studio "JSON" export (a list of tasks).
        For a task, the sample id is ``task["data"]["sample_id"]`` (what
        :func:`al_lib.export.label_studio_tasks` writes), falling back to ``task["data"]["id"]``;
        the label is the single choice of the latest (by ``updated_at``, else list order)
        annotation that is not ``was_cancelled`` (legacy ``completions`` are read too); tasks
        without such an annotation are skipped; the annotator is ``completed_by`` (an int id, or
        the ``email`` of a dict) as str.
    known_ids : iterable of str
        Sample ids of the workspace; any other id is an error.
    classes : sequence of str
        Class names; any other label is an error.
    label_studio_from_name : str, optional
        Only read Label Studio ``choices`` results from this control (``from_name``); needed
        when the labelling config has several ``<Choices>``.

    Returns
    -------
    DataFrame
        Columns :data:`ANNOTATION_COLUMNS` (``id,label,annotator,source_file,row``): one row per
        annotated sample in file order; ``id``/``label`` str, ``annotator`` str or None,
        ``source_file`` the path as given, ``row`` the CSV line or Label Studio task index.
        Identical repeats within the file are collapsed to their first occurrence.

    Raises
    ------
    AnnotationError
        Listing every problem of the file: unsupported suffix, undecodable or empty file,
        malformed CSV/JSON or Label Studio structure, empty or unknown id or label, one id with
        two different labels.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        message = f"unsupported file type {path.suffix!r} (expected .csv or .json)"
        raise AnnotationError(path, [(None, None, message)])
    unit = _unit_of(path)
    text = _read_text(path, unit)
    if suffix == ".csv":
        records, errors = _csv_annotation_records(path, text)
    else:
        records, errors = _label_studio_records(path, text, label_studio_from_name)
    known = known_ids if isinstance(known_ids, (set, frozenset, dict)) else set(known_ids)
    class_names, _ = _check_classes(list(classes))
    records, more_errors = _check_records(records, known, class_names, unit)
    errors += more_errors
    if errors:
        raise AnnotationError(path, sorted(errors, key=_error_order), unit=unit)
    if not records:
        logger.warning("%s holds no annotations", path)
    frame = pd.DataFrame({
        "id": pd.Series([r[1] for r in records], dtype=str),
        "label": pd.Series([r[2] for r in records], dtype=str),
        "annotator": pd.Series([r[3] for r in records], dtype=object),
        "source_file": pd.Series([os.fspath(path)] * len(records), dtype=str),
        "row": pd.Series([r[0] for r in records], dtype="int64"),
    }, columns=list(ANNOTATION_COLUMNS))
    logger.info("read %d annotations from %s", len(frame), path)
    return frame


def _csv_annotation_records(path: Path, text: str) -> tuple[list[tuple], list[tuple]]:
    """(row, id, label, annotator) per CSV record, plus structural errors."""
    rows, errors = _csv_rows(path, text, required=("id", "label"), optional=("annotator",), extra="ignore")
    records = [(row, v["id"], v["label"], v.get("annotator") or None) for row, v in rows]
    return records, errors


def _check_records(records: list[tuple], known_ids, classes: list[str], unit: str):
    """Keep valid records, collapse identical repeats; errors for bad ids, labels, conflicts."""
    errors, kept, first = [], [], {}
    n_repeats = 0
    for record in records:
        row, id_, label = record[:3]
        if not id_:
            errors.append((row, "id", "is empty"))
        elif id_ not in known_ids:
            errors.append((row, "id", f"{id_!r} is not a known sample id"))
        if not label:
            errors.append((row, "label", "is empty"))
        elif label not in classes:
            errors.append((row, "label", f"{label!r} is not a known class (known: {_preview(classes)})"))
        if id_ in first:
            first_row, first_label = first[id_]
            if label != first_label:
                errors.append((row, "label", f"sample {id_!r} is labelled {label!r} here but "
                                             f"{first_label!r} in {unit} {first_row}"))
            n_repeats += 1
            continue
        if id_:
            first[id_] = (row, label)
        kept.append(record)
    if n_repeats:
        logger.info("collapsed %d repeated annotations", n_repeats)
    return kept, errors


# ---------------------------------------------------------------------- Label Studio


class _Problem(Exception):
    """A malformed Label Studio task: ``field`` and message, caught per task."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _label_studio_records(path: Path, text: str, from_name: str | None) -> tuple[list[tuple], list[tuple]]:
    """(task index, id, label, annotator) per annotated task, plus per-task errors."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, [(None, None, f"invalid JSON at line {exc.lineno}, column {exc.colno}: "
                                                  f"{exc.msg}")], unit="task") from None
    if not isinstance(tasks, list):
        raise AnnotationError(path, [(None, None, "expected a list of tasks (a Label Studio 'JSON' export), "
                                                  f"got a JSON {_json_type(tasks)}")], unit="task")
    records, errors, n_skipped = [], [], 0
    for index, task in enumerate(tasks, start=1):
        try:
            record = _task_record(task, from_name)
        except _Problem as problem:
            errors.append((index, problem.field, problem.message))
            continue
        if record is None:
            n_skipped += 1
        else:
            records.append((index, *record))
    if n_skipped:
        logger.info("%s: skipped %d of %d tasks without a (non-cancelled) annotation", path, n_skipped, len(tasks))
    return records, errors


def _task_record(task: Any, from_name: str | None) -> tuple[str, str, str | None] | None:
    """(sample id, label, annotator) of one task; None when it has no live annotation."""
    if not isinstance(task, dict):
        raise _Problem(None, f"expected a task object, got a JSON {_json_type(task)}")
    sample_id = _task_sample_id(task)
    key = "annotations" if "annotations" in task else "completions" if "completions" in task else None
    if key is None:
        raise _Problem("annotations", "is missing (is this a Label Studio export, not a task list?)")
    annotations = task[key]
    if not isinstance(annotations, list):
        raise _Problem(key, f"expected a list, got a JSON {_json_type(annotations)}")
    for j, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise _Problem(f"{key}[{j}]", f"expected an object, got a JSON {_json_type(annotation)}")
    live = [(j, a) for j, a in enumerate(annotations) if not a.get("was_cancelled", False)]
    if not live:
        return None
    j, annotation = _latest(live)
    return sample_id, _single_choice(annotation, f"{key}[{j}].result", from_name), \
        _annotator(annotation.get("completed_by"))


def _task_sample_id(task: dict) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise _Problem("data", "is missing or not an object")
    for key in ("sample_id", "id"):  # our exported tasks carry sample_id; plain imports may use id
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise _Problem(f"data.{key}", f"expected a str or int sample id, got {value!r}")
            return str(value).strip()
    raise _Problem("data.sample_id", "is missing (and there is no data.id)")


def _latest(live: list[tuple[int, dict]]) -> tuple[int, dict]:
    """The most recently updated annotation; list order when a timestamp is missing or bad."""
    stamps = [_sortable_time(a.get("updated_at")) for _, a in live]
    if any(s is None for s in stamps):
        return live[-1]
    return live[max(range(len(live)), key=lambda i: (stamps[i], i))]  # equal stamps: the later one


def _sortable_time(value: Any) -> str | None:
    """An aware ISO timestamp in one fixed format (sorts as a string), else None."""
    try:
        return _utc_iso(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _single_choice(annotation: dict, where: str, from_name: str | None) -> str:
    result = annotation.get("result")
    if not isinstance(result, list):
        raise _Problem(where, f"expected a list, got a JSON {_json_type(result)}")
    items = [r for r in result if isinstance(r, dict) and r.get("type") == "choices"
             and (from_name is None or r.get("from_name") == from_name)]
    control = f" from {from_name!r}" if from_name else ""
    if len(items) != 1:
        hint = " (pass label_studio_from_name to pick one)" if len(items) > 1 and from_name is None else ""
        raise _Problem(where, f"expected exactly one 'choices' result{control}, got {len(items)}{hint}")
    value = items[0].get("value")
    choices = value.get("choices") if isinstance(value, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], str):
        raise _Problem(where, f"expected exactly one choice, got {choices!r}")
    return choices[0].strip()


def _annotator(completed_by: Any) -> str | None:
    """Label Studio's ``completed_by``: an int user id, or a user dict (email preferred)."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    if completed_by is None or completed_by == "":
        return None
    return str(completed_by)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


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
        The current labelled set, columns exactly :data:`HISTORY_COLUMNS`
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
    _source_code(source)  # ValueError unless one of SOURCES
    round = _check_round(round)
    stamp = _utc_iso(utc_now() if labelled_at is None else labelled_at)
    table = _labels_columns(labels)
    incoming = _annotation_rows(annotations)
    report = MergeReport(files=list(dict.fromkeys(r[3] for r in incoming)))
    new, relabel, errors = _plan_merge(table, incoming, on_conflict == "relabel", report)
    if errors:
        file = next(f for f in report.files if f in errors)
        raise AnnotationError(file, sorted(errors[file], key=_error_order), unit=_unit_of(file))
    for old, label, annotator in relabel:
        for column, value in zip(HISTORY_COLUMNS[1:], (label, round, "correction", annotator, stamp)):
            table[column][old] = value
    for id_, label, annotator in new:
        for column, value in zip(HISTORY_COLUMNS, (id_, label, round, source, annotator, stamp)):
            table[column].append(value)
    result = _labels_frame(table)
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
    if sorted(labels.columns) != sorted(HISTORY_COLUMNS):
        raise ValueError(f"labels must have columns {list(HISTORY_COLUMNS)}, got {list(labels.columns)}")
    table = {c: labels[c].tolist() for c in HISTORY_COLUMNS}
    table["id"] = [str(i) for i in table["id"]]
    table["label"] = [str(x) for x in table["label"]]
    table["annotator"] = [_optional_str(a) for a in table["annotator"]]
    duplicated = pd.Series(table["id"]).duplicated()
    if duplicated.any():
        raise ValueError(f"labels hold duplicate id {table['id'][int(duplicated.to_numpy().argmax())]!r}")
    return table


def _labels_frame(table: dict[str, list]) -> pd.DataFrame:
    """A labels frame with fixed dtypes (annotator object: None stays None, as in history())."""
    dtypes = {"id": str, "label": str, "round": "int64", "source": str, "annotator": object, "labelled_at": str}
    return pd.DataFrame({c: pd.Series(table[c], dtype=dtypes[c]) for c in HISTORY_COLUMNS},
                        columns=list(HISTORY_COLUMNS))


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
        Columns exactly :data:`HISTORY_COLUMNS`; ``id``, ``label``, ``source``, ``labelled_at``
        str (timestamps normalised to ActiveLearningDataset's format), ``round`` int64,
        ``annotator`` str or None. An empty frame with these columns when the file is missing.

    Raises
    ------
    AnnotationError
        Listing every problem: missing or unknown columns, wrong field count, empty id or label,
        duplicate id, round not a non-negative integer, unknown source, bad timestamp.
    """
    path = Path(path)
    table: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    if not path.exists():
        logger.info("%s does not exist: no labels yet", path)
        return _labels_frame(table)
    rows, errors = _csv_rows(path, _read_text(path, "row"), required=HISTORY_COLUMNS, extra="error")
    first_row: dict[str, int] = {}
    for row, values in rows:
        problems = _label_row_problems(values, first_row.get(values["id"]) if values["id"] else None)
        errors += [(row, fld, msg) for fld, msg in problems]
        first_row.setdefault(values["id"], row)
        if not problems:
            values["round"] = int(values["round"])
            values["annotator"] = values["annotator"] or None
            values["labelled_at"] = _utc_iso(values["labelled_at"])
            for c in HISTORY_COLUMNS:
                table[c].append(values[c])
    if errors:
        raise AnnotationError(path, sorted(errors, key=_error_order))
    logger.debug("read %d labels from %s", len(table["id"]), path)
    return _labels_frame(table)


def _label_row_problems(values: dict[str, str], duplicate_of: int | None) -> list[tuple[str, str]]:
    """(field, message) for each invalid field of one labels.csv row."""
    problems = [(c, "is empty") for c in ("id", "label") if not values[c]]
    if duplicate_of is not None:
        problems.append(("id", f"{values['id']!r} is a duplicate of row {duplicate_of}"))
    if not (values["round"].isascii() and values["round"].isdigit()):
        problems.append(("round", f"{values['round']!r} is not a non-negative integer"))
    if values["source"] not in SOURCES:
        problems.append(("source", f"{values['source']!r} is not a known source (known: {_preview(SOURCES)})"))
    try:
        _utc_iso(values["labelled_at"])
    except ValueError as exc:
        problems.append(("labelled_at", str(exc)))
    return problems


def write_labels(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Store the labels table atomically, sorted by (round, labelled_at, id).

    Parameters
    ----------
    path : str or path-like
        Destination (``data/labels.csv``); its directory must exist.
    frame : DataFrame
        Columns :data:`HISTORY_COLUMNS` (any order), unique ids.

    Raises
    ------
    AnnotationError
        Duplicate ids (field ``id``); nothing is written.
    ValueError
        Wrong columns.
    """
    if sorted(frame.columns) != sorted(HISTORY_COLUMNS):
        raise ValueError(f"labels must have columns {list(HISTORY_COLUMNS)}, got {list(frame.columns)}")
    ids = frame["id"].astype(str)
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise AnnotationError(path, [(None, "id", f"duplicate ids {_preview(duplicated)}; nothing written")])
    frame = frame.assign(id=ids).sort_values(["round", "labelled_at", "id"], kind="stable")
    text = frame.to_csv(index=False, columns=list(HISTORY_COLUMNS), lineterminator="\n")
    atomic_write_text(path, text)
    logger.info("wrote %d labels to %s", len(frame), path)


# ---------------------------------------------------------------------- shared helpers


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
