"""al_lib.export: query tables, Label Studio config/tasks, idempotent atomic writes, round trip."""

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
import torch

from al_lib.annotations import read_annotations
from al_lib.export import (
    QUERY_COLUMNS,
    label_studio_config,
    label_studio_tasks,
    query_frame,
    write_queries,
)

CLASSES = ["cat", "dog", "bird"]
IDS = ["s7", "s2", "s9"]
PROBS = np.array([[0.1, 0.7, 0.2], [0.4, 0.4, 0.2], [0.2, 0.1, 0.7]])  # row 2 ties: lower index
PATHS = {"s7": "images/cat 7.png", "s2": "images/s2.png", "s9": "images/b&w/s9.png"}


@pytest.fixture
def queries():
    return query_frame(IDS, np.array([0.9, np.nan, 0.1234567891]), PROBS, CLASSES)


def test_query_frame(queries):
    assert list(queries.columns) == list(QUERY_COLUMNS)
    assert queries["id"].tolist() == IDS
    assert queries["rank"].tolist() == [1, 2, 3] and str(queries["rank"].dtype) == "int64"
    assert queries["predicted_label"].tolist() == ["dog", "cat", "bird"]
    np.testing.assert_allclose(queries["predicted_prob"], [0.7, 0.4, 0.7])
    assert math.isnan(queries["score"][1])


def test_query_frame_accepts_torch_and_empty():
    frame = query_frame(np.array(IDS), torch.tensor([3.0, 2.0, 1.0]), torch.tensor(PROBS), CLASSES)
    assert frame["id"].tolist() == IDS and frame["score"].tolist() == [3.0, 2.0, 1.0]
    empty = query_frame([], np.zeros(0), np.zeros((0, 3)), CLASSES)
    assert empty.empty and list(empty.columns) == list(QUERY_COLUMNS)


def test_a_query_without_a_model_predicts_nothing(tmp_path):
    """A cold-start query (no model yet): no predicted class in the CSV, no pre-annotation."""
    frame = query_frame(IDS, np.full(3, np.nan), None, CLASSES)
    assert frame["predicted_label"].tolist() == ["", "", ""] and frame["predicted_prob"].isna().all()
    tasks = label_studio_tasks(frame, PATHS, model_version="cold-start")
    assert [t["predictions"] for t in tasks] == [[], [], []] and [t["data"]["rank"] for t in tasks] == [1, 2, 3]
    csv_path, _ = write_queries(tmp_path, 0, frame, tasks)
    assert csv_path.read_text().splitlines()[1:] == ["s7,1,,,", "s2,2,,,", "s9,3,,,"]
    with pytest.raises(ValueError, match="'s7' repeats"):
        query_frame(IDS + ["s7"], np.zeros(4), None, CLASSES)


@pytest.mark.parametrize("ids, scores, probs, needle", [
    (IDS, np.zeros(2), PROBS, "scores must have shape"),
    (IDS, np.zeros(3), PROBS[:, :2], "mean_probs must have shape"),
    (IDS, np.zeros(3), PROBS[:, :, None], "mean_probs must have shape"),
    (["a", "b", "a"], np.zeros(3), PROBS, "'a' repeats"),
    (IDS, np.zeros(3), np.where(PROBS == 0.1, np.nan, PROBS), "NaN"),
])
def test_query_frame_rejects_bad_input(ids, scores, probs, needle):
    with pytest.raises(ValueError, match=needle):
        query_frame(ids, scores, probs, CLASSES)


def test_label_studio_config_escapes_class_names():
    classes = ["cat", 'a&b "c" <d>', "it's"]
    xml = label_studio_config(classes, from_name="lab<el", to_name="img")
    root = ET.fromstring(xml)
    assert root.tag == "View"
    image, choices = list(root)
    assert (image.tag, image.get("name"), image.get("value")) == ("Image", "img", "$image")
    assert choices.get("name") == "lab<el" and choices.get("toName") == "img"
    assert choices.get("choice") == "single"
    assert [c.get("value") for c in choices] == classes


def test_label_studio_config_rejects_bad_classes():
    with pytest.raises(ValueError):
        label_studio_config(["cat", "cat"])


def test_label_studio_tasks(queries):
    tasks = label_studio_tasks(queries, PATHS, model_version="round-3")
    json.dumps(tasks, allow_nan=False)  # valid JSON: no NaN anywhere
    assert tasks[0] == {
        "data": {"image": "/data/local-files/?d=images/cat%207.png", "sample_id": "s7", "rank": 1, "score": 0.9},
        "predictions": [{"model_version": "round-3", "score": 0.7, "result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}]}],
    }
    assert tasks[1]["data"]["score"] is None
    assert tasks[2]["data"]["image"] == "/data/local-files/?d=images/b%26w/s9.png"


@pytest.mark.parametrize("paths, needle", [
    ({"s7": "a.png", "s2": "b.png"}, "no image path for sample id 's9'"),
    ({**PATHS, "s2": "/abs/s2.png"}, "sample id 's2': path '/abs/s2.png' is absolute"),
    ({**PATHS, "s2": "../outside.png"}, "sample id 's2': path '../outside.png' escapes the root"),
])
def test_label_studio_tasks_rejects_bad_paths(queries, paths, needle):
    with pytest.raises(ValueError, match=needle):
        label_studio_tasks(queries, paths)


def test_write_queries_writes_both_files(tmp_path, queries):
    tasks = label_studio_tasks(queries, PATHS)
    tasks[0]["data"]["note"] = "größer"
    csv_path, json_path = write_queries(tmp_path / "queries", 2, queries, tasks)
    assert (csv_path.name, json_path.name) == ("round-2.csv", "round-2.labelstudio.json")
    lines = csv_path.read_text().splitlines()
    assert lines == ["id,rank,score,predicted_label,predicted_prob", "s7,1,0.9,dog,0.7", "s2,2,,cat,0.4",
                     "s9,3,0.1234567891,bird,0.7"]
    text = json_path.read_text(encoding="utf-8")
    assert json.loads(text) == tasks and "größer" in text and '\n  {\n    "data"' in text
    back = pd.read_csv(csv_path, dtype={"id": str})
    assert back["id"].tolist() == IDS and np.isnan(back["score"][1])


def test_write_queries_rounds_probabilities_to_6_decimals(tmp_path):
    frame = query_frame(["a"], [1.0], [[0.12345678, 0.87654322]], ["x", "y"])
    csv_path, _ = write_queries(tmp_path, 0, frame, [])
    assert csv_path.read_text().splitlines()[1] == "a,1,1.0,y,0.876543"


def test_write_queries_is_idempotent_and_refuses_different_content(tmp_path, queries):
    tasks = label_studio_tasks(queries, PATHS)
    paths = write_queries(tmp_path, 1, queries, tasks)
    stats = [p.stat() for p in paths]
    assert write_queries(tmp_path, 1, queries, tasks) == paths
    assert [(s.st_ino, s.st_mtime_ns) for s in stats] == [(p.stat().st_ino, p.stat().st_mtime_ns) for p in paths]
    before = [p.read_bytes() for p in paths]
    other = label_studio_tasks(queries, PATHS, model_version="round-9")
    with pytest.raises(ValueError, match=r"round-1\.labelstudio\.json already exists with different content"):
        write_queries(tmp_path, 1, queries, other)
    assert [p.read_bytes() for p in paths] == before  # the CSV was not rewritten either
    paths[1].unlink()  # a crash between the two writes: the rerun completes the round
    write_queries(tmp_path, 1, queries, tasks)
    assert [p.read_bytes() for p in paths] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-1.csv", "round-1.labelstudio.json"]


def test_write_queries_rejects_bad_arguments(tmp_path, queries):
    with pytest.raises(ValueError, match="round"):
        write_queries(tmp_path, -1, queries, [])
    with pytest.raises(ValueError, match="columns"):
        write_queries(tmp_path, 0, queries[["id", "rank"]], [])
    with pytest.raises(ValueError):
        write_queries(tmp_path, 0, queries, [{"data": {"score": float("nan")}}])
    assert not list(tmp_path.iterdir())


def test_round_trip_through_label_studio(tmp_path, queries):
    """Exported tasks, answered in Label Studio and exported as JSON, read back as the answers."""
    _, json_path = write_queries(tmp_path / "queries", 0, queries, label_studio_tasks(queries, PATHS))
    answers = {"s7": "bird", "s2": "cat", "s9": "dog"}
    exported = []
    for n, task in enumerate(json.loads(json_path.read_text(encoding="utf-8")), start=1):
        # what Label Studio adds on export: task id, annotations (here: one cancelled, one real)
        label = answers[task["data"]["sample_id"]]
        result = [{**task["predictions"][0]["result"][0], "value": {"choices": [label]}, "origin": "manual"}]
        exported.append({**task, "id": n, "annotations": [
            {"id": 2 * n, "completed_by": {"id": 1, "email": "ann@example.org"}, "result": result,
             "was_cancelled": False, "updated_at": "2026-03-01T10:00:00.000000Z"},
            {"id": 2 * n + 1, "completed_by": 2, "result": [], "was_cancelled": True,
             "updated_at": "2026-03-02T10:00:00.000000Z"},
        ]})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "project-1.json").write_text(json.dumps(exported), encoding="utf-8")
    frame = read_annotations(inbox / "project-1.json", known_ids=set(IDS), classes=CLASSES)
    assert dict(zip(frame["id"], frame["label"])) == answers
    assert set(frame["annotator"]) == {"ann@example.org"}
