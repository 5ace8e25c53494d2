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

Images are checked incrementally (:func:`check_images`): an image is decoded completely once per
file content — what that showed (:class:`ImageFacts`) is remembered by content hash in a small
cache file the caller names (``image_cache=``) — and each file's content hash is remembered by a
cheap stat key (size, mtime_ns, inode), as DVC's state db does, so a validation reads only new or
changed files. The cache only saves time: a lost or corrupt one is rebuilt.

``results.json`` is deterministic — the same inputs give the same bytes — so DVC, which tracks it
as the validate stage's output, sees it unchanged: it keeps the outcome, the statistics, each
expectation's result and the failing rows, and leaves out GX's run ids, UUIDs and timestamps.

Great Expectations is imported lazily (it costs seconds), so importing this module stays cheap.
"""

from __future__ import annotations

import array
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import stat
import time
import warnings
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
    "ImageChecks",
    "ImageFacts",
    "ValidationReport",
    "check_images",
    "load_and_validate",
    "validate_workspace_data",
]

MANIFEST_COLUMNS = ("id", "path")  # `split` is optional
FAILURE_COLUMNS = ("file", "row", "field", "value", "check")
RESULTS_FILE = "results.json"  # written next to the Data Docs directory

_SITE = "workspace_docs"
_FIRST_DATA_ROW = 2  # CSV row of frame index 0: the header is row 1
_IN_TRUE = ("ExpectColumnValuesToBeInSet", {"value_set": [True]})
_NAMED_FAILURES = 3  # failing rows a summary names


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
    _Check("file_inside_workspace", "path", "file is a symlink leaving the workspace", *_IN_TRUE),
    _Check("file_exists", "path", "file not found", *_IN_TRUE),
    _Check("decodes", "path", "image does not decode", *_IN_TRUE),
)


def _label_format() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``data/labels.csv`` columns and allowed sources, owned by :mod:`al_lib.labels`."""
    from al_lib.labels import LABEL_COLUMNS, SOURCES

    return LABEL_COLUMNS, SOURCES


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
    image_checks : dict or None
        When images were decoded: ``checked`` (decoded now: new or changed content),
        ``remembered`` (known from the image cache) and ``hashed`` (files read to hash them).
        Not part of ``statistics``: it depends on the cache, not on the data.
    """

    success: bool
    failures: pd.DataFrame
    statistics: dict[str, Any]
    docs_path: Path | None = None
    image_checks: dict[str, int] | None = None

    def summary(self, max_named: int = _NAMED_FAILURES) -> str:
        """One human line: the outcome, failing rows per file and check, and the first
        ``max_named`` failing rows by file, row, field and value, e.g.
        ``validation failed: 1 failing row in data/pool/manifest.csv (image does not decode: 1):
        data/pool/manifest.csv row 4, path='data/pool/images/2.png': image does not decode``."""
        stats = self.statistics
        if self.success:
            text = (f"validation passed: {stats['n_manifest']} manifest rows, {stats['n_labels']} labels, "
                    f"{stats['n_expectations']} expectations met")
        else:
            parts = []
            for file, group in self.failures.groupby("file", sort=False):
                counts = group.groupby("check", sort=False).size().sort_values(ascending=False, kind="stable")
                detail = ", ".join(f"{check}: {n}" for check, n in counts.items())
                parts.append(f"{_plural(len(group), 'failing row')} in {file} ({detail})")
            text = "validation failed: " + "; ".join(parts)
            named = [_describe_failure(f) for f in self.failures.head(max_named).itertuples(index=False)]
            if named:
                more = len(self.failures) - len(named)
                text += ": " + "; ".join(named) + (f"; and {more} more" if more > 0 else "")
        if self.image_checks is not None:
            text += (f" [images: {self.image_checks['checked']} checked, "
                     f"{self.image_checks['remembered']} remembered]")
        return text

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


def _describe_failure(failure) -> str:
    """``file row R, field='value': check`` (row and value left out where there is none)."""
    where = failure.file if pd.isna(failure.row) else f"{failure.file} row {int(failure.row)}"
    what = failure.field if pd.isna(failure.value) else f"{failure.field}={failure.value!r}"
    return f"{where}, {what}: {failure.check}"


def validate_workspace_data(
    workspace: str | os.PathLike,
    manifest: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    classes: Sequence[str],
    min_labels_per_class: int = 0,
    decode_images: bool = True,
    image_cache: str | os.PathLike | None = None,
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
        Also check that each image decodes completely (PIL, under its decompression-bomb limit).
    image_cache : path-like, optional
        Cache file of the image checks (see :func:`check_images`; e.g. the workspace's
        ``.al/image-checks.json``): images it knows are not decoded again. None: decode all.
    docs_dir : path-like, optional
        Build GX Data Docs here (replacing the previous ones) and write the results to
        ``results.json`` in its parent directory (deterministic: same inputs, same bytes).

    Returns
    -------
    ValidationReport
        Nothing is modified but ``docs_dir``, its ``results.json`` and ``image_cache``.

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

    manifest_frame, image_checks = _manifest_frame(workspace, manifest, decode_images, image_cache)
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
    report = ValidationReport(all(result.success for result in results), failures, statistics, docs_path,
                              None if image_checks is None else image_checks.counts())
    if docs_dir is not None:
        _write_results(docs_dir.parent / RESULTS_FILE, report, batches, results)
    (logger.info if report.success else logger.warning)("%s", report.summary())
    return report


def load_and_validate(workspace: str | os.PathLike, classes: Sequence[str], **kwargs: Any) -> ValidationReport:
    """Read ``data/pool/manifest.csv`` and ``data/labels.csv`` (missing = no labels) and validate them.

    ``kwargs`` go to :func:`validate_workspace_data` (``docs_dir``, ``image_cache``, ...).
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
    columns = {name: pd.Series(_text_cells(frame[name].tolist()), dtype=object) for name in frame.columns}
    return pd.DataFrame(columns, index=pd.RangeIndex(len(frame)), columns=frame.columns)


def _text_cells(values: list) -> list[str | None]:
    """Cells as str, or None where blank or missing."""
    if set(map(type, values)) <= {str}:  # the usual CSV column: only blanks need a look
        return [v if v and not v.isspace() else None for v in values]

    def text(value: Any) -> str | None:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return None
        value = str(value)
        return value if value.strip() else None

    return [text(v) for v in values]


def _facts_column(values: list[bool | None]) -> pd.arrays.BooleanArray:
    # Nullable booleans, not objects: GX's null and set checks on them cost a third less.
    return pd.array(values, dtype="boolean")


def _manifest_frame(workspace: Path, manifest: pd.DataFrame, decode_images: bool,
                    image_cache: str | os.PathLike | None) -> tuple[pd.DataFrame, ImageChecks | None]:
    """The manifest plus helper columns ``path_is_relative``, ``path_inside_workspace``,
    ``file_inside_workspace`` (symlinks followed), ``file_exists`` and (when ``decode_images``) ``decodes``: True/False, or None where a previous
    fact already failed. Also the image checks (None when not decoding)."""
    frame = _as_text(manifest)
    if "path" not in frame.columns:
        return frame, None
    relative, inside, normalised = _locate(frame["path"].tolist())
    root = os.fspath(workspace.resolve()) + os.sep
    stays = _stays_inside(root, normalised, inside)
    rows = [row for row, ok in enumerate(stays) if ok]  # the rows whose file is looked at (never one outside)
    targets = [root + normalised[row] for row in rows]
    exists: list[bool | None] = [None] * len(frame)  # None: not applicable (a previous fact failed)
    decodes: list[bool | None] = [None] * len(frame)
    checks = None
    if decode_images:
        checks = _check_files(targets, image_cache, prune=True)
        found = [facts is not None for facts in checks.facts]
        decoded = [None if facts is None else facts.decodes for facts in checks.facts]
    else:
        found, decoded = [os.path.isfile(target) for target in targets], []
    if len(rows) == len(frame):  # every path relative and inside: no gaps to leave
        exists, decodes = found, decoded
    else:
        for position, row in enumerate(rows):
            exists[row] = found[position]
            decodes[row] = decoded[position] if decoded else None
    columns = {"path_is_relative": relative, "path_inside_workspace": inside, "file_inside_workspace": stays,
               "file_exists": exists}
    if decode_images:
        columns["decodes"] = decodes
    for name, values in columns.items():
        frame[name] = _facts_column(values)
    return frame, checks


def _stays_inside(root: str, normalised: list[str | None], inside: list[bool | None]) -> list[bool | None]:
    """Per row whose path is inside the workspace (lexically): does its file stay inside once
    symlinks are followed? None where ``inside`` is not True. A pool file is a link only when
    something put it there by hand (`al init` and `al add-images` copy regular files), or DVC's
    cache uses links — into ``.dvc/cache``, inside the workspace. Costs one ``lstat`` per file
    and one ``realpath`` per folder."""
    folders: dict[str, bool] = {}
    out: list[bool | None] = []
    for ok, path in zip(inside, normalised):
        if not ok:
            out.append(None)
            continue
        full = root + path
        folder = os.path.dirname(full)
        if folder not in folders:
            folders[folder] = (os.path.realpath(folder) + os.sep).startswith(root)
        out.append(folders[folder] and (not os.path.islink(full) or os.path.realpath(full).startswith(root)))
    return out


def _locate(paths: list[str | None]) -> tuple[list, list, list]:
    """Per manifest path: relative?, inside the workspace? (None when absolute), normalised path.

    All None where there is no path.
    """
    relative, inside, normalised = [], [], []
    for path in paths:
        if path is None or _isabs(path):
            relative.append(None if path is None else False)
            inside.append(None)
            normalised.append(None)
        # The usual "data/pool/images/x.png" is already normal and inside (a cheap, conservative test).
        elif not (path[0] == "." or path[-1] == "/" or "/." in path or "//" in path or "\\" in path):
            relative.append(True)
            inside.append(True)
            normalised.append(path)
        else:
            plain = os.path.normpath(path)  # lexical: a DVC symlink into an outside cache is fine
            relative.append(True)
            inside.append(plain != os.pardir and not plain.startswith(os.pardir + os.sep))
            normalised.append(plain)
    return relative, inside, normalised


# os.path.isabs costs about a microsecond: 100k paths pay it every round.
_isabs = (lambda path: path[0] == "/") if os.name == "posix" else os.path.isabs


def _labels_frame(labels: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The labels plus helper column ``id_in_manifest`` (absent when the manifest has no ids)."""
    if labels.columns.empty and labels.empty:  # e.g. pd.DataFrame() for "no labels yet"
        labels = pd.DataFrame(columns=list(_label_format()[0]))
    frame = _as_text(labels)
    if "id" in frame.columns and "id" in manifest.columns:
        known = set(manifest["id"].tolist()) - {None}
        frame["id_in_manifest"] = _facts_column([None if i is None else i in known for i in frame["id"].tolist()])
    return frame


def _class_counts(labels: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """``label,count`` for every class, in ``classes`` order (labels outside ``classes`` ignored)."""
    present = labels["label"] if "label" in labels.columns else pd.Series(dtype=object)
    counts = present.value_counts().reindex(list(classes), fill_value=0)
    return pd.DataFrame({"label": list(classes), "count": counts.to_numpy(dtype=int)})


# --- image checks ------------------------------------------------------------------------------

_CACHE_FORMAT = "al-image-checks"
_CACHE_VERSION = 1
#: A file modified this recently may change again within its file system's timestamp
#: granularity without its stat key changing: only its content hash is trusted, not its stat.
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class ImageFacts:
    """What fully decoding one image file showed.

    ``error`` is None when the file decoded completely; then ``format`` (e.g. "PNG"), ``mode``
    (e.g. "L") and ``width``/``height`` (pixels) describe it. Otherwise ``error`` says why not,
    e.g. ``"OSError: broken data stream when reading image file"``.
    """

    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None

    @property
    def decodes(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ImageChecks:
    """Outcome of :func:`check_images`.

    Attributes
    ----------
    facts : list of ImageFacts or None, [N]
        Aligned with the paths; None where there is no regular file.
    checked : int
        Images decoded by this call (new or changed content).
    remembered : int
        Images whose facts came from the cache (not decoded).
    hashed : int
        Files read to hash their content (their stat key was unknown or had changed).
    """

    facts: list[ImageFacts | None]
    checked: int = 0
    remembered: int = 0
    hashed: int = 0

    def counts(self) -> dict[str, int]:
        return {"checked": self.checked, "remembered": self.remembered, "hashed": self.hashed}


def check_images(
    paths: Sequence[str | os.PathLike],
    *,
    cache: str | os.PathLike | None = None,
    prune: bool = False,
) -> ImageChecks:
    """Decode each image file completely, once per file content.

    An image passes when PIL verifies its structure (chunk CRCs) and decodes every pixel
    (``Image.load()``) without error; exceeding PIL's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``, where PIL itself only warns) is an error too.

    Parameters
    ----------
    paths : sequence of path-like, [N]
        Image files (relative ones are taken from the working directory).
    cache : path-like, optional
        File remembering facts by content hash (blake2b) and content hashes by stat key (size,
        mtime_ns, inode), as DVC's state db does. Created with its folder, written atomically and
        only when it changed. An unreadable one, or one written by another Pillow version or
        under another pixel limit, is rebuilt: a lost cache costs time, never correctness. A file
        rewritten with the same size, mtime and inode is not noticed (as by DVC and git).
    prune : bool
        A whole-pool check: forget every file but ``paths`` (the cache keeps the pool's size), and
        remember this list with all its stat keys, so that the next identical check reads nothing
        but the first line of the cache.

    Returns
    -------
    ImageChecks
        Facts per path and how many images were decoded, remembered and hashed.
    """
    return _check_files([_absolute(path) for path in paths], cache, prune)


def _check_files(keys: list[str], cache: str | os.PathLike | None, prune: bool) -> ImageChecks:
    """:func:`check_images` of absolute paths."""
    racy_after = time.time_ns() - _RACY_NS
    infos = [_regular_file_stat(key) for key in keys]
    store = _ImageCache.open(None if cache is None else Path(cache))
    fingerprint = _fingerprint(keys, infos) if prune and cache is not None else None
    facts = store.snapshot_facts(fingerprint, len(keys))
    if facts is not None:  # the same files with the same stat keys as the last whole-pool check
        checks = ImageChecks(facts, remembered=len(facts))
    else:
        tally = {"checked": 0, "remembered": 0, "hashed": 0}
        facts = [None if info is None else _check_one(store, key, info, racy_after, tally)
                 for key, info in zip(keys, infos)]
        checks = ImageChecks(facts, **tally)
        if fingerprint is not None and not store.racy and all(f is not None for f in facts):
            store.set_snapshot(fingerprint, facts)
        if cache is not None:
            store.save(prune=prune)
    logger.info("image checks: %d decoded, %d remembered (%d files hashed)",
                checks.checked, checks.remembered, checks.hashed)
    return checks


def _absolute(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path if path.startswith(os.sep) else os.path.abspath(path)  # the cache keys on absolute paths


def _regular_file_stat(path: str) -> os.stat_result | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # missing, not a directory on the way, unreadable, NUL in path
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _fingerprint(keys: list[str], infos: list[os.stat_result | None]) -> str:
    """Hash of the paths in order with their stat keys (missing files included)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\0".join(keys).encode("utf-8", "surrogateescape"))
    values = [v for i in infos for v in ((-1, -1, -1) if i is None else (i.st_size, i.st_mtime_ns, i.st_ino))]
    try:
        digest.update(array.array("q", values).tobytes())
    except OverflowError:  # an inode beyond 2**63 - 1
        digest.update(repr(values).encode())
    return digest.hexdigest()


def _check_one(store: _ImageCache, path: str, info: os.stat_result, racy_after: int,
               tally: dict[str, int]) -> ImageFacts:
    """The facts of one file: from the cache when its stat key (else its content hash) is known."""
    stat_key = (info.st_size, info.st_mtime_ns, info.st_ino)
    known = store.known(path, stat_key)
    if known is not None:  # nothing is read
        tally["remembered"] += 1
        return known
    try:
        data = _read_bytes(path)
    except OSError as exc:  # a read error is no fact about the content: not remembered
        tally["checked"] += 1
        store.racy = True  # and no snapshot: the next check must look again
        return ImageFacts(error=f"{type(exc).__name__}: {exc}")
    tally["hashed"] += 1
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    facts = store.facts.get(digest)
    if facts is None:
        facts = _decode_facts(data)
        store.add_facts(digest, facts)
        tally["checked"] += 1
    else:
        tally["remembered"] += 1
    # A file modified just now may change again within its timestamp granularity, its stat key
    # unchanged: only its content hash is remembered, and the next check reads it again.
    store.remember(path, stat_key, digest, racy=info.st_mtime_ns >= racy_after)
    return facts


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _decode_facts(data: bytes) -> ImageFacts:
    """Verify and fully decode an image file's bytes; the decompression-bomb warning is an error."""
    from PIL import Image

    buffer = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(buffer) as image:
                image.verify()  # structure and CRCs; a broken compressed stream passes it
            buffer.seek(0)
            with Image.open(buffer) as image:
                image.load()  # every pixel, as training will
                return ImageFacts(image.format, image.mode, image.size[0], image.size[1])
        except MemoryError:
            raise
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            # Facts are about the content: no object address in them ("cannot identify <BytesIO at 0x..>").
            message = str(exc).replace(repr(buffer), "the image data")
            return ImageFacts(error=f"{type(exc).__name__}: {message}")


def _checker() -> dict[str, Any]:
    """What the facts depend on besides the content: a cache made under others is not trusted."""
    import PIL
    from PIL import Image, ImageFile

    return {"pillow": PIL.__version__, "max_image_pixels": Image.MAX_IMAGE_PIXELS,
            "load_truncated_images": bool(ImageFile.LOAD_TRUNCATED_IMAGES)}


_FACT_FIELDS = ("format", "mode", "width", "height", "error")


class _ImageCache:
    """The image-check cache file: two JSON lines.

    Line 1, the header: format, version, the checker it was made under (:func:`_checker`) and
    the snapshot of the last whole-pool check — the fingerprint of its paths and stat keys and
    their facts, run-length encoded — so an unchanged pool is answered from this line alone.
    Line 2, the table, columnar (a 100k-image table parses in about a tenth of a second):
    ``paths``, ``stats`` (size, mtime_ns, inode and an index into ``images`` per path) and
    ``images`` (content hash and facts). It is parsed only when the snapshot does not match.
    """

    def __init__(self, path: Path | None, header: dict | None = None, table: bytes = b"") -> None:
        self.path = path
        self.header = header or {}
        self._table = table  # line 2, unparsed
        self.files: dict[str, tuple] = {}  # path -> (size, mtime_ns, inode, digest): trusted stat keys
        self.facts: dict[str, ImageFacts] = {}  # digest -> ImageFacts
        self.seen: dict[str, str] = {}  # path -> digest of this run's files
        self.racy = False  # some file of this run was too fresh (or unreadable) to trust its stat
        self.dirty = False
        self._parsed = False
        self._snapshot: dict | None = None  # made by this run

    @classmethod
    def open(cls, path: Path | None) -> _ImageCache:
        """The cache at ``path`` with its header read (an absent or unreadable file: empty)."""
        if path is None or not path.exists():
            return cls(path)
        try:
            with open(path, "rb") as fh:
                header = json.loads(fh.readline())
                table = fh.read()
            if header.get("format") != _CACHE_FORMAT or header.get("version") != _CACHE_VERSION:
                raise ValueError(f"not a version {_CACHE_VERSION} {_CACHE_FORMAT} file")
        except (OSError, ValueError, AttributeError) as exc:
            return cls._unreadable(path, exc)
        return cls(path, header, table)

    @classmethod
    def _unreadable(cls, path: Path, exc: Exception) -> _ImageCache:
        logger.warning("image-check cache %s is unreadable (%s: %s): rebuilding it", path, type(exc).__name__, exc)
        cache = cls(path)
        cache.dirty = True
        return cache

    def _current(self) -> bool:
        return self.header.get("checker") == _checker()

    def snapshot_facts(self, fingerprint: str | None, n: int) -> list[ImageFacts] | None:
        """The facts of the last whole-pool check if ``fingerprint`` is its fingerprint."""
        snapshot = self.header.get("snapshot") or {}
        if fingerprint is None or snapshot.get("fingerprint") != fingerprint or not self._current():
            return None
        try:
            kinds = [ImageFacts(*values) for values in snapshot["facts"]]
            runs = snapshot["runs"]
            facts = [kinds[k] for k, count in zip(runs[0::2], runs[1::2]) for _ in range(count)]
        except (KeyError, TypeError, IndexError) as exc:
            logger.warning("image-check cache %s: bad snapshot (%s): checking the files", self.path, exc)
            return None
        return facts if len(facts) == n else None

    def set_snapshot(self, fingerprint: str, facts: list[ImageFacts]) -> None:
        kinds: dict[ImageFacts, int] = {}
        runs: list[int] = []
        for item in facts:
            kind = kinds.setdefault(item, len(kinds))
            if runs and runs[-2] == kind:
                runs[-1] += 1
            else:
                runs += [kind, 1]
        self._snapshot = {"fingerprint": fingerprint, "runs": runs,
                          "facts": [[getattr(k, name) for name in _FACT_FIELDS] for k in kinds]}
        self.dirty = True

    def _parse_table(self) -> None:
        """Read line 2 into ``files`` and ``facts`` (once; a bad table is dropped)."""
        if self._parsed:
            return
        self._parsed = True
        if not self._table.strip():
            return
        try:
            table = json.loads(self._table)
            paths, stats, images = table["paths"], table["stats"], table["images"]
            if len(stats) != 4 * len(paths):  # wrong types only cost a rehash: they never match a stat
                raise ValueError("'stats' does not hold 4 values per path")
            digests = [str(image[0]) for image in images]
            self.files = {str(p): (size, mtime, inode, digests[k]) for p, size, mtime, inode, k
                          in zip(paths, stats[0::4], stats[1::4], stats[2::4], stats[3::4])}
            if not self._current():  # other Pillow or limits: the facts are stale, the hashes are not
                self.dirty = True
                return
            shared: dict[tuple, ImageFacts] = {}  # most images share their facts: one object each
            for digest, image in zip(digests, images):
                values = tuple(image[1:6])
                self.facts[digest] = shared.get(values) or shared.setdefault(values, ImageFacts(*values))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            logger.warning("image-check cache %s: unreadable table (%s: %s): rebuilding it", self.path,
                           type(exc).__name__, exc)
            self.files, self.facts, self.dirty = {}, {}, True

    def known(self, path: str, stat_key: tuple) -> ImageFacts | None:
        """The facts of ``path`` if its stat key is the remembered one (then noted as seen)."""
        self._parse_table()
        entry = self.files.get(path)
        if entry is None or entry[0] != stat_key[0] or entry[1] != stat_key[1] or entry[2] != stat_key[2]:
            return None
        facts = self.facts.get(entry[3])
        if facts is not None:
            self.seen[path] = entry[3]
        return facts

    def add_facts(self, digest: str, facts: ImageFacts) -> None:
        self._parse_table()
        self.facts[digest] = facts
        self.dirty = True

    def remember(self, path: str, stat_key: tuple, digest: str, *, racy: bool) -> None:
        """Note this run's hash of ``path``; its stat key is trusted next time unless ``racy``."""
        self._parse_table()
        self.seen[path] = digest
        self.racy |= racy
        entry = None if racy else (*stat_key, digest)
        if self.files.get(path) != entry:
            if entry is None:
                del self.files[path]
            else:
                self.files[path] = entry
            self.dirty = True

    def save(self, *, prune: bool) -> None:
        """Write the cache if it changed; ``prune``: keep only this run's files and their facts."""
        self._parse_table()
        if prune:
            live = set(self.seen.values())  # racy files' too: next time they are hashed, not decoded
            files = {p: e for p, e in self.files.items() if p in self.seen}
            facts = {d: f for d, f in self.facts.items() if d in live}
            self.dirty |= len(files) != len(self.files) or len(facts) != len(self.facts)
            self.files, self.facts = files, facts
        if not self.dirty or self.path is None:
            return
        digests = list(self.facts)
        index = {digest: i for i, digest in enumerate(digests)}
        files = [(p, e) for p, e in self.files.items() if e[3] in index]  # a hash without facts: rehash
        # An older snapshot stays valid for the files it fingerprints, unless made under another checker.
        snapshot = self._snapshot or (self.header.get("snapshot") if self._current() else None)
        header = {"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "checker": _checker(), "snapshot": snapshot}
        table = {
            "paths": [p for p, _ in files],
            "stats": [v for _, e in files for v in (e[0], e[1], e[2], index[e[3]])],
            "images": [[d, *(getattr(self.facts[d], name) for name in _FACT_FIELDS)] for d in digests],
        }
        text = json.dumps(header, separators=(",", ":")) + "\n" + json.dumps(table, separators=(",", ":")) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text)
        except OSError as exc:  # an unwritable cache costs the next run time, nothing else
            logger.warning("could not write the image-check cache %s: %s", self.path, exc)


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


#: GX result entries that list values or rows (the failing rows are reported once, by CSV row).
_RESULT_LISTS = ("partial_unexpected_list", "partial_unexpected_counts", "partial_unexpected_index_list",
                 "unexpected_list", "unexpected_index_list", "unexpected_index_query")


def _write_results(path: Path, report: ValidationReport, batches: list[_Batch], results: list) -> None:
    """The outcome, statistics, each expectation's result and the failing rows, as stable JSON.

    Only what the inputs determine: no run ids, UUIDs, timestamps or cache counters, and keys
    sorted, so an unchanged workspace rewrites identical bytes.
    """
    failures = [{k: (None if pd.isna(v) else int(v)) if k == "row" else v for k, v in record.items()}
                for record in report.failures.astype(object).to_dict("records")]
    document = {
        "success": report.success,
        "statistics": report.statistics,
        "suites": [_suite_document(batch, result) for batch, result in zip(batches, results)],
        "failures": failures,
    }
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


def _suite_document(batch: _Batch, suite_result) -> dict[str, Any]:
    return {"name": batch.name, "file": batch.file, "success": bool(suite_result.success),
            "expectations": [_expectation_document(batch, result) for result in suite_result.results]}


def _expectation_document(batch: _Batch, result) -> dict[str, Any]:
    """One expectation: what it checks, its outcome, GX's counts, and its failing CSV rows."""
    raw = result.to_json_dict()  # JSON-ready (numpy scalars converted)
    config, details = raw["expectation_config"], raw.get("result") or {}
    meta = config.get("meta") or {}
    document = {
        "expectation": config["type"],
        "kwargs": {k: v for k, v in config["kwargs"].items() if k != "batch_id"},
        "field": meta.get("field"),
        "check": meta.get("check"),
        "success": bool(raw["success"]),
        "result": {k: v for k, v in details.items() if k not in _RESULT_LISTS},
    }
    if batch.csv_rows and "unexpected_index_list" in details:
        document["failing_rows"] = [index + _FIRST_DATA_ROW for index in details["unexpected_index_list"]]
    error = _exception_message(raw.get("exception_info"))
    if error is not None:
        document["error"] = error
    return document


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
