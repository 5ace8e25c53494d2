"""al_lib.annotations on real files in tmp_path: inbox CSV / Label Studio exports, labels.csv."""

import json
import logging
import re
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from al_lib.annotations import (
    ANNOTATION_COLUMNS,
    AnnotationError,
    MergeReport,
    merge_annotations,
    read_annotations,
    read_labels,
    write_labels,
)
from al_lib.data import HISTORY_COLUMNS, ActiveLearningDataset

CLASSES = ["cat", "dog"]
KNOWN = {f"s{i}" for i in range(1, 10)} | {"007"}
STAMP = "2026-01-02T03:04:05.000006Z"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def inbox(tmp_path):
    path = tmp_path / "data" / "inbox"
    path.mkdir(parents=True)
    return path


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


def labels_frame(rows):
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


def empty_labels():
    return labels_frame([])


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


def test_label_studio_export_latest_non_cancelled_annotation_wins(inbox):
    tasks = [
        task("s1",  # updated_at beats list order
             annotation("dog", completed_by=3, updated_at="2026-01-02T00:00:00Z"),
             annotation("cat", completed_by=4, updated_at="2026-01-01T00:00:00.5Z")),
        task("s2",  # the later one is cancelled
             annotation("dog", completed_by={"id": 5, "email": "a@b.org"}),
             annotation("cat", cancelled=True)),
        task("s3", annotation("cat", cancelled=True)),  # only cancelled: skipped
        task("s4"),  # not annotated: skipped
        task("s5", annotation("cat"), annotation("dog", completed_by={"id": 9})),  # no stamps: order
    ]
    frame = read(write(inbox, "export.json", tasks))
    assert frame["id"].tolist() == ["s1", "s2", "s5"]
    assert frame["label"].tolist() == ["dog", "dog", "dog"]
    assert frame["annotator"].tolist() == ["3", "a@b.org", "9"]
    assert frame["row"].tolist() == [1, 2, 5]


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


# ---------------------------------------------------------------------- merging


def csv_batch(inbox, name, rows):
    return read(write(inbox, name, "id,label,annotator\n" + "".join(f"{i},{lab},ann\n" for i, lab in rows)))


def test_merge_appends_new_rows_and_never_mutates_the_input(inbox):
    labels = labels_frame([["s1", "cat", 0, "random", None, STAMP]])
    before = labels.copy()
    merged, report = merge_annotations(labels, csv_batch(inbox, "a.csv", [("s2", "dog"), ("s3", "dog")]),
                                       round=1)
    pd.testing.assert_frame_equal(labels, before)
    assert list(merged.columns) == list(HISTORY_COLUMNS)
    assert merged["id"].tolist() == ["s1", "s2", "s3"]
    assert merged["round"].tolist() == [0, 1, 1] and str(merged["round"].dtype) == "int64"
    assert merged["source"].tolist() == ["random", "human", "human"]
    assert merged["annotator"].tolist() == [None, "ann", "ann"]
    assert all(TIMESTAMP.match(s) for s in merged["labelled_at"])
    assert report == MergeReport(n_new=2, class_counts={"dog": 2}, files=[str(inbox / "a.csv")])


def test_reingesting_the_same_file_adds_nothing(inbox):
    batch = csv_batch(inbox, "a.csv", [("s1", "cat"), ("s2", "dog")])
    once, _ = merge_annotations(empty_labels(), batch, round=1, labelled_at=STAMP)
    twice, report = merge_annotations(once, batch, round=2)
    pd.testing.assert_frame_equal(once, twice)
    assert (report.n_new, report.n_already_present) == (0, 2)


def test_conflict_with_existing_label_names_file_row_field_and_both_labels(inbox):
    labels = labels_frame([["s1", "cat", 0, "human", "x", STAMP]])
    batch = csv_batch(inbox, "a.csv", [("s2", "dog"), ("s1", "dog")])
    with pytest.raises(AnnotationError) as info:
        merge_annotations(labels, batch, round=1)
    message = str(info.value)
    assert message.startswith(f"{inbox / 'a.csv'}, row 3, field 'label': ")
    assert "'cat'" in message and "'dog'" in message and "relabel" in message


def test_relabel_updates_the_row_as_a_correction(inbox):
    labels = labels_frame([["s1", "cat", 0, "human", "x", STAMP], ["s2", "cat", 0, "human", "x", STAMP]])
    batch = csv_batch(inbox, "a.csv", [("s1", "dog")])
    merged, report = merge_annotations(labels, batch, round=3, labelled_at="2026-02-01T00:00:00+01:00",
                                       on_conflict="relabel")
    assert merged.iloc[0].tolist() == ["s1", "dog", 3, "correction", "ann", "2026-01-31T23:00:00.000000Z"]
    assert merged.iloc[1].tolist() == ["s2", "cat", 0, "human", "x", STAMP]
    assert (report.n_new, report.n_relabelled, report.class_counts) == (0, 1, {})


def test_same_id_in_two_files_with_different_labels_names_both(inbox):
    a = csv_batch(inbox, "a.csv", [("s1", "cat")])
    b = csv_batch(inbox, "b.csv", [("s3", "cat"), ("s1", "dog")])
    with pytest.raises(AnnotationError) as info:
        merge_annotations(empty_labels(), [a, b], round=1)
    assert info.value.file == str(inbox / "b.csv") and info.value.row == 3
    assert f"{inbox / 'a.csv'}, row 2" in str(info.value)


def test_identical_annotations_in_two_files_count_once(inbox):
    a = csv_batch(inbox, "a.csv", [("s1", "cat")])
    b = read(write(inbox, "b.json", [task("s1", annotation("cat")), task("s2", annotation("dog"))]))
    merged, report = merge_annotations(empty_labels(), pd.concat([a, b]), round=1)
    assert merged["id"].tolist() == ["s1", "s2"]
    assert (report.n_new, report.n_duplicates, len(report.files)) == (2, 1, 2)


@pytest.mark.parametrize("kwargs, needle", [
    ({"round": -1}, "round"), ({"round": 1, "source": "robot"}, "source"),
    ({"round": 1, "on_conflict": "ignore"}, "on_conflict"),
])
def test_merge_argument_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        merge_annotations(empty_labels(), pd.DataFrame(columns=list(ANNOTATION_COLUMNS)), **kwargs)


def test_merge_rejects_malformed_tables():
    with pytest.raises(ValueError, match="columns"):
        merge_annotations(pd.DataFrame({"id": []}), pd.DataFrame(columns=list(ANNOTATION_COLUMNS)), round=0)
    with pytest.raises(ValueError, match="lack column"):
        merge_annotations(empty_labels(), pd.DataFrame({"id": ["s1"]}), round=0)
    dup = labels_frame([["s1", "cat", 0, "human", None, STAMP]] * 2)
    with pytest.raises(ValueError, match="duplicate id 's1'"):
        merge_annotations(dup, pd.DataFrame(columns=list(ANNOTATION_COLUMNS)), round=0)


IDS = [f"i{n}" for n in range(12)]


@settings(max_examples=60, deadline=None)
@given(truth=st.fixed_dictionaries({i: st.sampled_from(CLASSES) for i in IDS}),
       batches=st.lists(st.lists(st.sampled_from(IDS), max_size=8), max_size=5),
       together=st.booleans())
def test_merging_consistent_batches_gives_exactly_the_union(truth, batches, together):
    frames = [pd.DataFrame({"id": ids, "label": [truth[i] for i in ids], "annotator": None,
                            "source_file": f"b{n}.csv", "row": range(2, len(ids) + 2)})
              for n, ids in enumerate(batches)]
    labels = empty_labels()
    if together:
        labels, _ = merge_annotations(labels, frames, round=1)
    for n, frame in enumerate(frames):  # merging again (or one by one) must not change the outcome
        labels, _ = merge_annotations(labels, frame, round=n)
    union = {i for ids in batches for i in ids}
    assert not labels["id"].duplicated().any()
    assert set(labels["id"]) == union and len(labels) == len(union)
    assert all(truth[i] == lab for i, lab in zip(labels["id"], labels["label"]))


# ---------------------------------------------------------------------- labels.csv


def test_read_labels_of_a_missing_file_is_an_empty_frame(tmp_path):
    frame = read_labels(tmp_path / "labels.csv")
    assert frame.empty and list(frame.columns) == list(HISTORY_COLUMNS)
    assert str(frame["round"].dtype) == "int64"


def test_write_then_read_labels_round_trips_sorted(tmp_path):
    later = "2026-01-02T03:04:06.000000Z"
    frame = labels_frame([
        ["s2", "dog", 1, "human", "ann", STAMP], ["010", "cat", 0, "random", None, later],
        ["s1", "dog", 1, "human", None, STAMP], ["s3", "cat", 10, "correction", "x", STAMP],
    ])
    path = tmp_path / "labels.csv"
    write_labels(path, frame)
    back = read_labels(path)
    assert back["id"].tolist() == ["010", "s1", "s2", "s3"]  # by (round, labelled_at, id)
    assert back["annotator"].tolist() == [None, None, "ann", "x"]
    assert back["round"].tolist() == [0, 1, 1, 10]
    assert path.read_text().splitlines()[0] == ",".join(HISTORY_COLUMNS)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]  # no temp file left behind
    write_labels(path, back)
    pd.testing.assert_frame_equal(read_labels(path), back)


def test_write_labels_refuses_duplicate_ids(tmp_path):
    path = tmp_path / "labels.csv"
    with pytest.raises(AnnotationError, match="duplicate ids s1"):
        write_labels(path, labels_frame([["s1", "cat", 0, "human", None, STAMP]] * 2))
    assert not path.exists()
    with pytest.raises(ValueError, match="columns"):
        write_labels(path, pd.DataFrame({"id": ["s1"]}))


@pytest.mark.parametrize("content, row, field, needle", [
    ("id,label,round,source,annotator,labelled_at,extra\n", 1, None, "unknown column(s) ['extra']"),
    ("id,label,round,source,annotator\n", 1, None, "missing required column(s) ['labelled_at']"),
    (f"id,label,round,source,annotator,labelled_at\ns1,cat,0,human,,{STAMP}\ns1,dog,0,human,,{STAMP}\n",
     3, "id", "'s1' is a duplicate of row 2"),
    (f"id,label,round,source,annotator,labelled_at\ns1,cat,1.5,human,,{STAMP}\n", 2, "round",
     "'1.5' is not a non-negative integer"),
    (f"id,label,round,source,annotator,labelled_at\ns1,cat,0,robot,,{STAMP}\n", 2, "source",
     "'robot' is not a known source"),
    ("id,label,round,source,annotator,labelled_at\ns1,cat,0,human,,yesterday\n", 2, "labelled_at",
     "not an ISO-8601 timestamp"),
    ("id,label,round,source,annotator,labelled_at\ns1,cat,0,human\n", 2, None, "expected 6 fields"),
    ("", None, None, "is empty"),
])
def test_read_labels_malformed(tmp_path, content, row, field, needle):
    path = write(tmp_path, "labels.csv", content)
    with pytest.raises(AnnotationError) as info:
        read_labels(path)
    assert (info.value.row, info.value.field) == (row, field)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_read_labels_collects_every_problem(tmp_path):
    path = write(tmp_path, "labels.csv", "id,label,round,source,annotator,labelled_at\n"
                                         f",cat,x,human,,{STAMP}\ns2,,0,nobody,,{STAMP}\n")
    with pytest.raises(AnnotationError) as info:
        read_labels(path)
    assert [(r, f) for r, f, _ in info.value.errors] == [(2, "id"), (2, "round"), (3, "label"), (3, "source")]


def test_labels_table_interoperates_with_active_learning_dataset(tmp_path, inbox):
    ds = ActiveLearningDataset(list(range(4)), ids=["s1", "s2", "s3", "007"], classes=CLASSES)
    ds.label(["s1"], ["cat"], round=0, source="random")
    path = tmp_path / "labels.csv"
    write_labels(path, ds.history())
    batch = csv_batch(inbox, "a.csv", [("007", "dog"), ("s1", "cat")])
    merged, report = merge_annotations(read_labels(path), batch, round=1)
    write_labels(path, merged)
    again = ActiveLearningDataset(list(range(4)), ids=["s1", "s2", "s3", "007"], classes=CLASSES)
    again.load_history(read_labels(path))
    assert again.label_of("007") == "dog" and again.label_of("s1") == "cat"
    assert (report.n_new, report.n_already_present) == (1, 1)
    stamp = datetime.fromisoformat(merged["labelled_at"].iloc[-1].replace("Z", "+00:00"))
    assert abs(stamp - datetime.now(timezone.utc)) < timedelta(minutes=5)
