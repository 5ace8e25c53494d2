"""Helpers of the reliability suite (tests/reliability): a small real workspace, `al` run as a user runs it, and a
byte-level snapshot of a workspace.

``snapshot(root)`` hashes every file under ``root`` — ``.git`` and ``.dvc`` included — with its
type and permission bits, and every symlink's target, so "the workspace is unchanged" means
byte-identical. Left out are only the documented caches and runtime files, which hold no state a
round depends on (docs/reliability.md):

- ``.al/``: the workspace's own caches (image checks by content; git-ignored, losing them costs time);
- ``.dvc/tmp/``: DVC's runtime files (its lock and rwlock, the state db of file hashes, updater).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

VENV_BIN = Path(sys.executable).parent
#: Paths (relative, POSIX) under a workspace that a snapshot leaves out: documented caches only.
SNAPSHOT_EXCLUDES = (".al", ".dvc/tmp")
#: What a user's shell gives `al`: the venv on PATH, a home, a UTF-8 locale, telemetry off.
#: Nothing of the test process (no PYTHONPATH, no pytest variables, no git hook variables).
CLASSES = ("cat", "dog")
N_PER_CLASS = 12
HOLDOUT = 4


def snapshot(root: str | os.PathLike) -> dict[str, str]:
    """``{relative path: digest}`` of everything under ``root`` (``{}`` when it does not exist).

    Files: type, permission bits and SHA-256 of the bytes; symlinks: their target (never
    followed); folders: their presence. Paths under :data:`SNAPSHOT_EXCLUDES` are skipped.
    """
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return {}
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        keep = []
        for name in sorted(dirnames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in SNAPSHOT_EXCLUDES:
                continue
            full = Path(dirpath) / name
            if full.is_symlink():
                out[rel] = f"link:{os.readlink(full)}"
            else:
                out[rel] = "dir"
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            full = Path(dirpath) / name
            info = full.lstat()
            if stat.S_ISLNK(info.st_mode):
                out[rel] = f"link:{os.readlink(full)}"
            else:
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
                out[rel] = f"file:{stat.S_IMODE(info.st_mode):o}:{digest}"
    return out


def snapshot_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Human-readable differences between two snapshots (empty: identical)."""
    return ([f"added {p}" for p in sorted(after.keys() - before.keys())]
            + [f"removed {p}" for p in sorted(before.keys() - after.keys())]
            + [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]])


def user_env(home: Path) -> dict[str, str]:
    """A plain user environment for `al` (see the module docstring)."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.pathsep.join([str(VENV_BIN), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(home / ".prefect"),
    }


def run_al(args, *, cwd: Path, home: Path, timeout: float = 600, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    """``al ARGS`` in ``cwd`` as a user's shell runs it (plus ``env``); returns the completed process (text)."""
    return subprocess.run([str(VENV_BIN / "al"), *map(str, args)], cwd=cwd, env={**user_env(home), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def write_png(path: Path, seed: int, *, size=(8, 8), mode: str = "L") -> Path:
    """A small random image (deterministic in ``seed``) saved as PNG at ``path``."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def make_image_folder(folder: Path, *, n_per_class: int = N_PER_CLASS) -> Path:
    """``folder/<class>/<class>-<i>.png`` for :data:`CLASSES`: a labelled image folder."""
    for c, name in enumerate(CLASSES):
        for i in range(n_per_class):
            write_png(folder / name / f"{name}-{i:02d}.png", seed=100 * c + i)
    return folder
