"""tasks.git_repo and tasks.commands against real git in temporary repositories."""

import subprocess

import pytest

from tasks import git_repo
from tasks.commands import VersioningError


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _write(repo, rel, text):
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_failing_commands_report_command_exit_code_and_stderr(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no enclosing repo
    with pytest.raises(VersioningError) as err:
        git_repo.list_round_tags(tmp_path)  # not a repository
    msg = str(err.value)
    assert "`git tag --list round-*`" in msg and "exit code 128" in msg and "not a git repository" in msg


def test_commit_paths_commits_only_the_given_paths(tmp_path, monkeypatch):
    # a bare CI machine: no git identity anywhere
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    repo = tmp_path / "ws"
    git_repo.init_repo(repo)
    _write(repo, "metrics/train.json", "{}")
    _write(repo, "unrelated.txt", "x")
    _git(repo, "add", "unrelated.txt")

    sha = git_repo.commit_paths(repo, ["metrics", "missing.txt"], "metrics")
    assert sha == git_repo.head_commit(repo)
    assert _git(repo, "log", "-1", "--format=%an <%ae>") == "al-pipeline <al-pipeline@localhost>"
    assert _git(repo, "show", "--name-only", "--format=", "HEAD") == "metrics/train.json"
    assert not git_repo.is_clean(repo) and git_repo.is_clean(repo, ["metrics"])
    assert git_repo.commit_paths(repo, ["metrics"], "again") is None

    (repo / "metrics" / "train.json").unlink()
    assert git_repo.commit_paths(repo, ["metrics/train.json"], "drop") is not None
    assert _git(repo, "ls-files", "metrics") == ""


def test_paths_outside_the_workspace_are_refused(tmp_path):
    repo = tmp_path / "ws"
    git_repo.init_repo(repo)
    for outside in ("../x", str(tmp_path / "other")):
        with pytest.raises(VersioningError, match="outside the workspace"):
            git_repo.commit_paths(repo, [outside], "nope")


def test_tags_are_set_moved_and_listed(tmp_path):
    repo = tmp_path / "ws"
    git_repo.init_repo(repo)
    _write(repo, "a.txt", "1")
    first = git_repo.commit_paths(repo, ["a.txt"], "one")
    git_repo.set_tag(repo, "round-0", first, "round 0")
    _write(repo, "a.txt", "2")
    second = git_repo.commit_paths(repo, ["a.txt"], "two")
    assert git_repo.tag_commit(repo, "round-0") == first and git_repo.tag_commit(repo, "round-1") is None
    git_repo.set_tag(repo, "round-0", second, "round 0 again")
    git_repo.set_tag(repo, "round-10", second, "round 10")
    assert git_repo.tag_commit(repo, "round-0") == second
    assert git_repo.list_round_tags(repo) == [0, 10]  # numeric order
    assert git_repo.git(repo, "show", f"round-0~1:a.txt") == "1"


def test_init_is_idempotent(tmp_path):
    repo = tmp_path / "ws"
    assert git_repo.init_repo(repo) is True
    assert git_repo.init_repo(repo) is False
    assert _git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
