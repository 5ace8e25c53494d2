"""The one rule for a data file's path inside a root folder (a workspace, a manifest's folder).

A path names a file under the root: relative, written with ``/``, never absolute (POSIX or a
Windows drive), never escaping the root with ``..``. Manifests, query exports and Label Studio
tasks all check paths with :func:`relative_path_problem`.
"""

from __future__ import annotations

import posixpath


def relative_path_problem(value: str) -> str | None:
    """Why ``value`` is not a valid relative path under a root, in words; None when it is."""
    if not value:
        return "empty path"
    if "\\" in value:
        return f"path {value!r} uses '\\'; write relative paths with '/'"
    # String tests, not PurePath objects: a manifest of 1M rows checks 1M paths.
    if value.startswith("/") or (len(value) >= 2 and value[1] == ":" and value[0].isascii() and value[0].isalpha()):
        return f"path {value!r} is absolute; it must be relative to the root"
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../"):
        return f"path {value!r} escapes the root"
    if normal == ".":
        return f"path {value!r} names no file"
    return None


def normalised_relative_path(value: str) -> str:
    """``value`` lexically normalised (``a/./b`` → ``a/b``); ValueError when it breaks the rule."""
    problem = relative_path_problem(value)
    if problem:
        raise ValueError(problem)
    return posixpath.normpath(value)
