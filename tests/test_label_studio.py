"""al_lib.label_studio through read_annotations: Label Studio's JSON, JSON-MIN and CSV exports.

The JSON-MIN and CSV texts below are what a Label Studio 1.23.2 server exported for two
annotators (user ids 3 and 4) on tasks pushed by `al` (tests/flows/test_labelstudio_server.py runs the
same against a live server).
"""

import pytest
from test_annotations import raises, read, write  # classes cat, dog; sample ids s1..s9

from al_lib import label_studio


def min_item(sample, label, annotator, *, task=1, annotation=1, updated="2026-12-02T02:31:56.275959Z"):
    return {"image": f"/data/local-files/?d=data/pool/images/{sample}.png", "sample_id": sample, "rank": 1,
            "score": 0.5, "id": task, "label": label, "annotator": annotator, "annotation_id": annotation,
            "created_at": "2026-12-02T02:31:56.275898Z", "updated_at": updated, "lead_time": 2.5}


JSON_MIN = [min_item("s1", "cat", 4, annotation=2), min_item("s1", "cat", 3, annotation=1),
            min_item("s2", "dog", 4, task=2, annotation=4), min_item("s2", "cat", 3, task=2, annotation=3)]
CSV = ('"annotation_id","annotator","created_at","id","image","label","lead_time","rank","sample_id","score",'
       '"updated_at"\n'
       '2,"4","2026-12-02T02:31:56.833148Z",1,"/data/local-files/?d=a.png","cat",2.5,1,"s1",0.5,"2026-12-02T02:31:56Z"\n'
       '1,"3","2026-12-02T02:31:56.275898Z",1,"/data/local-files/?d=a.png","cat",2.5,1,"s1",0.5,"2026-12-02T02:31:56Z"\n'
       '4,"4","2026-12-02T02:31:57.673457Z",2,"/data/local-files/?d=b.png","dog",2.5,2,"s2","","2026-12-02T02:31:57Z"\n'
       '3,"3","2026-12-02T02:31:57.259004Z",2,"/data/local-files/?d=b.png","cat",2.5,2,"s2","","2026-12-02T02:31:57Z"\n')


@pytest.mark.parametrize("name, content, unit, first", [("min.json", JSON_MIN, "task", 1),
                                                         ("export.csv", CSV, "row", 2)])  # CSV: header = row 1
def test_flat_exports_name_the_disagreement_and_keep_both_annotators_of_agreed_samples(tmp_path, name, content,
                                                                                       unit, first):
    path = write(tmp_path, name, content)
    error = raises(path)
    b1, b2 = first + 2, first + 3
    assert len(error.errors) == 1 and (error.row, error.field) == (b1, "label")
    assert (f"{path}, {unit} {b1}, field 'label': annotators disagree on sample 's2': 4 says 'dog' ({unit} {b1}, "
            f"Label Studio task 2), 3 says 'cat' ({unit} {b2}, Label Studio task 2); not imported") in str(error)
    agreed = ([*JSON_MIN[:3], min_item("s2", "dog", 3, task=2, annotation=3)] if unit == "task"
              else CSV.replace('"cat",2.5,2', '"dog",2.5,2'))
    frame = read(write(tmp_path, "agreed" + path.suffix, agreed))
    assert frame[["id", "label", "annotator"]].values.tolist() == [["s1", "cat", "4;3"], ["s2", "dog", "4;3"]]
    assert frame["row"].tolist() == [first, first + 2]


def test_json_min_with_another_choices_name_and_unannotated_tasks(tmp_path):
    items = [{**min_item("s1", None, 3), "quality": "dog"}, {"sample_id": "s3", "id": 9, "image": "x"}]
    del items[0]["label"]
    path = write(tmp_path, "min.json", items)
    error = raises(path)
    assert error.field == "label" and "no choice under 'label'" in str(error) and "label_studio_from_name" in str(error)
    frame = read(path, label_studio_from_name="quality")
    assert frame[["id", "label", "annotator"]].values.tolist() == [["s1", "dog", "3"]]


@pytest.mark.parametrize("item, field, needle", [
    ({"sample_id": None}, "sample_id", "only the query tasks exported for Label Studio"),
    ({"sample_id": 1.5}, "sample_id", "expected a str or int"),
    ({"label": {"choices": ["cat", "dog"]}}, "label", "expected exactly one choice"),
    ({"label": 3}, "label", "expected exactly one choice, got 3"),
    ({"label": "bird"}, "label", "'bird' is not a known class"),
    ({"sample_id": "zz"}, "id", "'zz' is not a known sample id"),
])
def test_malformed_json_min_items_name_item_and_field(tmp_path, item, field, needle):
    path = write(tmp_path, "min.json", [min_item("s1", "cat", 3), {**min_item("s2", "dog", 3, task=2), **item}])
    error = raises(path)
    assert (error.row, error.field) == (2, field) and needle in str(error)
    assert f"task 2, field {field!r}" in str(error)


def test_json_min_multi_choice_field_with_one_choice_is_read(tmp_path):
    frame = read(write(tmp_path, "min.json", [min_item("s1", {"choices": ["dog"]}, 3)]))
    assert frame["label"].tolist() == ["dog"]


@pytest.mark.parametrize("replace, row, field, needle", [
    (('"cat",2.5,1,"s1"', '"",2.5,1,"s1"'), 2, "label", "no choice under 'label'"),
    (('"cat",2.5,1,"s1"', '"bird",2.5,1,"s1"'), 2, "label", "'bird' is not a known class"),
    ((',1,"s1",0.5', ',1,"",0.5'), 2, "sample_id", "only the query tasks exported for Label Studio"),
    (('"cat",2.5,1,"s1"', '"{""choices"": [""cat"", ""dog""]}",2.5,1,"s1"'), 2, "label", "expected exactly one choice"),
    (('"cat",2.5,1,"s1"', '"{not json",2.5,1,"s1"'), 2, "label", "expected a choice"),
])
def test_malformed_csv_export_rows_name_line_and_field(tmp_path, replace, row, field, needle):
    text = CSV.replace(*replace, 2).replace('"dog",2.5,2', '"cat",2.5,2')  # b agreed: one problem left
    error = raises(write(tmp_path, "export.csv", text))
    assert (error.row, error.field) == (row, field) and needle in str(error), str(error)
    assert f"row {row}, field {field!r}" in str(error)


def test_csv_export_without_sample_id_or_label_column_says_what_to_do(tmp_path):
    no_sample = "annotation_id,annotator,id,image,label\n1,3,1,x.png,cat\n"
    error = raises(write(tmp_path, "a.csv", no_sample))
    assert (error.row, error.field) == (1, "sample_id") and "label_studio_tasks" in str(error)
    no_label = "annotation_id,annotator,id,sample_id,quality\n1,3,1,s1,cat\n"
    error = raises(write(tmp_path, "b.csv", no_label))
    assert "missing required column(s) ['label']" in str(error)
    assert read(write(tmp_path, "c.csv", no_label), label_studio_from_name="quality")["label"].tolist() == ["cat"]


def test_csv_export_rows_of_unannotated_tasks_are_skipped(tmp_path):
    text = "annotation_id,annotator,id,sample_id,label\n,,7,s3,\n1,3,1,s1,cat\n"
    assert read(write(tmp_path, "e.csv", text))[["id", "row"]].values.tolist() == [["s1", 3]]


@pytest.mark.parametrize("content, needle", [
    ({"images": [], "categories": [], "annotations": []}, "this is a COCO export"),
    ({"data": {}}, "expected a list of tasks (a Label Studio 'JSON' or 'JSON-MIN' export)"),
    ([{"data": {"sample_id": "s1"}, "predictions": []}], "export 'JSON', 'JSON-MIN' or 'CSV'"),
])
def test_other_export_shapes_are_refused_with_a_hint(tmp_path, content, needle):
    assert needle in str(raises(write(tmp_path, "e.json", content)))


def test_split_disagreements_holds_back_every_task_of_a_disputed_sample():
    def task(sample, *labels):
        return {"id": f"{sample}{len(labels)}", "data": {"sample_id": sample}, "annotations": [
            {"completed_by": {"id": i, "email": f"u{i}@x.org"}, "result": [
                {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [lab]}}]}
            for i, lab in enumerate(labels)]}

    tasks = [task("s1", "cat", "cat"), task("s2", "cat", "dog"), task("s3", "dog"), task("s2", "cat"), {"bad": 1}]
    kept, disagreements = label_studio.split_disagreements(tasks)
    assert kept == [tasks[0], tasks[2], tasks[4]]  # a malformed task stays for the import to report
    assert [d.sample_id for d in disagreements] == ["s2"]
    message = disagreements[0].message(None, outcome="held back", then="pull again")
    assert message.startswith("annotators disagree on sample 's2': u0@x.org says 'cat' (Label Studio task s22), "
                              "u1@x.org says 'dog' (Label Studio task s22), u0@x.org says 'cat' (Label Studio task s21)")
    assert "held back" in message and message.endswith("and pull again")
    with pytest.raises(label_studio.ExportProblem, match="got 'JSON-MIN'"):
        label_studio.split_disagreements(JSON_MIN)
