"""tasks.workspace: the workspace's files read once, validated, and handed over as RoundInputs."""

import os

import pytest

from al_lib.data import ManifestError
from al_lib.labels import AnnotationError, LABEL_COLUMNS
from tasks.workspace import LABELS, MANIFEST, PARAMS_FILE, ROUND_FILE, Workspace

STAMP = "2026-01-02T03:04:05.000006Z"


@pytest.fixture
def ws(tmp_path):
    for rel, text in {
        PARAMS_FILE: "classes: [cat, dog]\n",
        MANIFEST: "id,path,split\na,images/a.png,\nb,images/b.png,test\nc,images/c.png,VAL\nd,images/d.png,\n",
        LABELS: ("id,label,round,source,annotator,labelled_at\n"
                 f"a,cat,0,random,,{STAMP}\nb,dog,0,import,,{STAMP}\n"),
        ROUND_FILE: "round: 2\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return Workspace(tmp_path)


def test_inputs_hold_the_round_validated(ws):
    inputs = ws.inputs()
    assert inputs.params.classes == ["cat", "dog"] and inputs.round == 2
    assert inputs.manifest["id"].tolist() == ["a", "b", "c", "d"]
    assert inputs.held_out == frozenset({"b", "c"})  # split names are case-insensitive
    assert list(inputs.labels.columns) == list(LABEL_COLUMNS)
    assert inputs.train_labels["id"].tolist() == ["a"] and inputs.held_out_labels["id"].tolist() == ["b"]


def test_each_file_is_parsed_once_per_version_and_copies_are_handed_out(ws, monkeypatch):
    import al_lib.labels

    calls = []
    real = al_lib.labels.read_labels
    monkeypatch.setattr(al_lib.labels, "read_labels", lambda path: calls.append(path) or real(path))
    first = ws.labels()
    first.loc[:, "label"] = "changed"  # a step changing its copy changes nobody else's
    assert ws.labels()["label"].tolist() == ["cat", "dog"] and len(calls) == 1
    path = ws.path(LABELS)
    path.write_text(path.read_text() + f"d,cat,1,human,ann,{STAMP}\n")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # a new version even within one clock tick
    assert ws.labels()["id"].tolist() == ["a", "b", "d"] and len(calls) == 2


def test_missing_labels_file_is_an_empty_table(ws):
    ws.path(LABELS).unlink()
    assert ws.labels().empty and list(ws.labels().columns) == list(LABEL_COLUMNS)


def test_bad_manifest_and_labels_name_file_row_and_field(ws):
    ws.path(MANIFEST).write_text("id,path\na,images/a.png\na,images/b.png\n")
    with pytest.raises(ManifestError) as info:
        ws.inputs()
    assert (info.value.row, info.value.field) == (3, "id") and MANIFEST in str(info.value)
    ws.path(MANIFEST).write_text("id,path\na,images/a.png\n")
    ws.path(LABELS).write_text(f"id,label,round,source,annotator,labelled_at\na,cat,x,random,,{STAMP}\n")
    with pytest.raises(AnnotationError) as info:
        ws.inputs()
    assert (info.value.row, info.value.field) == (2, "round")


def test_no_manifest_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="al init"):
        Workspace(tmp_path).manifest()


def test_default_training_is_the_library_protocol_and_its_epoch_length_is_checked(tmp_path):
    from al_lib.training import ACTIVE_LEARNING_TRAINING
    from tasks.workspace import ParamsError, parse_params

    path = tmp_path / PARAMS_FILE
    assert parse_params({"classes": ["cat", "dog"]}, path).training == ACTIVE_LEARNING_TRAINING
    for bad in ("many", -1, 2.5, True):
        with pytest.raises(ParamsError, match=r"params.yaml: field 'training.min_samples_per_epoch' must be an integer"):
            parse_params({"classes": ["cat", "dog"], "training": {"min_samples_per_epoch": bad}}, path)


def test_calibration_without_a_validation_split_is_refused_naming_the_field(tmp_path):
    """Calibration is fitted on fit's validation split: with ``val_fraction: 0`` (the default
    protocol for few labels) there is none, so params.yaml is refused before a round starts."""
    from tasks.workspace import ParamsError, parse_params

    raw = {"classes": ["a", "b"], "calibration": "temperature", "training": {"val_fraction": 0.0}}
    with pytest.raises(ParamsError, match=r"field 'calibration'.*training.val_fraction > 0"):
        parse_params(raw, tmp_path / "params.yaml")
    parse_params({**raw, "training": {"val_fraction": 0.2}}, tmp_path / "params.yaml")
