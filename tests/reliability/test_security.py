"""Security guarantees: nothing outside the workspace is read or written, nothing user-supplied is
unpickled (docs/reliability.md).

The workspace-escape cases of `al init` / `al add-images` (symlinks, ``../`` and absolute manifest
paths) are in the bad-input catalogue (test_bad_input.py); here: the static rules over the code,
and the validation of a workspace whose pool was tampered with afterwards.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from reliability_helpers import run_al, snapshot, snapshot_diff, write_png

REPO = Path(__file__).resolve().parents[2]
CODE = sorted(p for d in ("al_lib", "tasks", "flows") for p in (REPO / d).rglob("*.py"))
#: The one place that unpickles: the bundled MNIST file, hash-checked first, with an unpickler that
#: can only build numpy arrays.
UNPICKLING_ALLOWED = {"al_lib/data/sources.py"}


def _calls(name: str):
    """(file, call node) of every call of ``name`` (e.g. ``torch.load``) in the project's code."""
    module, attr = name.rsplit(".", 1)
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in (module, module[:2])):
                yield path.relative_to(REPO).as_posix(), node


def _keyword(node: ast.Call, name: str):
    return next((k.value.value for k in node.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def test_every_torch_load_is_weights_only():
    calls = list(_calls("torch.load"))
    assert calls, "the scan found no torch.load at all: is it looking at the code?"
    bad = [f"{f}:{n.lineno}" for f, n in calls if _keyword(n, "weights_only") is not True]
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_no_numpy_load_allows_pickles():
    bad = [f"{f}:{n.lineno}" for f, n in _calls("np.load") if _keyword(n, "allow_pickle") is not False]
    assert not bad, f"np.load without allow_pickle=False: {bad}"


def test_only_the_hash_checked_bundle_is_unpickled():
    found = set()
    for path in CODE:
        text = path.read_text()
        if any(s in text for s in ("pickle.load", "pickle.Unpickler", "cloudpickle", "dill.load", "joblib.load")):
            found.add(path.relative_to(REPO).as_posix())
    assert found <= UNPICKLING_ALLOWED, f"unpickling outside the hash-checked bundle: {found - UNPICKLING_ALLOWED}"
    source = (REPO / "al_lib/data/sources.py").read_text()
    assert "sha256" in source and "find_class" in source  # checksum first, restricted unpickler behind it


def _tamper(ws: Path, row_path: str) -> None:
    """Point the first pool row of the manifest at ``row_path``."""
    manifest = ws / "data/pool/manifest.csv"
    lines = manifest.read_text().splitlines()
    fields = lines[1].split(",")
    fields[1] = row_path
    lines[1] = ",".join(fields)
    manifest.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("how", ["symlink-to-outside-image", "symlink-to-etc-passwd", "dotdot-path"])
def test_validation_refuses_a_pool_file_outside_the_workspace(how, workspace, tmp_path):
    """A pool tampered with after `al init` (a file swapped for a link out, a ``../`` manifest path)
    fails validation (exit 3) naming the row; the outside file is never read into a round."""
    outside = write_png(tmp_path / "outside" / "private.png", seed=3)
    if how == "dotdot-path":
        _tamper(workspace, "../outside/private.png")
    else:
        target = workspace / "data/pool/manifest.csv"
        first = target.read_text().splitlines()[1].split(",")[1]
        victim = workspace / first
        victim.unlink()
        os.symlink(outside if how == "symlink-to-outside-image" else "/etc/passwd", victim)
    before = snapshot(workspace)
    proc = run_al(["stage", "validate", workspace], cwd=tmp_path, home=tmp_path / "home")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert "manifest.csv row 2" in out and "path" in out, out[-3000:]
    assert "Traceback" not in out
    # the validate stage writes its results and Data Docs (validation/): nothing else changes
    changed = [d for d in snapshot_diff(before, snapshot(workspace)) if not d.split(" ", 1)[1].startswith("validation")]
    assert not changed, changed


TOKEN = "tok-3f9c1e7a-never-printed"


class _EchoAuth(http.server.BaseHTTPRequestHandler):
    """A hostile or broken server: every answer is a 500 whose body and headers echo the token."""

    requests: list[str] = []

    def _answer(self):
        self.requests.append(self.path)
        body = json.dumps({"detail": f"boom, you sent {self.headers.get('Authorization')}"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Echo", str(self.headers.get("Authorization")))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args):  # quiet
        pass


@pytest.mark.skipif(not (REPO / "tasks/labelstudio.py").is_file(), reason="no `al labelstudio` yet")
@pytest.mark.parametrize("token", [TOKEN, "eyJhbGciOi.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"])  # legacy token, JWT
def test_label_studio_token_is_never_printed(token, workspace, tmp_path):
    """`al -v labelstudio pull` against a server that echoes the token in its errors: the command
    fails with a message, and the token appears nowhere in its output (debug logs included)."""
    _EchoAuth.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoAuth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env_extra = {"LABEL_STUDIO_URL": f"http://127.0.0.1:{server.server_address[1]}",
                     "LABEL_STUDIO_API_KEY": token}
        proc = run_al(["-v", "labelstudio", "pull", workspace], cwd=tmp_path, home=tmp_path / "home", env=env_extra)
    finally:
        server.shutdown()
        server.server_close()
    out = proc.stdout + proc.stderr
    assert _EchoAuth.requests, f"the server was never asked: {out[-2000:]}"
    assert proc.returncode != 0, out[-2000:]
    assert "500" in out or "error" in out.lower(), out[-2000:]
    for secret in {token, *token.split(".")} - {""}:
        assert secret not in out, f"the token leaked: {out[-2000:]}"
