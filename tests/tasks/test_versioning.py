"""tasks.versioning against real git and real DVC in temporary repositories.

DVC calls cost ~0.5 s each, so one two-round history is built per module and copied for the
tests that change it.
"""

import shutil
import subprocess
import threading

import pytest

from tasks import versioning as v
from tasks.versioning import VersioningError

LABELS_0 = "id,label,round,source,annotator,labelled_at\na1,cat,0,oracle,,2024-01-01\n"
LABELS_1 = LABELS_0 + "b2,dog,1,human,ann,2024-01-02\nc3,cat,1,human,ann,2024-01-02\n"


@pytest.fixture(autouse=True)
def _no_analytics(monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def _git(repo, *args):
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def _write(repo, rel, text):
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _n_commits(repo):
    return int(_git(repo, "rev-list", "--count", "HEAD"))


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A workspace with rounds 0 and 1 snapshotted; returns (path, {round: Snapshot})."""
    repo = tmp_path_factory.mktemp("history") / "ws"
    repo.mkdir()
    _write(repo, "params.yaml", "query_size: 2\n")
    v.init_workspace_repo(repo, initial_files=["params.yaml"])
    _write(repo, "data/labels.csv", LABELS_0)
    snaps = {0: v.snapshot(repo, 0)}
    _write(repo, "data/labels.csv", LABELS_1)
    _write(repo, "data/queries/round-0.csv", "id,rank\nb2,0\nc3,1\n")
    snaps[1] = v.snapshot(repo, 1, message="2 new labels")
    return repo, snaps


@pytest.fixture
def workspace(history, tmp_path):
    """A private copy of the two-round history."""
    dst = tmp_path / "ws"
    shutil.copytree(history[0], dst, symlinks=True)
    return dst


def test_each_round_reads_back_exactly_what_it_snapshotted(history):
    repo, snaps = history
    assert v.read_at(repo, "data/labels.csv", "round-0") == LABELS_0
    assert v.read_at(repo, "data/labels.csv", "round-1") == LABELS_1
    assert v.read_at(repo, "data/labels.csv", snaps[0].commit) == LABELS_0
    # git-tracked files read through the same call
    assert v.read_at(repo, "data/queries/round-0.csv", "round-1").startswith("id,rank")
    with pytest.raises(FileNotFoundError):
        v.read_at(repo, "data/queries/round-0.csv", "round-0")
    with pytest.raises(VersioningError, match="round-9"):
        v.read_at(repo, "data/labels.csv", "round-9")


def test_snapshots_are_tagged_commits_and_leave_a_clean_workspace(history):
    repo, snaps = history
    assert [s.created for s in snaps.values()] == [True, True]
    assert v.list_round_tags(repo) == [0, 1]
    assert v.latest_round(repo) == 1
    assert snaps[1].commit == v.head_commit(repo) != snaps[0].commit
    assert _git(repo, "rev-parse", "round-1^{commit}") == snaps[1].commit
    assert _git(repo, "cat-file", "-t", "round-1") == "tag"  # annotated
    assert "3 labels" in _git(repo, "tag", "-n1", "round-1")
    assert _git(repo, "log", "-1", "--format=%s") == "round 1: 2 new labels"
    assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert v.dvc_status(repo) == {}
    assert v.is_clean(repo)
    assert "data/labels.csv" not in _git(repo, "ls-files").split()  # DVC-tracked, not git-tracked


def test_rerunning_a_round_with_the_same_labels_changes_nothing(workspace):
    head, n = v.head_commit(workspace), _n_commits(workspace)
    again = v.snapshot(workspace, 1)
    assert again == v.Snapshot(round=1, tag="round-1", commit=head, created=False)
    assert (v.head_commit(workspace), _n_commits(workspace)) == (head, n)


def test_rerunning_a_round_with_other_labels_is_refused(workspace):
    _write(workspace, "data/labels.csv", LABELS_1 + "d4,dog,1,human,ann,2024-01-03\n")
    assert "data/labels.csv.dvc" in v.dvc_status(workspace)
    with pytest.raises(VersioningError, match="round-1 was already snapshotted"):
        v.snapshot(workspace, 1)
    assert v.read_at(workspace, "data/labels.csv", "round-1") == LABELS_1
    # the new labels go into the next round instead
    assert v.snapshot(workspace, 2).created
    assert v.list_round_tags(workspace) == [0, 1, 2]


def test_a_snapshot_interrupted_between_commit_and_tag_is_completed(workspace):
    labels_2 = LABELS_1 + "d4,dog,2,human,ann,2024-01-03\n"
    _write(workspace, "data/labels.csv", labels_2)
    targets = ["data/labels.csv"]
    v.track(workspace, targets)
    paths = v._snapshot_paths(workspace, targets, v.DEFAULT_GIT_PATHS)
    crashed = v._commit_snapshot(workspace, 2, paths, None)  # ... and the process dies
    assert v.list_round_tags(workspace) == [0, 1]

    snap = v.snapshot(workspace, 2)
    assert snap == v.Snapshot(round=2, tag="round-2", commit=crashed, created=True)
    assert v.head_commit(workspace) == crashed
    assert v.read_at(workspace, "data/labels.csv", "round-2") == labels_2


def test_a_round_without_changes_tags_head(workspace):
    head, n = v.head_commit(workspace), _n_commits(workspace)
    snap = v.snapshot(workspace, 2)
    assert snap.created and snap.commit == head and _n_commits(workspace) == n
    assert v.read_at(workspace, "data/labels.csv", "round-2") == LABELS_1


def test_init_is_idempotent(workspace):
    head = v.head_commit(workspace)
    assert v.init_workspace_repo(workspace, initial_files=["params.yaml"]) == head
    assert (workspace / ".gitignore").read_text().count("__pycache__/") == 1


def test_init_completes_an_existing_git_repository(tmp_path):
    _git(tmp_path, "init", "-q")
    _write(tmp_path, ".gitignore", "*.tmp")  # no trailing newline
    _write(tmp_path, "README", "hi\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "mine")
    first = v.head_commit(tmp_path)

    head = v.init_workspace_repo(tmp_path)
    assert head != first and _n_commits(tmp_path) == 2
    assert (tmp_path / ".dvc" / "config").read_text().count("autostage = true") == 1
    assert (tmp_path / ".gitignore").read_text().startswith("*.tmp\n__pycache__/\n")
    assert v.is_clean(tmp_path)


def test_failing_commands_report_command_exit_code_and_stderr(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no enclosing repo
    with pytest.raises(VersioningError) as err:
        v.list_round_tags(tmp_path)  # not a repository
    msg = str(err.value)
    assert "`git tag --list round-*`" in msg
    assert "exit code 128" in msg
    assert "not a git repository" in msg


def test_commit_paths_commits_only_the_given_paths(tmp_path, monkeypatch):
    # a bare CI machine: no git identity anywhere
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    repo = tmp_path / "ws"
    repo.mkdir()
    _git(repo, "init", "-q")
    _write(repo, "metrics/train.json", "{}")
    _write(repo, "unrelated.txt", "x")
    _git(repo, "add", "unrelated.txt")

    sha = v.commit_paths(repo, ["metrics", "missing.txt"], "metrics")
    assert sha == v.head_commit(repo)
    assert _git(repo, "log", "-1", "--format=%an <%ae>") == "al-pipeline <al-pipeline@localhost>"
    assert _git(repo, "show", "--name-only", "--format=", "HEAD") == "metrics/train.json"
    assert not v.is_clean(repo) and v.is_clean(repo, ["metrics"])
    assert v.commit_paths(repo, ["metrics"], "again") is None

    (repo / "metrics" / "train.json").unlink()
    assert v.commit_paths(repo, ["metrics/train.json"], "drop") is not None
    assert _git(repo, "ls-files", "metrics") == ""


def test_workspace_lock_is_exclusive_and_reentrant(tmp_path):
    _git(tmp_path, "init", "-q")
    held, release = threading.Event(), threading.Event()

    def hold():
        with v.workspace_lock(tmp_path):
            held.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    try:
        assert held.wait(10)
        with pytest.raises(VersioningError, match="could not lock"):
            with v.workspace_lock(tmp_path, timeout=0.1):
                pass
    finally:
        release.set()
        other.join()
    with v.workspace_lock(tmp_path, timeout=1), v.workspace_lock(tmp_path, timeout=1):
        pass


def test_dvc_repro_runs_the_pipeline(workspace):
    _write(
        workspace,
        "dvc.yaml",
        "stages:\n  count:\n    cmd: wc -l < data/labels.csv > count.txt\n"
        "    deps: [data/labels.csv]\n    outs: [count.txt]\n",
    )
    v.dvc_repro(workspace)
    assert (workspace / "count.txt").read_text().strip() == "4"  # header + 3 labels
    assert v.dvc_status(workspace) == {}
    assert "count" in v.dvc_repro(workspace, "count", force=True)
