"""Great Expectations validation of a workspace's pool manifest and labels, with Data Docs.

Every check is a GX expectation run through a real GX validation (an ephemeral, in-memory data
context; nothing is sent anywhere). Per-row facts that GX cannot see by itself — is the path
inside the workspace, does the file exist, does it decode — are computed with pandas/PIL as
boolean helper columns first, and GX expects them to be True, so its result names the failing
rows. ``None`` in a helper column means "not applicable" (GX column-map expectations skip nulls):
a missing file is not also reported as undecodable, an absolute path not also as missing.

Failing rows come from GX's ``unexpected_index_list`` (``result_format="COMPLETE"``); the frames
handed to GX carry a 0-based RangeIndex in file order, so index ``i`` is CSV row ``i + 2``
(the header is row 1).

Great Expectations is imported lazily (it costs seconds), so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from al_lib.atomic import atomic_write_text
from tasks.workspace import LABELS, MANIFEST

logger = logging.getLogger(__name__)

__all__ = [
    "FAILURE_COLUMNS",
    "ValidationReport",
    "load_and_validate",
    "validate_workspace_data",
]

MANIFEST_COLUMNS = ("id", "path")  # `split` is optional
FAILURE_COLUMNS = ("file", "row", "field", "value", "check")
RESULTS_FILE = "results.json"  # written next to the Data Docs directory

_SITE = "workspace_docs"
_FIRST_DATA_ROW = 2  # CSV row of frame index 0: the header is row 1
_IN_TRUE = ("ExpectColumnValuesToBeInSet", {"value_set": [True]})


@dataclass(frozen=True)
class _Check:
    """One column expectation, and how its failing rows are reported."""

    column: str  # the column GX validates (maybe a helper column)
    field: str  # the file's column a failing row is reported under
    check: str  # human label of the failure, used in summaries
    expectation: str  # class name in great_expectations.expectations
    kwargs: dict[str, Any] = field(default_factory=dict)


_MANIFEST_CHECKS = (
    _Check("id", "id", "id missing", "ExpectColumnValuesToNotBeNull"),
    _Check("id", "id", "duplicate id", "ExpectColumnValuesToBeUnique"),
    _Check("path", "path", "path missing", "ExpectColumnValuesToNotBeNull"),
    _Check("path_is_relative", "path", "path is absolute", *_IN_TRUE),
    _Check("path_inside_workspace", "path", "path escapes the workspace", *_IN_TRUE),
    _Check("file_exists", "path", "file not found", *_IN_TRUE),
    _Check("decodes", "path", "image does not decode", *_IN_TRUE),
)


def _label_format() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``data/labels.csv`` columns and allowed sources, owned by the dataset state.

    Imported on use: ``al_lib.data`` pulls in torch, and importing this module must stay cheap.
    """
    from al_lib.data.active_dataset import HISTORY_COLUMNS, SOURCES

    return HISTORY_COLUMNS, SOURCES


def _label_checks(classes: Sequence[str]) -> tuple[_Check, ...]:
    return (
        _Check("id", "id", "id missing", "ExpectColumnValuesToNotBeNull"),
        _Check("id", "id", "duplicate id", "ExpectColumnValuesToBeUnique"),
        # A helper column rather than value_set=<all manifest ids>: GX's cost grows with the size
        # of a value set (~4 s for 60k ids) and Data Docs would render every id.
        _Check("id_in_manifest", "id", "id not in manifest", *_IN_TRUE),
        _Check("label", "label", "label missing", "ExpectColumnValuesToNotBeNull"),
        _Check("label", "label", "label not in classes", "ExpectColumnValuesToBeInSet",
               {"value_set": list(classes)}),
        _Check("round", "round", "round missing", "ExpectColumnValuesToNotBeNull"),
        _Check("round", "round", "round is not an integer >= 0", "ExpectColumnValuesToMatchRegex",
               {"regex": r"^[0-9]+$"}),
        _Check("source", "source", "source missing", "ExpectColumnValuesToNotBeNull"),
        _Check("source", "source", "unknown source", "ExpectColumnValuesToBeInSet",
               {"value_set": list(_label_format()[1])}),
    )


def _class_count_checks(min_labels: int) -> tuple[_Check, ...]:
    return (
        _Check("count", "label", f"fewer than {_plural(min_labels, 'label')} for class",
               "ExpectColumnValuesToBeBetween", {"min_value": min_labels}),
    )


@dataclass
class _Batch:
    """A frame GX validates as one suite; ``csv_rows``: its index maps to rows of ``file``."""

    name: str
    file: str
    frame: pd.DataFrame
    expectations: list
    csv_rows: bool = True


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_workspace_data`.

    Attributes
    ----------
    success : bool
        Every expectation was met.
    failures : DataFrame
        One row per failing (data row, check): columns ``file,row,field,value,check``. ``row`` is
        the CSV row number (header = 1, first data row = 2); 1 for a missing column; ``<NA>`` for
        table-level checks (a class with too few labels: ``value`` is the class).
    statistics : dict
        ``n_manifest``, ``n_labels``, ``class_counts`` (class -> labels), ``n_expectations``,
        ``n_failed_expectations``.
    docs_path : Path or None
        ``index.html`` of the Data Docs, when they were built.
    """

    success: bool
    failures: pd.DataFrame
    statistics: dict[str, Any]
    docs_path: Path | None = None

    def summary(self) -> str:
        """One human sentence, e.g. ``validation failed: 2 failing rows in data/labels.csv (...)``."""
        stats = self.statistics
        if self.success:
            return (f"validation passed: {stats['n_manifest']} manifest rows, {stats['n_labels']} labels, "
                    f"{stats['n_expectations']} expectations met")
        parts = []
        for file, group in self.failures.groupby("file", sort=False):
            counts = group.groupby("check", sort=False).size().sort_values(ascending=False, kind="stable")
            detail = ", ".join(f"{check}: {n}" for check, n in counts.items())
            parts.append(f"{_plural(len(group), 'failing row')} in {file} ({detail})")
        return "validation failed: " + "; ".join(parts)

    def to_markdown(self, max_rows: int = 50) -> str:
        """A Markdown report (for a Prefect artifact): the summary and the first ``max_rows`` failures."""
        lines = [f"## Data validation: {'passed' if self.success else 'failed'}", "", self.summary()]
        if len(self.failures):
            lines += ["", _markdown_table(self.failures.head(max_rows))]
            if len(self.failures) > max_rows:
                lines += ["", f"_… and {len(self.failures) - max_rows} more failing rows._"]
        if self.docs_path is not None:
            lines += ["", f"Data Docs: `{self.docs_path}`"]
        return "\n".join(lines) + "\n"


def validate_workspace_data(
    workspace: str | os.PathLike,
    manifest: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    classes: Sequence[str],
    min_labels_per_class: int = 0,
    decode_images: bool = True,
    docs_dir: str | os.PathLike | None = None,
) -> ValidationReport:
    """Validate a workspace's manifest and labels with Great Expectations.

    Parameters
    ----------
    workspace : path-like
        Workspace root; manifest paths are resolved against it.
    manifest : DataFrame
        ``id,path[,split]`` in file order (as read with ``dtype=str``).
    labels : DataFrame
        ``id,label,round,source,annotator,labelled_at`` in file order; may be empty (even
        column-less).
    classes : sequence of str
        Allowed labels.
    min_labels_per_class : int
        Each class needs at least this many labels.
    decode_images : bool
        Also check that PIL can open and verify each image (reads every file).
    docs_dir : path-like, optional
        Build GX Data Docs here (replacing the previous ones) and write the GX results to
        ``results.json`` in its parent directory.

    Returns
    -------
    ValidationReport
        Nothing is modified but ``docs_dir`` and its ``results.json``.

    Raises
    ------
    FileNotFoundError
        When ``workspace`` is not a directory.
    FileExistsError
        When ``docs_dir`` exists but is neither empty nor a Data Docs site (it would be replaced).
    """
    workspace = _existing_workspace(workspace)
    docs_dir = None if docs_dir is None else Path(docs_dir)
    if docs_dir is not None:
        _check_replaceable(docs_dir)

    manifest_frame = _manifest_frame(workspace, manifest, decode_images)
    labels_frame = _labels_frame(labels, manifest_frame)
    counts = _class_counts(labels_frame, classes)
    batches = [
        _Batch("manifest", MANIFEST, manifest_frame,
               _expectations(manifest_frame, _MANIFEST_CHECKS, MANIFEST_COLUMNS)),
        _Batch("labels", LABELS, labels_frame,
               _expectations(labels_frame, _label_checks(classes), _label_format()[0])),
        _Batch("class_counts", LABELS, counts,
               _expectations(counts, _class_count_checks(min_labels_per_class)), csv_rows=False),
    ]
    results, docs_path = _validate(batches, docs_dir)

    failures = _failures_frame(row for batch, result in zip(batches, results) for row in _failures(batch, result))
    statistics = {
        "n_manifest": len(manifest_frame),
        "n_labels": len(labels_frame),
        "class_counts": dict(zip(counts["label"], counts["count"].astype(int).tolist())),
        "n_expectations": sum(len(result.results) for result in results),
        "n_failed_expectations": sum(not r.success for result in results for r in result.results),
    }
    report = ValidationReport(all(result.success for result in results), failures, statistics, docs_path)
    if docs_dir is not None:
        _write_results(docs_dir.parent / RESULTS_FILE, report, results)
    (logger.info if report.success else logger.warning)("%s", report.summary())
    return report


def load_and_validate(workspace: str | os.PathLike, classes: Sequence[str], **kwargs: Any) -> ValidationReport:
    """Read ``data/pool/manifest.csv`` and ``data/labels.csv`` (missing = no labels) and validate them.

    ``kwargs`` go to :func:`validate_workspace_data`.
    """
    workspace = _existing_workspace(workspace)
    manifest = _read_csv(workspace / MANIFEST)
    labels_path = workspace / LABELS
    labels = _read_csv(labels_path) if labels_path.exists() else pd.DataFrame()
    return validate_workspace_data(workspace, manifest, labels, classes=classes, **kwargs)


def _existing_workspace(workspace: str | os.PathLike) -> Path:
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise FileNotFoundError(f"workspace {workspace} does not exist")
    return workspace


def _read_csv(path: Path) -> pd.DataFrame:
    # keep_default_na=False: an id such as "NA" is an id; blank cells become missing in _as_text.
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# --- the frames GX validates -------------------------------------------------------------------


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with a 0-based RangeIndex (index i = CSV row i + 2) and str-or-None cells.

    Blank cells (NaN, "", whitespace) become None, so GX's not-null expectations catch them
    whatever NA options the CSV was read with.
    """
    def text(value: Any) -> str | None:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return None
        value = str(value)
        return value if value.strip() else None

    texts = frame.reset_index(drop=True).astype(object).map(text).astype(object)
    return texts.where(texts.notna(), None)  # map may infer a str dtype, turning None into NaN


def _manifest_frame(workspace: Path, manifest: pd.DataFrame, decode_images: bool) -> pd.DataFrame:
    """The manifest plus helper columns ``path_is_relative``, ``path_inside_workspace``,
    ``file_exists`` and (when ``decode_images``) ``decodes``: True/False, or None where a previous
    fact already failed."""
    frame = _as_text(manifest)
    if "path" not in frame.columns:
        return frame
    facts = [_path_facts(workspace, path, decode_images) for path in frame["path"]]
    names = ["path_is_relative", "path_inside_workspace", "file_exists"] + (["decodes"] if decode_images else [])
    for position, name in enumerate(names):
        frame[name] = pd.Series([fact[position] for fact in facts], index=frame.index, dtype=object)
    return frame


def _path_facts(workspace: Path, path: str | None, decode_images: bool) -> list[bool | None]:
    """The chain relative -> inside -> exists -> decodes for one path; None after the first False."""
    if path is None:
        return [None] * 4
    normalised = os.path.normpath(path)  # lexical: a DVC symlink into an outside cache is fine
    checks = (
        lambda: not os.path.isabs(path),
        lambda: normalised != os.pardir and not normalised.startswith(os.pardir + os.sep),
        lambda: (workspace / normalised).is_file(),
        lambda: _decodes(workspace / normalised) if decode_images else None,
    )
    facts: list[bool | None] = []
    for check in checks:
        facts.append(check() if not facts or facts[-1] else None)
    return facts


def _decodes(path: Path) -> bool:
    """Whether PIL can open and verify the image (verify reads the file without decoding pixels)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        return False
    return True


def _labels_frame(labels: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The labels plus helper column ``id_in_manifest`` (absent when the manifest has no ids)."""
    if labels.columns.empty and labels.empty:  # e.g. pd.DataFrame() for "no labels yet"
        labels = pd.DataFrame(columns=list(_label_format()[0]))
    frame = _as_text(labels)
    if "id" in frame.columns and "id" in manifest.columns:
        known = frame["id"].isin(set(manifest["id"].dropna()))
        frame["id_in_manifest"] = known.astype(object).where(frame["id"].notna(), None)
    return frame


def _class_counts(labels: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """``label,count`` for every class, in ``classes`` order (labels outside ``classes`` ignored)."""
    present = labels["label"] if "label" in labels.columns else pd.Series(dtype=object)
    counts = present.value_counts().reindex(list(classes), fill_value=0)
    return pd.DataFrame({"label": list(classes), "count": counts.to_numpy(dtype=int)})


# --- Great Expectations ------------------------------------------------------------------------


def _import_gx():
    """Import Great Expectations with usage statistics off (before any context exists)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


def _expectations(frame: pd.DataFrame, checks: Iterable[_Check], required: Sequence[str] = ()) -> list:
    """GX expectations for ``checks`` on columns ``frame`` has (a missing column is reported by
    the table-columns expectation instead of erroring every column check)."""
    gxe = _import_gx().expectations
    expectations = []
    if required:
        expectations.append(gxe.ExpectTableColumnsToMatchSet(
            column_set=list(required), exact_match=False, meta={"field": "columns", "check": "missing column"}))
    for check in checks:
        if check.column in frame.columns:
            expectation_class = getattr(gxe, check.expectation)
            meta = {"field": check.field, "check": check.check}
            expectations.append(expectation_class(column=check.column, meta=meta, **check.kwargs))
    return expectations


def _validate(batches: list[_Batch], docs_dir: Path | None) -> tuple[list, Path | None]:
    """Run one GX suite per batch; with ``docs_dir``, build Data Docs there (replacing old ones)."""
    if docs_dir is None:
        return _run_suites(batches, None), None
    docs_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built next to the target, then swapped in: the directory holds only the last validation.
    staging = docs_dir.with_name(f".{docs_dir.name}.new-{secrets.token_hex(4)}")
    try:
        results = _run_suites(batches, staging)
        _replace_dir(staging, docs_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results, docs_dir / "index.html"


def _run_suites(batches: list[_Batch], site_dir: Path | None) -> list:
    """Validate every batch in a fresh ephemeral context; returns one GX suite result per batch."""
    gx = _import_gx()
    from great_expectations.core.run_identifier import RunIdentifier

    context = gx.get_context(mode="ephemeral", project_config=_context_config(site_dir))
    source = context.data_sources.add_pandas("workspace")
    # One run id for the three suites: Data Docs list them as one run.
    run_id = RunIdentifier(run_name="workspace-validation", run_time=datetime.now(timezone.utc))
    results = []
    for batch in batches:
        definition = source.add_dataframe_asset(batch.name).add_batch_definition_whole_dataframe("all rows")
        suite = context.suites.add(gx.ExpectationSuite(name=batch.name, expectations=batch.expectations))
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=batch.name, data=definition, suite=suite))
        # ValidationDefinition.run also stores the result, which is what Data Docs render.
        results.append(validation.run(
            batch_parameters={"dataframe": batch.frame}, result_format="COMPLETE", run_id=run_id))
    if site_dir is not None:
        context.build_data_docs(site_names=[_SITE])
    return results


def _context_config(site_dir: Path | None):
    """In-memory stores, no default temp-dir docs site, no progress bars, no analytics."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if site_dir is not None:
        sites[_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    return DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )


# --- results -----------------------------------------------------------------------------------


def _failures(batch: _Batch, suite_result) -> list[dict[str, Any]]:
    """One failure row per failing row of each failed expectation (located by GX's result), in
    row order; table-level failures (row None) last."""
    rows = list(_failure_rows(batch, suite_result))
    return sorted(rows, key=lambda failure: (failure["row"] is None, failure["row"] or 0))


def _failure_rows(batch: _Batch, suite_result) -> Iterable[dict[str, Any]]:
    for result in suite_result.results:
        if result.success:
            continue
        meta = result.expectation_config.meta or {}
        field_name, check = meta.get("field"), meta.get("check", result.expectation_config.type)
        details = result.result or {}
        error = _exception_message(result.exception_info)
        if error is not None:
            yield _failure(batch.file, None, field_name, error, f"{check} (check errored)")
        elif "unexpected_index_list" in details:
            for index in details["unexpected_index_list"]:
                row = index + _FIRST_DATA_ROW if batch.csv_rows else None
                yield _failure(batch.file, row, field_name, batch.frame.at[index, field_name], check)
        elif missing := details.get("details", {}).get("mismatched", {}).get("missing"):
            for column in missing:  # the header is row 1
                yield _failure(batch.file, 1, column, None, check)
        else:
            yield _failure(batch.file, None, field_name, details.get("observed_value"), check)


def _exception_message(info: dict | None) -> str | None:
    """The message of an expectation that raised, or None (GX may nest the info per metric)."""
    if not info:
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "error") if info["raised_exception"] else None
    messages = [_exception_message(value) for value in info.values() if isinstance(value, dict)]
    return next((message for message in messages if message), None)


def _failure(file: str, row: int | None, field_name: str | None, value: Any, check: str) -> dict[str, Any]:
    return {"file": file, "row": row, "field": field_name,
            "value": None if value is None else str(value), "check": check}


def _failures_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=list(FAILURE_COLUMNS))
    frame["row"] = frame["row"].astype("Int64")
    return frame.astype({"value": object})


def _write_results(path: Path, report: ValidationReport, results: list) -> None:
    """The GX suite results (JSON), with the outcome and statistics on top."""
    document = {
        "success": report.success,
        "statistics": report.statistics,
        "results": [result.to_json_dict() for result in results],
    }
    atomic_write_text(path, json.dumps(document, indent=2, default=str) + "\n")


def _check_replaceable(docs_dir: Path) -> None:
    """Refuse a ``docs_dir`` that holds something else than Data Docs: it is replaced wholesale."""
    if not docs_dir.exists():
        return
    if not docs_dir.is_dir() or (any(docs_dir.iterdir()) and not (docs_dir / "index.html").is_file()):
        raise FileExistsError(f"{docs_dir} exists and is not a Data Docs directory; refusing to replace it")


def _replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` in place of ``target`` (removed), with two renames."""
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old)


def _markdown_table(frame: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        return "" if value is None or pd.isna(value) else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
