"""al_lib.paths: the one rule for a data file's path under a root."""

import pytest

from al_lib.paths import normalised_relative_path, relative_path_problem


@pytest.mark.parametrize("value,needle", [
    ("", "empty"), ("/etc/passwd", "absolute"), ("C:/x.png", "absolute"), ("a\\b.png", "'\\'"),
    ("//server/share/x.png", "absolute"), ("c:x.png", "absolute"),
    ("../x.png", "escapes"), ("a/../../x.png", "escapes"), ("..", "escapes"), ("./.", "names no file"),
])
def test_bad_paths_are_named_with_the_reason(value, needle):
    assert needle in relative_path_problem(value)
    with pytest.raises(ValueError, match="path"):
        normalised_relative_path(value)


@pytest.mark.parametrize("value,normal", [
    ("x.png", "x.png"), ("a/./b.png", "a/b.png"), ("a/../b.png", "b.png"), ("dir with space/é,1.png",
                                                                           "dir with space/é,1.png"),
])
def test_good_paths_are_normalised(value, normal):
    assert relative_path_problem(value) is None
    assert normalised_relative_path(value) == normal


@pytest.mark.parametrize("value", ["/a", "//h/s/x", "C:/x", "c:x", "Z:", "a/b", "a:b", "1:x", "é:x", ".a", "a/../b"])
def test_string_rule_agrees_with_pathlib(value):
    """The fast string test says "absolute" exactly when pathlib sees a POSIX root or a Windows drive."""
    from pathlib import PurePosixPath, PureWindowsPath

    pathlib_absolute = PurePosixPath(value).is_absolute() or bool(PureWindowsPath(value).drive)
    assert ("absolute" in (relative_path_problem(value) or "")) == pathlib_absolute
