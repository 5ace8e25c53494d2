"""Label Studio exports → one answer per annotated sample, disagreements between annotators surfaced.

Label Studio exports a project's annotations in several formats; three are read here:

- **JSON** (``exportType=JSON``): a list of tasks, each with ``data`` (``sample_id``, as
  :func:`al_lib.export.label_studio_tasks` writes it, or ``id``) and a list of ``annotations``
  (legacy: ``completions``), each with ``completed_by`` and a ``result`` holding one
  ``choices`` item;
- **JSON-MIN** (``exportType=JSON_MIN``): a list of flat objects, one per annotation: the task's
  data fields (``sample_id``, ``image``, ...), ``id`` (the Label Studio task id), ``annotator``,
  ``annotation_id``, ``updated_at`` and the choice under the control's name (``label``);
- **CSV** (``exportType=CSV``): the JSON-MIN fields as columns, one row per annotation.

Each parser returns :class:`Answer` objects (one per annotator per task: an annotator's latest
annotation of a task is their answer; cancelled/skipped annotations are no answer) plus per-task
problems ``(row, field, message)``. :func:`combine_answers` then keeps one record per sample when
every answer agrees (all annotators named) and turns every disagreement into a problem naming the
sample, the tasks and each annotator's label: nothing is resolved silently, no "latest wins".
:func:`split_disagreements` does the same on a JSON export's task list, for a caller that holds
disagreeing tasks back (``al labelstudio pull``) instead of refusing the whole export.

Pure Python; :mod:`al_lib.annotations` validates ids and classes and reads the files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from al_lib.labels import utc_iso

logger = logging.getLogger(__name__)

__all__ = [
    "EXPORT_HINT",
    "Answer",
    "Disagreement",
    "ExportProblem",
    "combine_answers",
    "csv_answers",
    "is_csv_export",
    "json_answers",
    "split_disagreements",
]

#: The export formats this module reads, as a user picks them in Label Studio's Export dialog.
EXPORT_HINT = "export 'JSON', 'JSON-MIN' or 'CSV' from Label Studio"
#: Joins the annotators of an agreed sample in the ``annotator`` field.
ANNOTATOR_SEPARATOR = ";"
_DEFAULT_FROM_NAME = "label"  # al_lib.export.label_studio_config's <Choices name>
_MIN_MARKERS = ("annotation_id", "annotator")  # fields only the flat exports have


class ExportProblem(Exception):
    """A malformed task or row: ``field`` and ``message`` (collected per task by the parsers)."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


@dataclass(frozen=True)
class Answer:
    """One annotator's answer for one task.

    Attributes
    ----------
    row : int
        Where it is: the 1-based task (JSON) or object (JSON-MIN) index, or the CSV line.
    sample_id, label : str
        Stripped; not yet checked against the workspace's ids and classes.
    annotator : str or None
        ``completed_by`` (the user's email when exported, else their id) / ``annotator``.
    task : str or None
        Label Studio's task id, when the export has it.
    """

    row: int
    sample_id: str
    label: str
    annotator: str | None
    task: str | None = None


@dataclass(frozen=True)
class Disagreement:
    """Annotators gave one sample different labels.

    Attributes
    ----------
    sample_id : str
    answers : tuple of Answer
        Every answer for the sample, in file order (two or more distinct labels among them).
    """

    sample_id: str
    answers: tuple[Answer, ...]

    def message(self, unit: str | None, *, outcome: str = "not imported", then: str = "export again") -> str:
        """``"annotators disagree on sample 's1' (task 1, Label Studio task 7): a@x.org says 'cat', b says
        'dog'; not imported: make the answers agree in Label Studio (...) and export again"``.

        ``unit`` None names the Label Studio task only; ``outcome`` and ``then`` end the message.
        """
        places = {_place(a, unit) for a in self.answers}
        one_place = f" ({places.pop()})" if len(places) == 1 else ""
        said = ", ".join(f"{_who(a.annotator)} says {a.label!r}"
                         + ("" if one_place or not _place(a, unit) else f" ({_place(a, unit)})")
                         for a in self.answers)
        return (f"annotators disagree on sample {self.sample_id!r}{one_place if one_place != ' ()' else ''}: "
                f"{said}; {outcome}: make the answers agree in Label Studio (fix or delete an annotation) "
                f"and {then}")


# ---------------------------------------------------------------------- JSON and JSON-MIN


def json_answers(items: Any, from_name: str | None = None) -> tuple[list[Answer], list[tuple], int]:
    """Answers of a parsed Label Studio JSON or JSON-MIN export.

    Parameters
    ----------
    items : object
        ``json.loads`` of the export: a list of task objects (JSON) or of flat annotation objects
        (JSON-MIN; recognised by ``annotation_id`` / ``annotator`` fields and no ``data``).
    from_name : str, optional
        The ``<Choices>`` control to read; JSON: only needed when a result holds several
        ``choices`` items; JSON-MIN: the field holding the choice (default ``"label"``).

    Returns
    -------
    answers : list of Answer
        In file order; one per annotator per task.
    errors : list of (row, field, message)
        Per-task problems (1-based index).
    n_skipped : int
        Tasks with no answer (not annotated, or every annotation cancelled).

    Raises
    ------
    ExportProblem
        The whole file is of the wrong shape (not a list, another export format); ``field`` None.
    """
    if isinstance(items, dict) and {"images", "categories"} <= set(items):
        raise ExportProblem(None, f"this is a COCO export, which holds no image classes: {EXPORT_HINT}")
    if not isinstance(items, list):
        raise ExportProblem(None, "expected a list of tasks (a Label Studio 'JSON' or 'JSON-MIN' export), "
                                  f"got a JSON {json_type(items)}")
    flat = _is_json_min(items)
    answers, errors, n_skipped = [], [], 0
    for index, item in enumerate(items, start=1):
        try:
            found = _min_answers(index, item, from_name) if flat else _task_answers(index, item, from_name)
        except ExportProblem as problem:
            errors.append((index, problem.field, problem.message))
            continue
        answers += found
        n_skipped += not found
    return answers, errors, n_skipped


def _is_json_min(items: list) -> bool:
    first = next((item for item in items if isinstance(item, dict)), None)
    return (first is not None and "data" not in first and "annotations" not in first
            and "completions" not in first and any(k in first for k in _MIN_MARKERS))


def _task_answers(index: int, task: Any, from_name: str | None) -> list[Answer]:
    """Each annotator's latest live answer in one JSON task."""
    if not isinstance(task, dict):
        raise ExportProblem(None, f"expected a task object, got a JSON {json_type(task)}")
    sample_id = _task_sample_id(task)
    key = "annotations" if "annotations" in task else "completions" if "completions" in task else None
    if key is None:
        raise ExportProblem("annotations", "is missing (is this a Label Studio export, not a task list? "
                                           f"{EXPORT_HINT})")
    annotations = task[key]
    if not isinstance(annotations, list):
        raise ExportProblem(key, f"expected a list, got a JSON {json_type(annotations)}")
    for j, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise ExportProblem(f"{key}[{j}]", f"expected an object, got a JSON {json_type(annotation)}")
    live = [(j, a) for j, a in enumerate(annotations) if not a.get("was_cancelled", False)]
    by_annotator: dict[Any, list[tuple[int, dict]]] = {}
    for j, annotation in live:  # an unnamed annotation counts as its own annotator
        name = annotator_name(annotation.get("completed_by"))
        by_annotator.setdefault(name if name is not None else ("unnamed", j), []).append((j, annotation))
    task_id = _optional_id(task.get("id"))
    answers = []
    for group in by_annotator.values():
        j, annotation = _latest(group)
        label = _single_choice(annotation.get("result"), f"{key}[{j}].result", from_name)
        answers.append(Answer(index, sample_id, label, annotator_name(annotation.get("completed_by")), task_id))
    return answers


def _min_answers(index: int, item: Any, from_name: str | None) -> list[Answer]:
    """The answer of one JSON-MIN object (none for a task exported without annotation)."""
    if not isinstance(item, dict):
        raise ExportProblem(None, f"expected an object, got a JSON {json_type(item)}")
    name = from_name or _DEFAULT_FROM_NAME
    if name not in item:
        if item.get("annotation_id") is None:
            return []  # an unannotated task (exported with "all tasks")
        raise ExportProblem(name, _missing_choice_message(name))
    sample_id = _flat_sample_id(item.get("sample_id"), "sample_id")
    label = _flat_choice(item[name], name)
    return [Answer(index, sample_id, label, annotator_name(item.get("annotator")), _optional_id(item.get("id")))]


def _task_sample_id(task: dict) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise ExportProblem("data", "is missing or not an object")
    for key in ("sample_id", "id"):  # our exported tasks carry sample_id; plain imports may use id
        if key in data:
            return _flat_sample_id(data[key], f"data.{key}")
    raise ExportProblem("data.sample_id", "is missing (and there is no data.id)")


def _flat_sample_id(value: Any, field: str) -> str:
    if value is None:
        raise ExportProblem(field, "is missing: only the query tasks exported for Label Studio "
                                   "(al_lib.export.label_studio_tasks) carry the sample id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ExportProblem(field, f"expected a str or int sample id, got {value!r}")
    return str(value).strip()


def _latest(group: list[tuple[int, dict]]) -> tuple[int, dict]:
    """The most recently updated annotation of one annotator; list order when a stamp is missing or bad."""
    stamps = [_sortable_time(a.get("updated_at")) for _, a in group]
    if any(s is None for s in stamps):
        return group[-1]
    return group[max(range(len(group)), key=lambda i: (stamps[i], i))]  # equal stamps: the later one


def _sortable_time(value: Any) -> str | None:
    """An aware ISO timestamp in one fixed format (sorts as a string), else None."""
    try:
        return utc_iso(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _single_choice(result: Any, where: str, from_name: str | None) -> str:
    if not isinstance(result, list):
        raise ExportProblem(where, f"expected a list, got a JSON {json_type(result)}")
    items = [r for r in result if isinstance(r, dict) and r.get("type") == "choices"
             and (from_name is None or r.get("from_name") == from_name)]
    control = f" from {from_name!r}" if from_name else ""
    if len(items) != 1:
        hint = " (pass label_studio_from_name to pick one)" if len(items) > 1 and from_name is None else ""
        raise ExportProblem(where, f"expected exactly one 'choices' result{control}, got {len(items)}{hint}")
    value = items[0].get("value")
    choices = value.get("choices") if isinstance(value, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], str):
        raise ExportProblem(where, f"expected exactly one choice, got {choices!r}")
    return choices[0].strip()


def _flat_choice(value: Any, field: str) -> str:
    """The choice of a JSON-MIN / CSV field: a plain string, or ``{"choices": [one]}`` (several choices)."""
    if isinstance(value, dict) and isinstance(value.get("choices"), list):
        value = value["choices"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise ExportProblem(field, f"expected exactly one choice, got {value!r}")
    return value.strip()


def _missing_choice_message(name: str) -> str:
    return (f"is missing: no choice under {name!r} (the labelling config's <Choices name>; pass "
            "label_studio_from_name when it has another name)")


# ---------------------------------------------------------------------- CSV


def is_csv_export(header: Sequence[str]) -> bool:
    """Whether a CSV header is a Label Studio CSV export's (it has ``annotation_id`` or ``sample_id``)."""
    return "annotation_id" in header or "sample_id" in header


def csv_answers(rows: Sequence[tuple[int, Mapping[str, str]]], from_name: str | None = None
                ) -> tuple[list[Answer], list[tuple]]:
    """Answers of a Label Studio CSV export.

    Parameters
    ----------
    rows : sequence of (line, {column: stripped value})
        The data records (header = line 1), e.g. from :mod:`al_lib.annotations`' CSV reader.
    from_name : str, optional
        The column holding the choice (the ``<Choices>`` name; default ``"label"``).

    Returns
    -------
    answers : list of Answer
        One per annotated row; rows without ``annotation_id`` and choice (an unannotated task)
        are skipped.
    errors : list of (line, field, message)
        Missing ``sample_id`` or choice, several choices.
    """
    name = from_name or _DEFAULT_FROM_NAME
    answers, errors = [], []
    for line, values in rows:
        raw = values.get(name, "")
        if not raw:
            if values.get("annotation_id"):
                errors.append((line, name, _missing_choice_message(name)))
            continue
        try:
            sample_id = values.get("sample_id") or None
            label = _flat_choice(json.loads(raw) if raw.startswith(("{", "[")) else raw, name)
            answers.append(Answer(line, _flat_sample_id(sample_id, "sample_id"), label,
                                  values.get("annotator") or None, values.get("id") or None))
        except (ExportProblem, json.JSONDecodeError) as problem:
            message = getattr(problem, "message", f"expected a choice, got {raw!r}")
            errors.append((line, getattr(problem, "field", name), message))
    return answers, errors


# ---------------------------------------------------------------------- agreement


def combine_answers(answers: Sequence[Answer], *, unit: str = "task"
                    ) -> tuple[list[tuple[int, str, str, str | None]], list[tuple[int, str, str]]]:
    """One record per sample whose answers all agree; a problem per disagreement.

    Parameters
    ----------
    answers : sequence of Answer
        From :func:`json_answers` / :func:`csv_answers`.
    unit : str
        What ``row`` counts, for the messages ("task" or "row").

    Returns
    -------
    records : list of (row, sample_id, label, annotator)
        In order of each sample's first answer; ``annotator`` names every distinct annotator
        (joined by ``";"``), None when none was named.
    errors : list of (row, "label", message)
        One per disagreeing sample, at its first answer's row, naming every annotator's label.
    """
    groups: dict[str, list[Answer]] = {}
    for answer in answers:
        groups.setdefault(answer.sample_id, []).append(answer)
    records, errors = [], []
    for sample_id, group in groups.items():
        if len({a.label for a in group}) > 1:
            errors.append((group[0].row, "label", Disagreement(sample_id, tuple(group)).message(unit)))
            continue
        names = list(dict.fromkeys(a.annotator for a in group if a.annotator is not None))
        records.append((group[0].row, sample_id, group[0].label, ANNOTATOR_SEPARATOR.join(names) or None))
    return records, errors


def split_disagreements(tasks: list, from_name: str | None = None) -> tuple[list, list[Disagreement]]:
    """Separate the tasks of a JSON export whose annotators disagree.

    Parameters
    ----------
    tasks : list
        A Label Studio JSON export (task objects).
    from_name : str, optional
        As for :func:`json_answers`.

    Returns
    -------
    kept : list
        The tasks (unchanged objects, in order) none of whose samples has disagreeing answers;
        malformed tasks are kept, for the validated import to report.
    disagreements : list of Disagreement
        One per disagreeing sample.

    Raises
    ------
    ExportProblem
        ``tasks`` is not a JSON task list.
    """
    if isinstance(tasks, list) and _is_json_min(tasks):
        raise ExportProblem(None, "expected a Label Studio 'JSON' export (task objects), got 'JSON-MIN'")
    answers, _, _ = json_answers(tasks, from_name)
    groups: dict[str, list[Answer]] = {}
    for answer in answers:
        groups.setdefault(answer.sample_id, []).append(answer)
    disagreements = [Disagreement(s, tuple(g)) for s, g in groups.items() if len({a.label for a in g}) > 1]
    held = {a.row for d in disagreements for a in d.answers}
    return [task for index, task in enumerate(tasks, start=1) if index not in held], disagreements


# ---------------------------------------------------------------------- small helpers


def annotator_name(value: Any) -> str | None:
    """Label Studio's ``completed_by`` / ``annotator``: a user id, email, or user object (email preferred)."""
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    if value is None or value == "":
        return None
    return str(value)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type ("object", "array", "string", ...)."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _optional_id(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _who(annotator: str | None) -> str:
    return annotator if annotator is not None else "an unnamed annotator"


def _place(answer: Answer, unit: str | None) -> str:
    parts = [f"{unit} {answer.row}"] if unit else []
    return ", ".join(parts + ([f"Label Studio task {answer.task}"] if answer.task is not None else []))
