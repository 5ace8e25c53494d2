"""Atomic writes: full content or the old file, never a torn one; no temp files left behind."""

import os
import stat

import pytest

from al_lib import atomic
from al_lib.atomic import atomic_write_bytes, atomic_write_text


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_text(path, "first\n")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["state.json"]


def test_text_is_utf8_without_newline_translation(tmp_path):
    path = tmp_path / "t.csv"
    atomic_write_text(path, "é,1\n")
    assert path.read_bytes() == "é,1\n".encode()
    atomic_write_text(path, "é", encoding="latin-1")
    assert path.read_bytes() == b"\xe9"


def test_keeps_permissions_of_existing_file(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_new_file_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_bad_data_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")
    with pytest.raises(TypeError):
        atomic_write_text(path, b"not text")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_failed_replace_removes_temp_and_keeps_target(tmp_path):
    target = tmp_path / "dir_in_the_way"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        atomic_write_text(target, "data")
    assert sorted(os.listdir(tmp_path)) == ["dir_in_the_way"]
    assert (target / "keep").read_text() == "x"


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "absent" / "f.txt", "x")


def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    atomic_write_bytes(tmp_path / "f", b"x")
    assert synced == [False, True]  # the file's data first, then the directory entry
