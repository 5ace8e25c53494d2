"""tasks.rounds and tasks.dvc_repo against real git + DVC: round state, records, the step record."""

import shutil
import subprocess
import sys
from pathlib import Path

import dvc.api
import pytest
from dvc.exceptions import PathMissingError

from tasks import dvc_repo, git_repo
from tasks.commands import VersioningError
from tasks.create import init_workspace_repo
from tasks.rounds import record_round, round_state, start_round
from tasks.workspace import Workspace

LABELS_0 = "id,label,round,source,annotator,labelled_at\na1,cat,0,oracle,,2024-01-01T00:00:00Z\n"
LABELS_1 = LABELS_0 + "b2,dog,1,human,ann,2024-01-02T00:00:00Z\nc3,cat,1,human,ann,2024-01-02T00:00:00Z\n"
DVC_YAML = ("stages:\n  count:\n    cmd: wc -l < data/labels.csv > count.txt\n"
            "    deps: [data/labels.csv]\n    params: [query_size]\n    outs: [count.txt]\n")


def _write(repo, rel, text):
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A workspace with rounds 0 and 1 recorded; returns its path."""
    repo = tmp_path_factory.mktemp("history") / "ws"
    repo.mkdir()
    _write(repo, "params.yaml", "query_size: 2\n")
    init_workspace_repo(repo, initial_files=["params.yaml"])
    ws = Workspace(repo)
    _write(repo, "data/labels.csv", LABELS_0)
    assert round_state(ws).next_round == 0 and not round_state(ws).finished
    record_round(ws, 0, "first")
    assert round_state(ws).finished and round_state(ws).next_round == 1
    start_round(ws, 1)
    assert not round_state(ws).finished and ws.round() == 1
    _write(repo, "data/labels.csv", LABELS_1)
    _write(repo, "data/queries/round-0.csv", "id,rank\nb2,0\nc3,1\n")
    record_round(ws, 1, "2 new labels")
    return repo


@pytest.fixture
def workspace(history, tmp_path):
    dst = tmp_path / "ws"
    shutil.copytree(history, dst, symlinks=True)
    return dst


def test_each_round_tag_reads_back_exactly_its_labels(history, git_show):
    assert dvc.api.read("data/labels.csv", repo=str(history), rev="round-0") == LABELS_0
    assert dvc.api.read("data/labels.csv", repo=str(history), rev="round-1") == LABELS_1
    assert dvc.api.read("data/queries/round-0.csv", repo=str(history), rev="round-1").startswith("id,rank")
    assert git_show(history, "round-1", "round.yaml").endswith("round: 1\n")
    with pytest.raises(PathMissingError):
        dvc.api.read("data/queries/round-0.csv", repo=str(history), rev="round-0")


def test_recorded_rounds_leave_a_clean_workspace(history, dvc_status):
    assert git_repo.list_round_tags(history) == [0, 1]
    assert git_repo.is_clean(history)
    assert dvc_status(history) == {}


def test_recording_again_without_changes_commits_nothing(workspace):
    head = git_repo.head_commit(workspace)
    assert record_round(Workspace(workspace), 1, "again") == head
    assert git_repo.tag_commit(workspace, "round-1") == head


def test_re_recording_a_changed_round_moves_its_tag(workspace):
    ws = Workspace(workspace)
    old = git_repo.tag_commit(workspace, "round-1")
    _write(workspace, "data/queries/round-1.csv", "id,rank\na1,0\n")
    new = record_round(ws, 1, "re-run query")
    assert new != old and git_repo.tag_commit(workspace, "round-1") == new
    assert old in git_repo.git(workspace, "log", "--format=%H")


def test_a_round_cannot_skip_ahead(workspace):
    with pytest.raises(VersioningError, match="at round 1"):
        start_round(Workspace(workspace), 3)


def test_the_step_record_says_why_a_step_is_out_of_date(workspace):
    _write(workspace, "dvc.yaml", DVC_YAML)
    assert dvc_repo.stage_changes(workspace, "count")  # never run
    subprocess.run(["sh", "-c", "wc -l < data/labels.csv > count.txt"], cwd=workspace, check=True)
    dvc_repo.commit_stage(workspace, "count")
    assert dvc_repo.stage_changes(workspace, "count") == []
    _write(workspace, "params.yaml", "query_size: 3\n")
    reasons = dvc_repo.stage_changes(workspace, "count")
    assert reasons and "query_size" in reasons[0]  # DVC files params under "changed deps"
    _write(workspace, "params.yaml", "query_size: 2\n")
    (workspace / "count.txt").unlink()
    assert any("count.txt" in r for r in dvc_repo.stage_changes(workspace, "count"))
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "repro", "-q"], cwd=workspace, check=True)
    assert (workspace / "count.txt").read_text().strip() == "4"  # header + 3 labels
    assert dvc_repo.stage_changes(workspace, "count") == []
