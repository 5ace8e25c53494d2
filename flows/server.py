"""A long-lived local Prefect server for `al` (``al server``), found again by later `al` commands.

Without ``PREFECT_API_URL`` every `al round` / `al simulate` starts Prefect's ephemeral API server
for itself (30-90 s on a loaded 2-core machine). ``al server`` starts ``prefect server start`` on
loopback once, waits until its API answers, prints the ``PREFECT_API_URL`` to export and records
the URL in ``$PREFECT_HOME/al-server.json``; while that server answers, `al` commands of the same
``PREFECT_HOME`` use it even where the variable is not exported. An exported ``PREFECT_API_URL``
always wins. Only the standard library here: the check runs before any Prefect import.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: The record of the running ``al server``, under ``PREFECT_HOME``.
RECORD_NAME = "al-server.json"
#: How long ``al server`` waits for the API to answer (the first start migrates the database).
START_TIMEOUT = 180.0


def prefect_home() -> Path:
    """``PREFECT_HOME`` as Prefect resolves it by default (``~/.prefect``)."""
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


def api_url(host: str, port: int) -> str:
    """The API URL of a server on ``host:port`` (what ``PREFECT_API_URL`` must hold)."""
    return f"http://{host}:{port}/api"


def is_healthy(url: str, timeout: float = 1.0) -> bool:
    """True when the Prefect API at ``url`` answers its health check within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def recorded_server() -> str | None:
    """The API URL of the ``al server`` recorded under ``PREFECT_HOME`` when it answers, else None."""
    record = prefect_home() / RECORD_NAME
    try:
        url = json.loads(record.read_text())["api_url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if is_healthy(url) else None


def use_recorded_server() -> str | None:
    """Point this process at the recorded ``al server`` (sets ``PREFECT_API_URL``) unless the
    variable is set already. Returns the URL used, or None (Prefect's ephemeral server then)."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    url = recorded_server()
    if url:
        os.environ["PREFECT_API_URL"] = url
    return url


def run_server(host: str = "127.0.0.1", port: int = 4200, *, timeout: float = START_TIMEOUT, out=None) -> int:
    """Start ``prefect server start`` on ``host:port``, wait for its API, record it, and serve until
    the server exits or this process is interrupted (Ctrl-C / SIGTERM), then remove the record.

    Returns the server's exit code (0 after an interrupt).

    Raises
    ------
    RuntimeError
        Another server answers on ``host:port`` already, or the server exits or does not answer
        within ``timeout`` seconds (it is stopped then).
    """
    out = out or sys.stdout
    url = api_url(host, port)
    if is_healthy(url):
        raise RuntimeError(f"a Prefect server already answers at {url}: export PREFECT_API_URL={url}, "
                           "or start this one with another --port")
    # Host and port through the settings too: the UI's API address (PREFECT_UI_API_URL) is built
    # from them, not from the command line, and would point the browser at :4200 otherwise.
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": url}
    env.pop("PREFECT_API_URL", None)  # the server must not talk to another one
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port",
                             str(port)], env=env, start_new_session=True)
    record = prefect_home() / RECORD_NAME
    stop = _Stop()
    previous = signal.signal(signal.SIGTERM, stop.handle)
    try:
        deadline = time.monotonic() + timeout
        while not is_healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server start exited with {proc.returncode} before {url} answered")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not answer at {url} within {timeout:.0f} s")
            time.sleep(0.5)
        record.parent.mkdir(parents=True, exist_ok=True)
        from al_lib.atomic import atomic_write_text

        atomic_write_text(record, json.dumps({"api_url": url, "pid": proc.pid}) + "\n")
        ui = url.removesuffix("/api")
        print(f"Prefect server ready: UI {ui}, API {url} (Ctrl-C stops it)\n"
              f"  in other shells:  export PREFECT_API_URL={url}\n"
              f"  `al` commands with PREFECT_HOME={prefect_home()} use it on their own while it runs",
              file=out, flush=True)
        while proc.poll() is None and not stop.requested:
            time.sleep(0.5)
        return 0 if stop.requested else proc.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _remove_record(record, proc.pid)
        _terminate(proc)


class _Stop:
    """SIGTERM turns into a clean stop of the serving loop."""

    requested = False

    def handle(self, signum, frame) -> None:
        self.requested = True


def _remove_record(record: Path, pid: int) -> None:
    """Remove the record when it still names this server (another may have taken its place)."""
    try:
        if json.loads(record.read_text()).get("pid") == pid:
            record.unlink()
    except (OSError, ValueError):
        pass


def _terminate(proc: subprocess.Popen, wait: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL it when it has not exited after ``wait`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
