"""GX validation of a workspace: real Great Expectations on real PNG files in a tmp workspace."""

import io
import json
import os
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tasks.validation import ValidationReport, check_images, load_and_validate, validate_workspace_data

CLASSES = ["cat", "dog"]
MANIFEST = "data/pool/manifest.csv"
LABELS = "data/labels.csv"
# CSV rows (header = row 1): manifest ids 0..3 on rows 2..5; labels on rows 2..4.
MANIFEST_LINES = ["id,path,split"] + [f"{i},data/pool/images/{i}.png,train" for i in range(4)]
LABEL_LINES = [
    "id,label,round,source,annotator,labelled_at",
    "0,cat,0,random,,2024-05-01T10:00:00Z",
    "1,dog,0,random,,2024-05-01T10:00:00Z",
    "2,cat,1,oracle,alice,2024-05-02T10:00:00Z",
]


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=value).save(path)


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    for i in range(4):
        png(root / f"data/pool/images/{i}.png", value=40 * i)  # four distinct contents
    write_lines(root / MANIFEST, MANIFEST_LINES)
    write_lines(root / LABELS, LABEL_LINES)
    return root


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def failure_keys(report):
    return {(f.file, None if pd.isna(f.row) else int(f.row), f.field, f.check)
            for f in report.failures.itertuples(index=False)}


def replace_line(root, relative, row, line):
    """Replace CSV row ``row`` (header = 1) of a workspace file."""
    lines = (root / relative).read_text().splitlines()
    lines[row - 1] = line
    write_lines(root / relative, lines)


def test_clean_workspace_passes_and_leaves_no_trace(workspace, monkeypatch):
    monkeypatch.chdir(workspace)  # nothing (no gx/ folder) may appear in the working directory
    before = snapshot(workspace)
    report = load_and_validate(workspace, CLASSES, min_labels_per_class=1)
    assert report.success, report.failures
    assert report.failures.empty and list(report.failures.columns) == ["file", "row", "field", "value", "check"]
    stats = report.statistics
    assert (stats["n_manifest"], stats["n_labels"], stats["class_counts"]) == (4, 3, {"cat": 2, "dog": 1})
    assert stats["n_expectations"] == 20 and stats["n_failed_expectations"] == 0
    assert report.docs_path is None
    assert report.summary() == ("validation passed: 4 manifest rows, 3 labels, %d expectations met "
                                "[images: 4 checked, 0 remembered]" % stats["n_expectations"])
    assert snapshot(workspace) == before


def _dup_manifest_id(root):
    replace_line(root, MANIFEST, 5, "2,data/pool/images/3.png,train")


def _escaping_path(root):
    png(root.parent / "x.png")  # exists, but outside the workspace
    replace_line(root, MANIFEST, 3, "1,../x.png,train")


def _absolute_path(root):
    replace_line(root, MANIFEST, 3, f"1,{root / 'data/pool/images/1.png'},train")


def _missing_file(root):
    (root / "data/pool/images/1.png").unlink()


def _corrupt_file(root):
    (root / "data/pool/images/2.png").write_bytes(b"certainly not a PNG")


CASES = {
    "duplicate manifest id": (_dup_manifest_id, {(MANIFEST, 4, "id", "duplicate id"),
                                                 (MANIFEST, 5, "id", "duplicate id")}),
    "path escapes workspace": (_escaping_path, {(MANIFEST, 3, "path", "path escapes the workspace")}),
    "absolute path": (_absolute_path, {(MANIFEST, 3, "path", "path is absolute")}),
    "missing file": (_missing_file, {(MANIFEST, 3, "path", "file not found")}),
    "corrupt image": (_corrupt_file, {(MANIFEST, 4, "path", "image does not decode")}),
    "label not in classes": (lambda r: replace_line(r, LABELS, 3, "1,bird,0,random,,"),
                             {(LABELS, 3, "label", "label not in classes")}),
    "label id not in manifest": (lambda r: replace_line(r, LABELS, 4, "99,cat,1,oracle,alice,"),
                                 {(LABELS, 4, "id", "id not in manifest")}),
    "duplicate label id": (lambda r: replace_line(r, LABELS, 4, "0,cat,1,oracle,alice,"),
                           {(LABELS, 2, "id", "duplicate id"), (LABELS, 4, "id", "duplicate id")}),
    "negative round": (lambda r: replace_line(r, LABELS, 3, "1,dog,-1,random,,"),
                       {(LABELS, 3, "round", "round is not an integer >= 0")}),
    "bad source": (lambda r: replace_line(r, LABELS, 2, "0,cat,0,robot,,"),
                   {(LABELS, 2, "source", "unknown source")}),
    "missing manifest column": (lambda r: write_lines(r / MANIFEST, ["id", "0", "1", "2", "3"]),
                                {(MANIFEST, 1, "path", "missing column")}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_problem_is_reported_at_its_row(workspace, name):
    mutate, expected = CASES[name]
    mutate(workspace)
    before = snapshot(workspace)
    report = load_and_validate(workspace, CLASSES)
    assert not report.success
    assert failure_keys(report) == expected
    assert report.statistics["n_failed_expectations"] >= 1
    file = next(iter(expected))[0]
    assert report.summary().startswith(f"validation failed: {len(expected)} failing row")
    assert f"in {file} ({next(iter(expected))[3]}: {len(expected)})" in report.summary()
    assert snapshot(workspace) == before  # validation never writes the data files


def test_failure_values_and_summary(workspace):
    replace_line(workspace, LABELS, 3, "1,bird,0,random,,")
    replace_line(workspace, LABELS, 4, "2,fish,0,random,,")
    replace_line(workspace, LABELS, 2, "77,cat,0,random,,")
    report = load_and_validate(workspace, CLASSES)
    assert report.summary() == (
        "validation failed: 3 failing rows in data/labels.csv (label not in classes: 2, id not in manifest: 1): "
        "data/labels.csv row 2, id='77': id not in manifest; data/labels.csv row 3, label='bird': label not in "
        "classes; data/labels.csv row 4, label='fish': label not in classes [images: 4 checked, 0 remembered]")
    values = dict(zip(report.failures["row"], report.failures["value"]))
    assert values == {2: "77", 3: "bird", 4: "fish"}


def test_class_below_min_count(workspace):
    report = load_and_validate(workspace, CLASSES, min_labels_per_class=2)
    assert not report.success
    assert failure_keys(report) == {(LABELS, None, "label", "fewer than 2 labels for class")}
    assert report.failures["value"].tolist() == ["dog"]
    assert "data/labels.csv (fewer than 2 labels for class: 1)" in report.summary()


def test_missing_or_empty_labels(workspace):
    (workspace / LABELS).unlink()
    assert load_and_validate(workspace, CLASSES).success
    manifest = pd.read_csv(workspace / MANIFEST, dtype=str)
    report = validate_workspace_data(workspace, manifest, pd.DataFrame(), classes=CLASSES, min_labels_per_class=1)
    assert report.statistics["class_counts"] == {"cat": 0, "dog": 0}
    assert set(report.failures["value"]) == {"cat", "dog"}


def test_decode_images_false_skips_decoding(workspace):
    _corrupt_file(workspace)
    assert load_and_validate(workspace, CLASSES, decode_images=False).success


def test_missing_workspace_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_and_validate(tmp_path / "nope", CLASSES)
    with pytest.raises(FileNotFoundError):
        validate_workspace_data(tmp_path / "nope", pd.DataFrame(), pd.DataFrame(), classes=CLASSES)


def test_data_docs_and_results_json(workspace):
    docs = workspace / "validation/data_docs"
    first = load_and_validate(workspace, CLASSES, docs_dir=docs)
    assert first.success and first.docs_path == docs / "index.html" and first.docs_path.is_file()
    _missing_file(workspace)
    before = snapshot(workspace)
    second = load_and_validate(workspace, CLASSES, docs_dir=docs)
    assert not second.success
    # The docs hold the last validation only; no staging directories remain; nothing else changed.
    assert len(list((docs / "validations/manifest").rglob("*.html"))) == 1
    assert sorted(p.name for p in (workspace / "validation").iterdir()) == ["data_docs", "results.json"]
    assert {p.name for p in workspace.iterdir()} == {"data", "validation"}
    assert {k: v for k, v in snapshot(workspace).items() if k.parts[0] != "validation"} == {
        k: v for k, v in before.items() if k.parts[0] != "validation"}
    results = json.loads((workspace / "validation/results.json").read_text())
    assert results["success"] is False and [s["name"] for s in results["suites"]] == ["manifest", "labels",
                                                                                       "class_counts"]
    assert results["statistics"]["n_manifest"] == 4
    assert results["failures"] == [{"file": MANIFEST, "row": 3, "field": "path", "value": "data/pool/images/1.png",
                                    "check": "file not found"}]


def test_refuses_to_replace_a_foreign_docs_dir(workspace):
    foreign = workspace / "validation/data_docs"
    write_lines(foreign / "notes.txt", ["mine"])
    with pytest.raises(FileExistsError):
        load_and_validate(workspace, CLASSES, docs_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "mine\n"


def test_to_markdown_truncates():
    failures = pd.DataFrame({"file": [LABELS] * 3, "row": pd.array([2, 3, 4], dtype="Int64"),
                             "field": ["label"] * 3, "value": ["a|b", "c", None],
                             "check": ["label not in classes"] * 3})
    stats = {"n_manifest": 5, "n_labels": 3, "class_counts": {}, "n_expectations": 9, "n_failed_expectations": 1}
    text = ValidationReport(False, failures, stats).to_markdown(max_rows=2)
    assert "## Data validation: failed" in text
    assert "| file | row | field | value | check |" in text
    assert "| data/labels.csv | 2 | label | a\\|b | label not in classes |" in text
    assert "| 4 |" not in text and "1 more failing rows" in text


def test_import_is_cheap():
    code = "import sys, tasks.validation; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- incremental image checks ------------------------------------------------------------------

IMAGE_CACHE = ".al/image-checks.json"


def age(root, seconds=60):
    """Date every pool image back: files older than the racy window have trusted stat keys."""
    past = time.time() - seconds
    for path in (root / "data/pool/images").iterdir():
        os.utime(path, (past, past))


def validate_cached(root, **kwargs):
    return load_and_validate(root, CLASSES, image_cache=root / IMAGE_CACHE, **kwargs)


def test_checked_images_are_remembered_not_decoded_again(workspace):
    age(workspace)
    first = validate_cached(workspace)
    assert first.success and first.image_checks == {"checked": 4, "remembered": 0, "hashed": 4}
    assert (workspace / IMAGE_CACHE).is_file()
    second = validate_cached(workspace)
    # Nothing read, nothing decoded: the stat keys of the last whole-pool check all match.
    assert second.image_checks == {"checked": 0, "remembered": 4, "hashed": 0}
    assert second.summary().endswith("[images: 0 checked, 4 remembered]")
    assert (second.success, second.statistics) == (first.success, first.statistics)


def test_fresh_files_are_hashed_again_but_not_decoded(workspace):
    # Written a moment ago: a change within the timestamp granularity would keep the stat key.
    validate_cached(workspace)
    again = validate_cached(workspace)
    assert again.image_checks == {"checked": 0, "remembered": 4, "hashed": 4}


def test_a_modified_image_is_checked_again(workspace):
    age(workspace)
    validate_cached(workspace)
    png(workspace / "data/pool/images/1.png", value=250)  # new content, same size
    report = validate_cached(workspace)
    assert report.success and report.image_checks == {"checked": 1, "remembered": 3, "hashed": 1}
    (workspace / "data/pool/images/2.png").write_bytes(b"now broken")
    report = validate_cached(workspace)
    assert failure_keys(report) == {(MANIFEST, 4, "path", "image does not decode")}
    assert report.image_checks["checked"] == 1


def test_a_renamed_or_copied_image_is_known_by_content(workspace):
    age(workspace)
    validate_cached(workspace)
    images = workspace / "data/pool/images"
    (images / "1.png").rename(images / "one.png")
    replace_line(workspace, MANIFEST, 3, "1,data/pool/images/one.png,train")
    report = validate_cached(workspace)
    assert report.success and report.image_checks == {"checked": 0, "remembered": 4, "hashed": 1}
    table = json.loads((workspace / IMAGE_CACHE).read_bytes().split(b"\n")[1])
    assert sorted(Path(p).name for p in table["paths"]) == ["0.png", "2.png", "3.png", "one.png"]  # 1.png pruned
    assert len(table["images"]) == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated table", "other pixel limit", "deleted"])
def test_a_lost_or_corrupt_cache_costs_time_never_correctness(workspace, monkeypatch, damage):
    age(workspace)
    validate_cached(workspace)
    cache = workspace / IMAGE_CACHE
    _corrupt_file(workspace)  # row 4 breaks while the cache says its old content decoded
    if damage == "garbage":
        cache.write_bytes(b"\x00not json")
    elif damage == "truncated table":
        header, table = cache.read_bytes().split(b"\n", 1)
        header = json.loads(header)
        header["snapshot"] = None
        cache.write_bytes(json.dumps(header).encode() + b"\n" + table[: len(table) // 2])
    elif damage == "other pixel limit":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS - 1)
    else:
        cache.unlink()
    report = validate_cached(workspace)
    assert failure_keys(report) == {(MANIFEST, 4, "path", "image does not decode")}
    assert report.image_checks["checked"] == 4  # everything decoded again
    age(workspace)
    assert validate_cached(workspace).image_checks["checked"] == 0  # the cache was rebuilt


def test_check_images_against_decoding_each_file(tmp_path):
    """The cached answers equal a from-scratch check of every file, whatever the history."""
    files = []
    for i, (size, colour) in enumerate([((3, 5), (9, 0, 0)), ((7, 2), (1, 0, 0)), ((3, 5), (0, 0, 0))]):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", size, color=colour).save(files[-1])
    Image.new("RGB", (3, 5), color=(0, 0, 0)).save(tmp_path / "same-as-0.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (tmp_path / "folder.png").mkdir()
    paths = files + [tmp_path / "same-as-0.png", tmp_path / "broken.png", tmp_path / "missing.png",
                     tmp_path / "folder.png"]
    scratch = check_images(paths)
    assert [None if f is None else (f.format, f.mode, f.width, f.height) for f in scratch.facts[:4]] == [
        ("PNG", "RGB", 3, 5), ("PNG", "RGB", 7, 2), ("PNG", "RGB", 3, 5), ("PNG", "RGB", 3, 5)]
    assert not scratch.facts[4].decodes and scratch.facts[4].error
    assert scratch.facts[5:] == [None, None]  # missing, not a regular file
    # 2.png and same-as-0.png share one content: decoded once.
    assert (scratch.checked, scratch.remembered) == (4, 1)
    cache = tmp_path / "cache.json"
    for _ in range(3):
        assert check_images(paths, cache=cache, prune=True).facts == scratch.facts


# --- what a full decode catches ----------------------------------------------------------------


def _chunks(data):
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        yield data[position + 4:position + 8], data[position + 8:position + 8 + length]
        position += 12 + length


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def broken_idat_png(path):
    """A PNG whose every CRC is valid but whose compressed pixel stream is corrupt."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=77).save(buffer, "PNG")
    data = buffer.getvalue()
    out = data[:8]
    for kind, body in _chunks(data):
        if kind == b"IDAT":  # keep the zlib header and checksum, scramble the deflate data
            body = body[:2] + bytes(b ^ 0x5A for b in body[2:-4]) + body[-4:]
        out += _chunk(kind, body)
    path.write_bytes(out)


def bomb_png(path):
    """90 Mpx (11 kB): over PIL's MAX_IMAGE_PIXELS, where PIL only warns (it errors at twice that)."""
    Image.new("1", (10_000, 9_000)).save(path)


def test_broken_pixel_stream_and_decompression_bomb_are_reported_by_row_and_path(workspace):
    broken_idat_png(workspace / "data/pool/images/1.png")
    bomb_png(workspace / "data/pool/images/2.png")
    with Image.open(workspace / "data/pool/images/1.png") as image:
        image.verify()  # passes: verify() alone lets this file through
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(workspace / "data/pool/images/2.png").close()  # PIL: only a warning
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)

    report = validate_cached(workspace)
    assert failure_keys(report) == {(MANIFEST, 3, "path", "image does not decode"),
                                    (MANIFEST, 4, "path", "image does not decode")}
    assert report.summary() == (
        "validation failed: 2 failing rows in data/pool/manifest.csv (image does not decode: 2): "
        "data/pool/manifest.csv row 3, path='data/pool/images/1.png': image does not decode; "
        "data/pool/manifest.csv row 4, path='data/pool/images/2.png': image does not decode "
        "[images: 4 checked, 0 remembered]")
    facts = check_images([workspace / f"data/pool/images/{i}.png" for i in (1, 2)]).facts
    assert "broken data stream" in facts[0].error and "DecompressionBombWarning" in facts[1].error
    # Remembered as failing too: the next round reports them without decoding.
    again = validate_cached(workspace)
    assert failure_keys(again) == failure_keys(report) and again.image_checks["checked"] == 0


# --- results.json and summaries ----------------------------------------------------------------


def test_results_json_is_deterministic(workspace):
    docs = workspace / "validation/data_docs"
    results = workspace / "validation/results.json"
    validate_cached(workspace, docs_dir=docs)  # decodes every image
    first = results.read_bytes()
    age(workspace)
    validate_cached(workspace, docs_dir=docs)  # decodes none: same inputs, same bytes
    assert results.read_bytes() == first
    replace_line(workspace, LABELS, 3, "1,cat,0,random,,2024-05-01T10:00:00Z")
    validate_cached(workspace, docs_dir=docs)
    changed = results.read_bytes()
    assert changed != first and json.loads(changed)["statistics"]["class_counts"] == {"cat": 3, "dog": 0}
    replace_line(workspace, LABELS, 3, LABEL_LINES[2])
    validate_cached(workspace, docs_dir=docs)
    assert results.read_bytes() == first

    document = json.loads(first)
    assert set(document) == {"success", "statistics", "suites", "failures"}
    text = first.decode()
    assert "run_id" not in text and "validation_time" not in text and "batch_id" not in text
    expectation = document["suites"][0]["expectations"][2]
    assert expectation == {
        "expectation": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}, "field": "id",
        "check": "duplicate id", "success": True, "failing_rows": [],
        "result": {"element_count": 4, "missing_count": 0, "missing_percent": 0.0, "unexpected_count": 0,
                   "unexpected_percent": 0.0, "unexpected_percent_nonmissing": 0.0,
                   "unexpected_percent_total": 0.0}}


def test_results_json_names_failing_rows(workspace):
    _dup_manifest_id(workspace)
    validate_cached(workspace, docs_dir=workspace / "validation/data_docs")
    document = json.loads((workspace / "validation/results.json").read_text())
    unique = next(e for e in document["suites"][0]["expectations"] if e["check"] == "duplicate id")
    assert unique["success"] is False and unique["failing_rows"] == [4, 5]
    assert unique["result"]["unexpected_count"] == 2
    assert [(f["row"], f["value"]) for f in document["failures"]] == [(4, "2"), (5, "2")]


def test_summary_names_the_first_failing_rows():
    failures = pd.DataFrame({"file": [MANIFEST] * 4 + [LABELS], "row": pd.array([1, 2, 3, 9, None], dtype="Int64"),
                             "field": ["split", "id", "path", "path", "label"],
                             "value": [None, None, "a.png", "b.png", "dog"],
                             "check": ["missing column", "id missing", "file not found", "file not found",
                                       "fewer than 2 labels for class"]})
    stats = {"n_manifest": 5, "n_labels": 3, "class_counts": {}, "n_expectations": 9, "n_failed_expectations": 3}
    report = ValidationReport(False, failures, stats)
    assert report.summary() == (
        "validation failed: 4 failing rows in data/pool/manifest.csv (file not found: 2, missing column: 1, "
        "id missing: 1); 1 failing row in data/labels.csv (fewer than 2 labels for class: 1): "
        "data/pool/manifest.csv row 1, split: missing column; data/pool/manifest.csv row 2, id: id missing; "
        "data/pool/manifest.csv row 3, path='a.png': file not found; and 2 more")
    assert report.summary(max_named=5).endswith("data/labels.csv, label='dog': fewer than 2 labels for class")
    assert "| data/pool/manifest.csv | 3 | path | a.png | file not found |" in report.to_markdown()
