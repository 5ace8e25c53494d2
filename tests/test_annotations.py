"""al_lib.annotations on real files in tmp_path: inbox CSV / Label Studio exports."""

import json
import logging
import re
import pytest

from al_lib.annotations import ANNOTATION_COLUMNS, AnnotationError, read_annotations

CLASSES = ["cat", "dog"]
KNOWN = {f"s{i}" for i in range(1, 10)} | {"007"}
STAMP = "2026-01-02T03:04:05.000006Z"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def write(directory, name, content):
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def read(path, **kwargs):
    return read_annotations(path, known_ids=KNOWN, classes=CLASSES, **kwargs)


def raises(path, **kwargs) -> AnnotationError:
    with pytest.raises(AnnotationError) as info:
        read(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value


def annotation(label, *, completed_by=1, cancelled=False, updated_at=None, from_name="label"):
    out = {"id": 1, "completed_by": completed_by, "was_cancelled": cancelled,
           "result": [{"from_name": from_name, "to_name": "image", "type": "choices",
                       "value": {"choices": [label]}}]}
    if updated_at is not None:
        out["updated_at"] = updated_at
    return out


def task(sample_id, *annotations, key="annotations", data_key="sample_id"):
    return {"id": 100, "data": {"image": "/data/local-files/?d=x.png", data_key: sample_id},
            key: list(annotations), "predictions": []}


# ---------------------------------------------------------------------- CSV


def test_csv_is_read_with_string_ids_stripped_fields_and_line_numbers(inbox):
    path = write(inbox, "batch1.csv", "\ufeffid, label ,annotator\n 007 , cat ,ann\ns2,dog,\n\ns3,cat,bob\n")
    frame = read(path)
    assert list(frame.columns) == list(ANNOTATION_COLUMNS)
    assert frame["id"].tolist() == ["007", "s2", "s3"]  # "007" stays a str, not 7
    assert frame["label"].tolist() == ["cat", "dog", "cat"]
    assert frame["annotator"].tolist() == ["ann", None, "bob"]
    assert frame["row"].tolist() == [2, 3, 5]  # header = 1, blank line 4 skipped
    assert set(frame["source_file"]) == {str(path)}


def test_csv_without_annotator_column_and_identical_repeats_collapse(inbox):
    path = write(inbox, "b.csv", "label,id\ncat,s1\ndog,s2\ncat,s1\n")
    frame = read(path)
    assert frame["id"].tolist() == ["s1", "s2"]
    assert frame["row"].tolist() == [2, 3]  # the first occurrence is kept
    assert frame["annotator"].tolist() == [None, None]


def test_header_only_csv_gives_an_empty_frame(inbox, caplog):
    with caplog.at_level(logging.WARNING, "al_lib.annotations"):
        frame = read(write(inbox, "b.csv", "id,label\n"))
    assert frame.empty and list(frame.columns) == list(ANNOTATION_COLUMNS)
    assert "no annotations" in caplog.text


def test_extra_columns_are_ignored_with_a_warning(inbox, caplog):
    with caplog.at_level(logging.WARNING, "al_lib.annotations"):
        frame = read(write(inbox, "b.csv", "id,label,comment\ns1,cat,blurry\n"))
    assert frame["label"].tolist() == ["cat"]
    assert "comment" in caplog.text


def test_unknown_class_message_names_file_row_and_field(inbox):
    path = write(inbox, "batch1.csv", "id,label\ns1,cat\ns2,cat\ns3,dog\ns4,dgo\n")
    error = raises(path)
    assert str(error) == f"{path}, row 5, field 'label': 'dgo' is not a known class (known: cat, dog)"
    assert (error.file, error.row, error.field) == (str(path), 5, "label")
    assert isinstance(error, ValueError)


def test_unknown_and_empty_ids(inbox):
    path = write(inbox, "b.csv", "id,label\ns1,cat\nnope,dog\n,cat\ns2,\n")
    error = raises(path)
    assert error.errors == [
        (3, "id", "'nope' is not a known sample id"),
        (4, "id", "is empty"),
        (5, "label", "is empty"),
    ]
    assert f"{path}, row 3, field 'id'" in str(error)
    assert str(error).startswith(f"3 errors in {path}:")


def test_conflicting_labels_in_one_file_name_both_rows(inbox):
    error = raises(write(inbox, "b.csv", "id,label\ns1,cat\ns2,dog\ns1,dog\n"))
    assert (error.row, error.field) == (4, "label")
    assert "'s1'" in str(error) and "row 4" in str(error) and "row 2" in str(error)


def test_all_errors_are_collected_and_the_message_lists_the_first_20(inbox):
    rows = "".join(f"x{i},cat\n" for i in range(25))
    error = raises(write(inbox, "b.csv", "id,label\n" + rows))
    assert len(error.errors) == 25
    assert [e[0] for e in error.errors] == list(range(2, 27))
    assert "... and 5 more" in str(error)
    assert "row 21, field 'id'" in str(error) and "row 22," not in str(error)


@pytest.mark.parametrize("content, row, needle", [
    ("id,label\ns1,cat,extra\ns2,dog\n", 2, "expected 2 fields, got 3"),
    ("id,label\ns1\n", 2, "expected 2 fields, got 1"),
    ("id,lable\ns1,cat\n", 1, "missing required column(s) ['label']"),
    ("id,label,id\ns1,cat,s1\n", 1, "duplicate column(s) ['id']"),
    ('id,label\ns1,cat\n"s2,dog\n', 3, "malformed CSV"),
])
def test_malformed_csv(inbox, content, row, needle):
    error = raises(write(inbox, "b.csv", content))
    assert error.row == row and needle in str(error)
    assert f"row {row}" in str(error)


def test_bad_rows_are_reported_alongside_content_errors(inbox):
    error = raises(write(inbox, "b.csv", "id,label\ns1,cat,x\ns2,dgo\n"))
    assert [(r, f) for r, f, _ in error.errors] == [(2, None), (3, "label")]


def test_multiline_quoted_field_keeps_line_numbers_right(inbox):
    error = raises(write(inbox, "b.csv", 'id,label,annotator\ns1,cat,"two\nlines"\ns2,dgo,x\n'))
    assert error.row == 4


def test_non_utf8_csv(inbox):
    error = raises(write(inbox, "b.csv", "id,label\ns1,cat\ns2,d\xf6g\n".encode("latin-1")))
    assert "not UTF-8" in str(error) and "line 3" in str(error)


@pytest.mark.parametrize("name", ["empty.csv", "empty.json"])
def test_empty_file(inbox, name):
    error = raises(write(inbox, name, " \n"))
    assert "is empty" in str(error) and error.row is None


def test_wrong_suffix(inbox):
    error = raises(write(inbox, "labels.xlsx", "id,label\n"))
    assert "unsupported file type '.xlsx'" in str(error)


def test_missing_file(inbox):
    error = raises(inbox / "gone.csv")
    assert "cannot be read" in str(error)


# ---------------------------------------------------------------------- Label Studio JSON


def test_label_studio_export_each_annotators_latest_live_answer_counts(inbox):
    tasks = [
        task("s1",  # one annotator's answers: updated_at beats list order
             annotation("dog", completed_by=3, updated_at="2026-01-02T00:00:00Z"),
             annotation("cat", completed_by=3, updated_at="2026-01-01T00:00:00.5Z")),
        task("s2",  # the later one is cancelled
             annotation("dog", completed_by={"id": 5, "email": "a@b.org"}),
             annotation("cat", cancelled=True)),
        task("s3", annotation("cat", cancelled=True)),  # only cancelled: skipped
        task("s4"),  # not annotated: skipped
        task("s5", annotation("dog"), annotation("dog", completed_by={"id": 9})),  # two agree: both named
    ]
    frame = read(write(inbox, "export.json", tasks))
    assert frame["id"].tolist() == ["s1", "s2", "s5"]
    assert frame["label"].tolist() == ["dog", "dog", "dog"]
    assert frame["annotator"].tolist() == ["3", "a@b.org", "1;9"]
    assert frame["row"].tolist() == [1, 2, 5]


def test_label_studio_annotators_who_disagree_are_named_never_resolved(inbox):
    tasks = [task("s1", annotation("cat", completed_by={"id": 3, "email": "ann@x.org"}),
                  annotation("dog", completed_by=4, updated_at="2030-01-01T00:00:00Z")),
             task("s2", annotation("dog"))]
    error = raises(write(inbox, "export.json", tasks))
    assert len(error.errors) == 1 and (error.row, error.field) == (1, "label")
    assert ("task 1, field 'label': annotators disagree on sample 's1' (task 1, Label Studio task 100): "
            "ann@x.org says 'cat', 4 says 'dog'") in str(error)


def test_label_studio_skipped_tasks_are_logged(inbox, caplog):
    tasks = [task("s1", annotation("cat")), task("s2"), task("s3", annotation("dog", cancelled=True))]
    with caplog.at_level(logging.INFO, "al_lib.annotations"):
        frame = read(write(inbox, "e.json", tasks))
    assert len(frame) == 1
    assert "skipped 2 of 3 tasks" in caplog.text


def test_label_studio_legacy_completions_data_id_fallback_and_int_ids(inbox):
    tasks = [task("s1", annotation("cat", completed_by=None), key="completions"),
             task("s2", annotation("dog"), data_key="id"),
             task(7, annotation("dog"), data_key="id")]
    known = KNOWN | {"7"}
    frame = read_annotations(write(inbox, "e.json", tasks), known_ids=known, classes=CLASSES)
    assert frame["id"].tolist() == ["s1", "s2", "7"]
    assert frame["annotator"].tolist() == [None, "1", "1"]


def test_label_studio_from_name_picks_the_control(inbox):
    two = annotation("cat")
    two["result"].append({"from_name": "quality", "to_name": "image", "type": "choices",
                          "value": {"choices": ["dog"]}})
    two["result"].append({"from_name": "box", "type": "rectanglelabels", "value": {}})
    path = write(inbox, "e.json", [task("s1", two)])
    error = raises(path)
    assert "expected exactly one 'choices' result, got 2" in str(error)
    assert "label_studio_from_name" in str(error)
    assert read(path, label_studio_from_name="label")["label"].tolist() == ["cat"]
    assert read(path, label_studio_from_name="quality")["label"].tolist() == ["dog"]


def test_label_studio_content_errors_say_task(inbox):
    tasks = [task("s1", annotation("cat")), task("s2", annotation("dgo")), task("zz", annotation("dog")),
             task("s1", annotation("dog"))]
    path = write(inbox, "e.json", tasks)
    error = raises(path)
    assert f"{path}, task 2, field 'label': 'dgo' is not a known class" in str(error)
    assert f"{path}, task 3, field 'id': 'zz' is not a known sample id" in str(error)
    assert "task 4" in str(error) and "task 1" in str(error)  # the conflict names both tasks
    assert error.unit == "task" and len(error.errors) == 3


def test_invalid_json_reports_line_and_column(inbox):
    error = raises(write(inbox, "e.json", '[\n  {"data": {"sample_id": "s1"},\n  "annotations": [}\n]'))
    assert "invalid JSON at line 3, column 19" in str(error)


def test_json_nested_past_the_recursion_limit_is_a_bad_file_not_a_crash(inbox):
    error = raises(write(inbox, "deep.json", "[" * 100_000 + "]" * 100_000))
    assert "is nested too deeply to be an annotation export" in str(error) and "deep.json" in str(error)


@pytest.mark.parametrize("content, field, needle", [
    ({"data": {}}, None, "expected a list of tasks"),
    (["s1"], None, "expected a task object, got a JSON string"),
    ([{"annotations": []}], "data", "is missing or not an object"),
    ([{"data": {"image": "x"}, "annotations": []}], "data.sample_id", "is missing"),
    ([{"data": {"sample_id": 1.5}, "annotations": []}], "data.sample_id", "expected a str or int"),
    ([{"data": {"sample_id": "s1"}, "predictions": []}], "annotations", "is this a Label Studio export"),
    ([{"data": {"sample_id": "s1"}, "annotations": {}}], "annotations", "expected a list"),
    ([{"data": {"sample_id": "s1"}, "annotations": [3]}], "annotations[0]", "expected an object"),
    ([{"data": {"sample_id": "s1"}, "annotations": [{"result": None}]}], "annotations[0].result",
     "expected a list"),
    ([{"data": {"sample_id": "s1"}, "annotations": [{"result": []}]}], "annotations[0].result",
     "exactly one 'choices' result, got 0"),
])
def test_label_studio_wrong_structure(inbox, content, field, needle):
    error = raises(write(inbox, "e.json", content))
    assert error.field == field and needle in str(error)
    if field is not None:
        assert f"task 1, field {field!r}" in str(error)


def test_label_studio_requires_exactly_one_choice(inbox):
    bad = annotation("cat")
    bad["result"][0]["value"]["choices"] = ["cat", "dog"]
    error = raises(write(inbox, "e.json", [task("s1", annotation("cat")), task("s2", bad)]))
    assert error.row == 2 and "expected exactly one choice, got ['cat', 'dog']" in str(error)
