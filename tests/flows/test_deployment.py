"""Scheduling against a real Prefect server (`prefect server start` on loopback).

The repository's prefect.yaml deploys the round flow on a cron schedule to a process work pool;
`al serve` serves it from a long-running process. Every process started here runs in its own
session and is killed with its children at the end, whatever happened (flow runs that a worker
starts run in sessions of their own, so they are found as descendants and killed too).
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
import psutil
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterDeploymentId,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks import git_repo, oracle

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
    """SIGTERM the process group; SIGKILL what is left after 15 s; then the same for descendants
    that left the group (Prefect starts each flow run in a session of its own)."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for child in descendants:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(descendants, timeout=10)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)


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
                     "--no-ui", "--log-level", "INFO"], env, log, cwd=home)
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
    assert git_repo.list_round_tags(ws.root) == [0]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert {"queries", "round-report"} <= {a.key for a in artifacts}


# --------------------------------------------------------------------------- the scheduler

SCHEDULE_INTERVAL = 10  # seconds: the scheduler's first run is due at most this long after deploying
SCHEDULED_RUN_TIMEOUT = 360


def _deployment_runs(deployment_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))


def _server_errors(server_log: Path) -> str:
    """The error lines of the server's log (the scheduler's failures show only there)."""
    lines = server_log.read_text(errors="replace").splitlines() if server_log.is_file() else []
    return "\n".join(line for line in lines if "Error" in line)[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scheduler_fires_and_a_process_worker_completes_the_scheduled_round(prefect_server, make_workspace,
                                                                            tmp_path):
    """The whole schedule path with no manual trigger: server scheduler → scheduled runs → worker.

    prefect.yaml's deployment with an interval schedule of a few seconds instead of the hourly
    cron, on a fresh workspace. This is what SQLAlchemy 2.1 broke (pyproject pins < 2.1): the
    deployment registered, but the scheduler never created a run.
    """
    ws = make_workspace()
    oracle.initial_labels(ws)  # returned annotations waiting in the inbox: round 0 ingests them
    pool, name = "al-schedule-test-pool", "al-round-every-10s"
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    (entry,) = spec["deployments"]
    entry.update(name=name, parameters={"workspace": str(ws.root), "simulate": False},
                 work_pool={"name": pool, "work_queue_name": "default"},
                 schedules=[{"interval": SCHEDULE_INTERVAL, "active": True}])
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    with get_client(sync_client=True) as client:
        # One flow run at a time: the schedule keeps firing while round 0 trains.
        client.create_work_pool(WorkPoolCreate(name=pool, type="process", concurrency_limit=1))
    proc = subprocess.run([str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--all",
                           "--prefect-file", str(prefect_file)], cwd=REPO_ROOT, env=prefect_server,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deployment = _read_deployment(f"al-round/{name}")
    (schedule,) = deployment.schedules
    assert schedule.schedule.interval.total_seconds() == SCHEDULE_INTERVAL

    server_log = Path(prefect_server["PREFECT_HOME"]) / "server.log"
    # The scheduler, not us, creates the runs: nothing here calls run_deployment or /schedule.
    deadline = time.monotonic() + 90
    while not [r for r in _deployment_runs(deployment.id) if r.auto_scheduled]:
        if time.monotonic() > deadline:
            pytest.fail(f"no scheduled run within 90 s of deploying; server errors:\n{_server_errors(server_log)}")
        time.sleep(1)
    scheduled = sorted((r for r in _deployment_runs(deployment.id) if r.auto_scheduled),
                       key=lambda r: r.expected_start_time)
    assert len(scheduled) >= 2, scheduled
    assert all(r.created_by.type == "SCHEDULE" and r.created_by.id == schedule.id for r in scheduled)
    assert all(r.parameters == {"workspace": str(ws.root), "simulate": False} for r in scheduled)
    gaps = {(b.expected_start_time - a.expected_start_time).total_seconds() for a, b in zip(scheduled, scheduled[1:])}
    assert gaps == {SCHEDULE_INTERVAL}

    log = tmp_path / "worker.log"
    worker_env = {**prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    worker = [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    with _background(worker, worker_env, log) as proc:
        def completed_run():
            runs = [r for r in _deployment_runs(deployment.id) if r.auto_scheduled]
            broken = [r for r in runs if r.state_type in (StateType.FAILED, StateType.CRASHED)]
            if broken:
                pytest.fail(f"scheduled run {broken[0].name} ended {broken[0].state}:\n{_tail(log)}")
            return next((r for r in runs if r.state_type == StateType.COMPLETED), None)

        run = _wait_until(completed_run, SCHEDULED_RUN_TIMEOUT, "a completed scheduled run", proc, log)
        with get_client(sync_client=True) as client:
            client.pause_deployment(deployment.id)  # no further runs while the worker stops

    assert run.auto_scheduled and run.created_by.id == schedule.id
    assert run.work_pool_name == pool
    assert ws.query_paths(0)[0].is_file()
    assert git_repo.list_round_tags(ws.root) == [0]
