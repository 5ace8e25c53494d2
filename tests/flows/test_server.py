"""`al server`: a real long-lived Prefect server on loopback that later `al` commands use.

Slow (a server start, then a round through it): behind ``-m slow`` selection, run by CI.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flows.server import RECORD_NAME, api_url, is_healthy, use_recorded_server
from test_deployment import _free_port, _start, _stop, _tail, _wait_until

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 180


def _plots_template_tests():
    """tests/tasks/test_plots_template.py: its headless-Chromium driver (``CHROMIUM``, ``_chromium``)."""
    path = Path(__file__).resolve().parents[1] / "tasks" / "test_plots_template.py"
    spec = importlib.util.spec_from_file_location("plots_template_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a server start and a round through it: 1-5 min on 2 loaded cores
@pytest.mark.timeout(900)
def test_al_server_serves_later_al_commands(make_workspace, tmp_path):
    home = tmp_path / "prefect-home"
    port = _free_port()
    url = api_url("127.0.0.1", port)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "server.log"
    al = str(VENV_BIN / "al")
    server = _start([al, "server", "--port", str(port)], env, log, cwd=tmp_path)
    try:
        _wait_until(lambda: "export PREFECT_API_URL=" in _tail(log), START_TIMEOUT, "al server", server, log)
        assert f"export PREFECT_API_URL={url}" in _tail(log)
        assert is_healthy(url)
        # The UI in the browser talks to this server's API, not to the default port.
        assert httpx.get(f"{url.removesuffix('/api')}/ui-settings", timeout=10).json()["api_url"] == url
        record = home / RECORD_NAME
        assert json.loads(record.read_text())["api_url"] == url

        # A plain shell (no PREFECT_API_URL): `al` finds the server and runs the round on it.
        ws = make_workspace()
        proc = subprocess.run([al, "simulate", str(ws.root), "--rounds", "1", "--baseline", "random"], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"using the Prefect server at {url}" in proc.stderr
        assert "random reference, 1 rounds: test accuracy" in proc.stdout
        assert "metrics/learning_curve_vs_random.png" in proc.stdout
        runs = httpx.post(f"{url}/flow_runs/filter", json={}, timeout=10).json()
        assert {"ws round 0"} <= {r["name"] for r in runs}
        assert all(r["state_type"] == "COMPLETED" for r in runs)

        # The round report, as the server's own UI renders it in a browser: tables and the three
        # figures (thumbnails, pool-score histogram, learning curve) inline.
        keys = {a["key"] for a in httpx.post(f"{url}/artifacts/filter", json={}, timeout=10).json()}
        assert {"queries", "query-thumbnails", "round-report", "learning-curve-vs-random"} <= keys
        (report,) = httpx.post(f"{url}/artifacts/filter", json={"artifacts": {"key": {"any_": ["round-report"]}}},
                               timeout=10).json()
        browser = _plots_template_tests()
        if browser.CHROMIUM:
            dom = browser._chromium(f"{url.removesuffix('/api')}/artifacts/artifact/{report['id']}",
                                    tmp_path / "chromium", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                                    "--dump-dom", timeout=180)  # the later rules flag wins: loopback only
            assert "Labels per class" in dom and "Images to label next" in dom
            alts = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="([^"]+)"', dom)
            assert alts == ["queried images", "histogram of pool scores", "learning curve"], alts

        # One server per port: a second is refused with the export line to use the first.
        second = subprocess.run([al, "server", "--port", str(port)], env=env, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 1 and f"already answers at {url}" in second.stderr
    finally:
        _stop(server)
    assert server.returncode == 0, _tail(log)
    assert not record.exists() and not is_healthy(url)  # stopped cleanly: record gone, port free


def test_a_stale_record_or_an_exported_url_is_left_alone(tmp_path, monkeypatch):
    """No server answers at the recorded URL: nothing is set (Prefect's ephemeral server then)."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert use_recorded_server() is None  # no record
    (tmp_path / RECORD_NAME).write_text(json.dumps({"api_url": api_url("127.0.0.1", _free_port()), "pid": 1}))
    assert use_recorded_server() is None and "PREFECT_API_URL" not in os.environ
    (tmp_path / RECORD_NAME).write_text("not json")
    assert use_recorded_server() is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    assert use_recorded_server() is None and os.environ["PREFECT_API_URL"] == "http://127.0.0.1:1/api"
