"""al_lib.labels: the labels table — merging annotations, labels.csv I/O, ActiveLearningDataset's history."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from test_annotations import CLASSES, STAMP, TIMESTAMP, read, write  # classes cat, dog; ids s1..s9, 007
from hypothesis import given, settings
from hypothesis import strategies as st

from al_lib.data import ActiveLearningDataset
from al_lib.labels import (
    ANNOTATION_COLUMNS,
    LABEL_COLUMNS,
    AnnotationError,
    MergeReport,
    check_source,
    empty_labels,
    labels_frame,
    merge_annotations,
    read_labels,
    write_labels,
)

def table(rows):
    return labels_frame({c: [r[i] for r in rows] for i, c in enumerate(LABEL_COLUMNS)})


# ---------------------------------------------------------------------- merging


def csv_batch(inbox, name, rows):
    return read(write(inbox, name, "id,label,annotator\n" + "".join(f"{i},{lab},ann\n" for i, lab in rows)))


def test_merge_appends_new_rows_and_never_mutates_the_input(inbox):
    labels = table([["s1", "cat", 0, "random", None, STAMP]])
    before = labels.copy()
    merged, report = merge_annotations(labels, csv_batch(inbox, "a.csv", [("s2", "dog"), ("s3", "dog")]),
                                       round=1)
    pd.testing.assert_frame_equal(labels, before)
    assert list(merged.columns) == list(LABEL_COLUMNS)
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
    labels = table([["s1", "cat", 0, "human", "x", STAMP]])
    batch = csv_batch(inbox, "a.csv", [("s2", "dog"), ("s1", "dog")])
    with pytest.raises(AnnotationError) as info:
        merge_annotations(labels, batch, round=1)
    message = str(info.value)
    assert message.startswith(f"{inbox / 'a.csv'}, row 3, field 'label': ")
    assert "'cat'" in message and "'dog'" in message and "relabel" in message


def test_relabel_updates_the_row_as_a_correction(inbox):
    labels = table([["s1", "cat", 0, "human", "x", STAMP], ["s2", "cat", 0, "human", "x", STAMP]])
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
    b = csv_batch(inbox, "b.csv", [("s1", "cat"), ("s2", "dog")])
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
    dup = table([["s1", "cat", 0, "human", None, STAMP]] * 2)
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
    assert frame.empty and list(frame.columns) == list(LABEL_COLUMNS)
    assert str(frame["round"].dtype) == "int64"


def test_write_then_read_labels_round_trips_sorted(tmp_path):
    later = "2026-01-02T03:04:06.000000Z"
    frame = table([
        ["s2", "dog", 1, "human", "ann", STAMP], ["010", "cat", 0, "random", None, later],
        ["s1", "dog", 1, "human", None, STAMP], ["s3", "cat", 10, "correction", "x", STAMP],
    ])
    path = tmp_path / "labels.csv"
    write_labels(path, frame)
    back = read_labels(path)
    assert back["id"].tolist() == ["010", "s1", "s2", "s3"]  # by (round, labelled_at, id)
    assert back["annotator"].tolist() == [None, None, "ann", "x"]
    assert back["round"].tolist() == [0, 1, 1, 10]
    assert path.read_text().splitlines()[0] == ",".join(LABEL_COLUMNS)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]  # no temp file left behind
    write_labels(path, back)
    pd.testing.assert_frame_equal(read_labels(path), back)


def test_write_labels_refuses_duplicate_ids(tmp_path):
    path = tmp_path / "labels.csv"
    with pytest.raises(AnnotationError, match="duplicate ids s1"):
        write_labels(path, table([["s1", "cat", 0, "human", None, STAMP]] * 2))
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


# ---------------------------------------------------------------------- the schema, shared


def test_history_of_the_dataset_is_the_labels_table(tmp_path):
    """ActiveLearningDataset.history() is a labels table: same columns and dtypes as read_labels."""
    ds = ActiveLearningDataset(list(range(3)), ids=["a", "b", "c"], classes=CLASSES)
    ds.label(["b", "a"], ["dog", "cat"], round=2, source="human", annotator="ann",
             labelled_at=STAMP)
    history = ds.history()
    write_labels(tmp_path / "labels.csv", history)
    back = read_labels(tmp_path / "labels.csv")
    pd.testing.assert_frame_equal(history, back)
    assert history.dtypes.to_dict() == labels_frame().dtypes.to_dict()


def test_int_ids_and_unnamed_classes_stay_ints():
    ds = ActiveLearningDataset(list(range(3)), classes=3)
    ds.label([2], [1], labelled_at=STAMP)
    row = ds.history().iloc[0]
    assert (row["id"], row["label"]) == (2, 1) and isinstance(row["id"], int)


def test_one_rule_per_field_in_every_entry_point(tmp_path):
    """The same source rule rejects a bad source in labels.csv, in merge and in the dataset."""
    with pytest.raises(ValueError) as direct:
        check_source("robot")
    path = write(tmp_path, "labels.csv", f"id,label,round,source,annotator,labelled_at\ns1,cat,0,robot,,{STAMP}\n")
    with pytest.raises(AnnotationError) as in_file:
        read_labels(path)
    with pytest.raises(ValueError) as in_merge:
        merge_annotations(empty_labels(), pd.DataFrame(columns=list(ANNOTATION_COLUMNS)), round=0, source="robot")
    ds = ActiveLearningDataset(list(range(2)), ids=["s1", "s2"], classes=CLASSES)
    with pytest.raises(ValueError) as in_dataset:
        ds.label(["s1"], ["cat"], source="robot")
    message = str(direct.value)
    assert all(message in str(e.value) for e in (in_file, in_merge, in_dataset))


def test_empty_labels_and_round_column_dtype():
    empty = empty_labels()
    assert empty.empty and list(empty.columns) == list(LABEL_COLUMNS)
    assert empty["round"].dtype == np.int64
