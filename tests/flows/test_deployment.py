"""Scheduling against a real Prefect server (`prefect server start` on loopback).

The repository's prefect.yaml deploys the round flow on a cron schedule to a process work pool;
`al serve` serves it from a long-running process. Every process started here runs in its own
session and is killed with its children at the end, whatever happened.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks import oracle, versioning

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 120
RUN_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], env: dict, log: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """A background process in a session of its own (so its children can be killed with it)."""
    with open(log, "w") as out:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group; SIGKILL what is left after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.is_file() else ""


def _wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}:\n{_tail(log)}")
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout} s:\n{_tail(log)}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on a free loopback port with its own PREFECT_HOME.

    Yields the environment (PREFECT_API_URL set) for subprocesses; in-process clients are
    pointed at it too for the duration.
    """
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    server = _start([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                     "--no-ui"], env, log, cwd=home)
    try:
        _wait_until(lambda: _healthy(api_url), SERVER_START_TIMEOUT, "prefect server start", server, log)
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield {**env, "PREFECT_API_URL": api_url}
    finally:
        _stop(server)


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _background(args: list[str], env: dict, log: Path):
    proc = _start(args, env, log)
    try:
        yield proc
    finally:
        _stop(proc)


def _read_deployment(name: str):
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def test_prefect_yaml_deploys_the_round_flow_on_its_schedule(prefect_server):
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    (entry,) = spec["deployments"]
    pool = entry["work_pool"]["name"]
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    proc = subprocess.run([str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=REPO_ROOT,
                          env=prefect_server, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    deployment = _read_deployment(f"al-round/{entry['name']}")
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == entry["schedules"][0]["cron"] == "0 * * * *"
    assert schedule.active
    assert deployment.work_pool_name == pool
    assert deployment.entrypoint == "flows/round.py:al_round"
    assert deployment.parameters == {"workspace": ".", "simulate": False}
    # No pull section: prefect deploy records the checkout it ran in, where workers run the flow.
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == "process"


def test_served_round_runs_when_triggered_through_the_api(prefect_server, make_workspace, tmp_path):
    ws = make_workspace()
    oracle.initial_labels(ws)  # annotations returned before the scheduled run: round 0 ingests them
    name, cron = "al-round-test", "0 0 1 1 *"
    log = tmp_path / "serve.log"
    serve = [str(VENV_BIN / "al"), "serve", str(ws.root), "--cron", cron, "--name", name]
    with _background(serve, prefect_server, log) as proc:
        deployment = _wait_until(lambda: _read_deployment(f"al-round/{name}"), 120, "al serve", proc, log)
        assert deployment.schedules[0].schedule.cron == cron
        assert deployment.parameters == {"workspace": str(ws.root)}

        flow_run = run_deployment(f"al-round/{name}", timeout=RUN_TIMEOUT, poll_interval=1)
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{_tail(log)}"

    assert ws.query_paths(0)[0].is_file()
    assert versioning.list_round_tags(ws.root) == [0]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert {"queries", "round-report"} <= {a.key for a in artifacts}
