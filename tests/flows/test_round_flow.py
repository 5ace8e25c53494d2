"""End to end: real PNG files, real git + DVC, real Great Expectations, a real Prefect API."""

import os
import signal
import subprocess
import sys
import time

import json
from pathlib import Path

import dvc.api
import pandas as pd
import pytest

from flows.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_VALIDATION, main
from flows.round import al_round, al_simulate
from tasks import dvc_repo, git_repo

pytestmark = pytest.mark.usefixtures("prefect_api")


def labels_of(ws):
    return pd.read_csv(ws.path("data/labels.csv"), dtype=str, keep_default_na=False)


def answer(ws, round, path, *, wrong=None):
    """An annotator's CSV answering round ``round``'s queries from the hidden truth."""
    queries = pd.read_csv(ws.query_paths(round)[0], dtype=str)
    truth = ws.oracle_labels().set_index("id")["label"]
    frame = pd.DataFrame({"id": queries["id"], "label": truth.loc[queries["id"]].to_numpy(), "annotator": "ann"})
    if wrong:
        frame.loc[0, wrong[0]] = wrong[1]
    frame.to_csv(path, index=False)
    return path


def test_simulated_rounds_are_validated_versioned_and_exported(make_workspace, dvc_status, git_show):
    ws = make_workspace()
    results = al_simulate(str(ws.root), rounds=2)
    assert [r["round"] for r in results] == [0, 1]
    assert git_repo.list_round_tags(ws.root) == [0, 1]
    # DVC recorded both flow rounds: nothing is out of date, nothing uncommitted.
    assert dvc_status(ws.root) == {}
    assert git_repo.is_clean(ws.root)

    labels = labels_of(ws)
    assert labels["id"].is_unique
    assert len(labels) == 20 + 10 + 5  # held-out test labels, B initial, one round of Q answers
    assert set(labels[labels["round"] == "1"]["id"]) == set(pd.read_csv(ws.query_paths(0)[0], dtype=str)["id"])

    # Exactly what each round trained on, from git + DVC.
    at_round0 = pd.read_csv(pd.io.common.StringIO(dvc.api.read("data/labels.csv", repo=str(ws.root),
                                                                rev="round-0")),
                            dtype=str, keep_default_na=False)
    assert len(at_round0) == 30 and set(at_round0["id"]) < set(labels["id"])

    for n in (0, 1):
        csv, ls_json = ws.query_paths(n)
        queries = pd.read_csv(csv, dtype=str)
        assert list(queries.columns) == ["id", "rank", "score", "predicted_label", "predicted_prob"]
        assert len(queries) == 5 and ls_json.is_file()
        assert not set(queries["id"]) & set(at_round0["id"]) or n == 1
    assert (ws.path("data/inbox/processed/round-0") / "oracle-initial.csv").is_file()
    assert (ws.path("data/inbox/processed/round-1") / "oracle-round-0.csv").is_file()
    rounds = pd.read_csv(ws.path("metrics/rounds.csv"))
    assert rounds["round"].tolist() == [0, 1] and rounds["test_accuracy"].between(0, 1).all()

    # Each tag holds its whole round: the queries it exported and the metrics of its model.
    assert git_show(ws.root, "round-0", "data/queries/round-0.csv") == ws.query_paths(0)[0].read_text()
    assert git_show(ws.root, "round-0", "data/queries/round-1.csv") is None
    diff = subprocess.run([str(Path(sys.executable).parent / "dvc"), "metrics", "diff", "round-0", "round-1",
                           "--json"], cwd=ws.root, capture_output=True, text=True, check=True).stdout
    changes = json.loads(diff)["metrics/train.json"]
    assert changes["n_labelled"] == {"old": 10, "new": 15, "diff": 5}


def test_human_round_trip_with_annotation_files(make_workspace, tmp_path, capsys):
    ws = make_workspace(labels="oracle")
    # Round 0 starts from labels someone imported by hand.
    truth = ws.oracle_labels()
    seed = truth[~truth["id"].isin(labels_of(ws)["id"])].head(12)
    seed.assign(annotator="alice").to_csv(tmp_path / "seed.csv", index=False)
    assert main(["import-labels", str(ws.root), str(tmp_path / "seed.csv")]) == EXIT_OK
    assert main(["round", str(ws.root)]) == EXIT_OK

    reply = answer(ws, 0, tmp_path / "batch-1.csv")
    assert main(["import-labels", str(ws.root), str(reply)]) == EXIT_OK
    assert main(["round", str(ws.root)]) == EXIT_OK
    labels = labels_of(ws)
    new = labels[labels["round"] == "1"]
    assert len(new) == 5 and set(new["source"]) == {"human"} and set(new["annotator"]) == {"ann"}
    assert git_repo.list_round_tags(ws.root) == [0, 1]

    # Nothing new in the inbox: a scheduled run has nothing to do, and says so.
    assert main(["round", str(ws.root)]) == EXIT_OK
    assert "skipped (no new annotations)" in capsys.readouterr().out
    assert ws.round() == 1
    assert main(["status", str(ws.root)]) == EXIT_OK
    assert "round-0, round-1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("unknown-id.csv", "id,label\nno/such.png,1\n", "row 2, field 'id'"),
        ("unknown-class.csv", None, "field 'label'"),
        ("conflict.csv", "CONFLICT", "conflict"),
        ("malformed.csv", "id,label\n\"unterminated,1\n", "malformed.csv"),
        ("malformed.json", "[{\"data\": ", "malformed.json"),
    ],
)
def test_bad_annotation_file_is_refused_and_changes_nothing(make_workspace, name, content, needle, capsys):
    ws = make_workspace()
    al_simulate(str(ws.root), rounds=1)
    inbox = ws.path("data/inbox")
    if content is None:
        answer(ws, 0, inbox / name, wrong=("label", "dog"))
    elif content == "CONFLICT":
        queried = pd.read_csv(ws.query_paths(0)[0], dtype=str)["id"][0]
        (inbox / name).write_text(f"id,label\n{queried},0\n{queried},1\n")
    else:
        (inbox / name).write_text(content)
    before = ws.path("data/labels.csv").read_bytes()
    code = main(["round", str(ws.root)])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert name in err and needle in err
    assert ws.path("data/labels.csv").read_bytes() == before
    assert (inbox / name).is_file()
    assert ws.round() == 0 and git_repo.is_clean(ws.root, ["round.yaml", "data/labels.csv.dvc"])
    assert git_repo.list_round_tags(ws.root) == [0]


def test_validation_failure_stops_the_round_before_training(make_workspace, capsys):
    ws = make_workspace()
    broken = ws.path(ws.manifest()["path"].iloc[3])
    broken.write_bytes(b"not a png")
    assert main(["simulate", str(ws.root), "--rounds", "1"]) == EXIT_VALIDATION
    err = capsys.readouterr().err
    assert "validation failed" in err and "data/pool/manifest.csv" in err
    assert not ws.path("models/model.pt").exists()
    assert git_repo.list_round_tags(ws.root) == []
    assert ws.path("validation/data_docs/index.html").is_file()
    # The failing rows are in a Prefect artifact, for the UI.
    from prefect.artifacts import Artifact

    artifact = Artifact.get("validation-failures")
    assert artifact is not None and ws.manifest()["path"].iloc[3] in artifact.data


def test_killed_round_resumes_without_redoing_or_losing_anything(make_workspace, dvc_status):
    """Kill the process during training; the rerun skips finished steps and keeps every label once."""
    # Training that would run for hours: the kill is sure to land in it.
    ws = make_workspace(training={"max_epochs": 100000, "patience": None, "val_fraction": 0.2, "batch_size": 4})
    env = {**os.environ, "PREFECT_API_URL": ""}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "simulate", str(ws.root), "--rounds", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "validate" not in _recorded_steps(ws):  # recorded in dvc.lock just before training starts
            assert proc.poll() is None, "the round ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not ws.query_paths(0)[0].exists()
    labels_before = ws.path("data/labels.csv").read_bytes()
    assert git_repo.list_round_tags(ws.root) == []

    # Shorter training for the rerun: the params train reads change, validation's do not.
    text = ws.path("params.yaml").read_text().replace("max_epochs: 100000", "max_epochs: 3")
    ws.path("params.yaml").write_text(text)
    result = al_round(str(ws.root), simulate=True)
    assert result["resumed"] and result["round"] == 0
    assert result["steps_run"] == ["train", "score", "query"]
    assert ws.path("data/labels.csv").read_bytes() == labels_before
    assert labels_of(ws)["id"].is_unique
    assert git_repo.list_round_tags(ws.root) == [0]
    assert ws.query_paths(0)[0].is_file()
    assert dvc_status(ws.root) == {}


def _recorded_steps(ws) -> set:
    import yaml

    lock = ws.path("dvc.lock")
    return set((yaml.safe_load(lock.read_text()) or {}).get("stages", {})) if lock.is_file() else set()


def test_a_round_that_failed_after_ingest_is_resumed_never_skipped(make_workspace):
    """Round 1's annotations are ingested, then validation fails: the next run finishes round 1."""
    ws = make_workspace()
    al_simulate(str(ws.root), rounds=1)
    image = ws.path(ws.manifest()["path"].iloc[5])
    good = image.read_bytes()
    image.write_bytes(b"not a png")
    assert main(["simulate", str(ws.root), "--rounds", "1"]) == EXIT_VALIDATION
    assert ws.round() == 1 and git_repo.list_round_tags(ws.root) == [0]
    assert not list(ws.path("data/inbox").glob("*.csv"))  # ingested: the inbox is empty
    ingested = set(labels_of(ws).query("round == '1'")["id"])
    assert len(ingested) == 5

    image.write_bytes(good)
    result = al_round(str(ws.root))  # no simulation, nothing in the inbox: still resumes round 1
    assert result["round"] == 1 and result["resumed"] and not result["skipped"]
    assert result["metrics"]["n_labelled"] == 15
    assert git_repo.list_round_tags(ws.root) == [0, 1]
    trained = pd.read_csv(pd.io.common.StringIO(dvc.api.read("data/labels.csv", repo=str(ws.root), rev="round-1")),
                          dtype=str)
    assert ingested <= set(trained["id"])


def test_every_command_has_help(capsys):
    for command in ("init", "round", "simulate", "status", "import-labels", "stage", "serve"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert "usage: al " + command in capsys.readouterr().out


def test_import_labels_queues_all_files_or_none(make_workspace, tmp_path, capsys):
    ws = make_workspace()
    truth = ws.oracle_labels()
    (tmp_path / "a").mkdir()
    truth.head(3).to_csv(tmp_path / "a" / "batch.csv", index=False)
    truth.tail(3).to_csv(tmp_path / "other.csv", index=False)
    (ws.path("data/inbox")).mkdir(parents=True, exist_ok=True)
    ws.path("data/inbox/batch.csv").write_text("id,label\n")  # already waiting
    code = main(["import-labels", str(ws.root), str(tmp_path / "other.csv"), str(tmp_path / "a" / "batch.csv")])
    assert code == EXIT_BAD_INPUT and "batch.csv" in capsys.readouterr().err
    assert not ws.path("data/inbox/other.csv").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nnope.png,0\n")
    assert main(["import-labels", str(ws.root), str(bad)]) == EXIT_BAD_INPUT
    assert "bad.csv, row 2" in capsys.readouterr().err and not ws.path("data/inbox/bad.csv").exists()
