"""GX validation of a workspace: real Great Expectations on real PNG files in a tmp workspace."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from tasks.validation import ValidationReport, load_and_validate, validate_workspace_data

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


def png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=128).save(path)


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    for i in range(4):
        png(root / f"data/pool/images/{i}.png")
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
    assert stats["n_expectations"] == 19 and stats["n_failed_expectations"] == 0
    assert report.docs_path is None
    assert report.summary() == "validation passed: 4 manifest rows, 3 labels, %d expectations met" % stats[
        "n_expectations"]
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
        "validation failed: 3 failing rows in data/labels.csv (label not in classes: 2, id not in manifest: 1)")
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
    assert results["success"] is False and len(results["results"]) == 3
    assert results["statistics"]["n_manifest"] == 4


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
