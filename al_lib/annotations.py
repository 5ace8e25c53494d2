"""Returned annotation files → validated annotations, ready to merge into the labels table.

Annotators drop files into a workspace's ``data/inbox/``: a CSV ``id,label[,annotator]`` or a
Label Studio export. :func:`read_annotations` parses and validates one such file;
:func:`al_lib.labels.merge_annotations` folds the result into the labels table (the labels
table itself — schema, ``labels.csv`` I/O, conflicts — lives in :mod:`al_lib.labels`; its names
are re-exported here for convenience).

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
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from al_lib import label_studio
from al_lib.data.active_dataset import _check_classes
from al_lib.labels import (
    ANNOTATION_COLUMNS,
    AnnotationError,
    MergeReport,
    _csv_rows,
    _error_order,
    _preview,
    _read_text,
    _unit_of,
    merge_annotations,
    read_labels,
    write_labels,
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
        ignored with a warning), or a Label Studio export (:mod:`al_lib.label_studio`): "CSV"
        (recognised by its ``annotation_id`` / ``sample_id`` columns), "JSON" (a list of tasks)
        or "JSON-MIN" (``.json``). For a task, the sample id is ``data.sample_id`` (what
        :func:`al_lib.export.label_studio_tasks` writes; JSON falls back to ``data.id``); each
        annotator's answer is the single choice of their latest (by ``updated_at``, else list
        order) annotation that is not ``was_cancelled`` (legacy ``completions`` are read too);
        tasks without one are skipped. A sample whose answers all agree gives one row whose
        annotator names every annotator (``completed_by``: an int id, or the ``email`` of a dict;
        joined by ``";"``); answers that disagree are an error naming the annotators and labels
        — never resolved by "latest wins".
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
        malformed CSV/JSON or Label Studio structure (with a hint naming the formats read),
        empty or unknown id or label, one id with two different labels (annotators who disagree).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        message = f"unsupported file type {path.suffix!r} (expected .csv or .json)"
        raise AnnotationError(path, [(None, None, message)])
    unit = _unit_of(path)
    text = _read_text(path, unit)
    if suffix == ".csv":
        records, errors = _csv_annotation_records(path, text, label_studio_from_name)
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


def _csv_annotation_records(path: Path, text: str, from_name: str | None = None) -> tuple[list[tuple], list[tuple]]:
    """(row, id, label, annotator) per CSV record, plus structural errors (a Label Studio CSV export
    is recognised by its header and read by :mod:`al_lib.label_studio`)."""
    try:
        header = [h.strip() for h in next(csv.reader(io.StringIO(text, newline="")), [])]
    except csv.Error:
        header = []  # _csv_rows reports it
    if label_studio.is_csv_export(header):
        return _label_studio_csv_records(path, text, header, from_name)
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


def _label_studio_records(path: Path, text: str, from_name: str | None) -> tuple[list[tuple], list[tuple]]:
    """(task index, id, label, annotator) per agreed sample of a JSON / JSON-MIN export, plus errors."""
    try:
        items = json.loads(text)
        answers, errors, n_skipped = label_studio.json_answers(items, from_name)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, [(None, None, f"invalid JSON at line {exc.lineno}, column {exc.colno}: "
                                                  f"{exc.msg}")], unit="task") from None
    except RecursionError:  # e.g. 100k nested lists: a bad file, not a crash
        raise AnnotationError(path, [(None, None, "is nested too deeply to be an annotation export")],
                              unit="task") from None
    except label_studio.ExportProblem as problem:
        raise AnnotationError(path, [(None, None, problem.message)], unit="task") from None
    if n_skipped:
        logger.info("%s: skipped %d of %d tasks without a (non-cancelled) annotation", path, n_skipped, len(items))
    records, disagreements = label_studio.combine_answers(answers, unit="task")
    return records, errors + disagreements


def _label_studio_csv_records(path: Path, text: str, header: list[str], from_name: str | None):
    """(line, id, label, annotator) per agreed sample of a Label Studio CSV export, plus errors."""
    if "sample_id" not in header:
        raise AnnotationError(path, [(1, "sample_id", "is missing: this Label Studio CSV export's tasks carry no "
                                                      "sample id; import the round's query tasks (exported by "
                                                      "al_lib.export.label_studio_tasks) and export again")])
    choice = from_name or "label"
    others = tuple(h for h in header if h not in ("sample_id", choice))
    rows, errors = _csv_rows(path, text, required=("sample_id", choice), optional=others, extra="ignore")
    answers, more = label_studio.csv_answers(rows, choice)
    records, disagreements = label_studio.combine_answers(answers, unit="row")
    return records, errors + more + disagreements
