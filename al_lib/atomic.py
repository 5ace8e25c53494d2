"""Atomic file writes: a reader sees either the old file or the new one, never a torn mix.

The data goes to a temporary file in the destination's directory (so the final rename stays on one
filesystem), is flushed and fsynced, then ``os.replace``-d over the destination; finally the
directory itself is fsynced so the rename survives a power cut.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path : str or path-like
        Destination file. Its directory must exist. An existing file keeps its permission bits;
        a new one gets the usual ``0o666 & ~umask``.
    data : bytes-like
        The full new content.

    Raises
    ------
    FileNotFoundError
        When the destination directory does not exist.
    TypeError
        When ``data`` is not bytes-like. On any error the destination is left untouched and the
        temporary file is removed.
    """
    path = Path(path)
    data = memoryview(data)  # TypeError for str etc., before any file is created
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never clobber a stranger's file; mode 0o666 lets the umask apply as for open().
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _copy_mode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    logger.debug("atomically wrote %d bytes to %s", data.nbytes, path)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write the string ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    No newline translation happens: ``"\\n"`` is written as is on every platform.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode(encoding))


def _copy_mode(src: Path, dst: Path) -> None:
    """Give ``dst`` the permission bits of ``src`` when ``src`` exists (a rewrite keeps them)."""
    try:
        mode = stat.S_IMODE(os.stat(src).st_mode)
    except FileNotFoundError:
        return
    os.chmod(dst, mode)


def _fsync_dir(directory: Path) -> None:
    """Persist the directory entry of a rename; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; its rename is durable enough
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
