"""Stopping criteria in the round: decisions after scoring, in metrics, the report and `al status`;
a scheduled deployment whose round says stop pauses its own schedule (real Prefect API)."""

import json
from datetime import datetime, timezone
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.flow_engine import run_flow
from prefect.states import Scheduled

from flows.round import al_round
from tasks import dvc_repo
from tasks.pipeline import ROUND_STEPS
from tasks.prefect_tasks import round_report
from tasks.stopping import read_stopping, stopping_step
from tasks.workspace import ROUNDS_METRICS, STOP_SET, write_file

pytestmark = pytest.mark.usefixtures("prefect_api")
VENV_BIN = Path(sys.executable).parent

CRITERIA = [
    {"name": "classification_change", "threshold": 0.0},
    {"name": "kappa_average", "threshold": 0.99, "window": 1},
    {"name": "label_budget", "budget": 10},  # round 0 trains on 10 labels: fires
    {"name": "low_uncertainty", "threshold": 0.0},  # BALD >= 0: never below 0
    {"name": "metric_plateau", "metric": "test_accuracy", "patience": 1},
]


def _runs(client, deployment_id):
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))


@pytest.mark.slow
def test_a_scheduled_round_decides_after_scoring_says_why_and_pauses_its_schedule(make_workspace):
    ws = make_workspace(stopping=CRITERIA, stop_set_size=25, stopping_action="pause")
    deployment_id = al_round.to_deployment(name="al-round-stops-itself", interval=3600,
                                           parameters={"workspace": str(ws.root), "simulate": True}).apply()
    with get_client(sync_client=True) as client:
        client._client.post(f"/deployments/{deployment_id}/schedule", json={"min_runs": 3}).raise_for_status()
        scheduled = sorted((r for r in _runs(client, deployment_id) if r.auto_scheduled),
                           key=lambda r: r.expected_start_time)
        assert len(scheduled) >= 3
        # the next scheduled run falls due now (not within the hour); a worker would execute it:
        # here, this process does
        client.set_flow_run_state(scheduled[0].id, Scheduled(scheduled_time=datetime.now(timezone.utc)), force=True)
        due = client.read_flow_run(scheduled[0].id)
        result = run_flow(al_round, flow_run=due, parameters=due.parameters)
        assert result["stopping"]["stop"] and result["paused"] is True

        deployment = client.read_deployment(deployment_id)
        assert deployment.schedules and not any(s.active for s in deployment.schedules)
        assert [r.id for r in _runs(client, deployment_id)] == [due.id]  # the scheduled runs after it are gone
        client._client.post(f"/deployments/{deployment_id}/schedule", json={"min_runs": 3}).raise_for_status()
        assert [r.id for r in _runs(client, deployment_id)] == [due.id]  # and none is created

    record = read_stopping(ws)
    assert record == result["stopping"] and record["round"] == 0 and record["stop"]
    reasons = {d["criterion"]: d["reason"] for d in record["decisions"]}
    assert reasons == {
        "classification_change": "needs stop-set predictions of 2 rounds in a row, has 1",
        "kappa_average": "needs stop-set predictions of 2 rounds in a row, has 1",
        "label_budget": "10 labels ≥ budget 10",
        "low_uncertainty": reasons["low_uncertainty"],
        "metric_plateau": "needs test_accuracy of 2 rounds in a row, has 1"}
    assert reasons["low_uncertainty"].startswith("mean pool uncertainty ") and "≥ 0 (60 scored)" in reasons["low_uncertainty"]
    # the stop set: 25 ids of the pool unlabelled at round 0, with round 0's predicted classes
    table = pd.read_csv(ws.path(STOP_SET), dtype=str, keep_default_na=False)
    assert list(table.columns) == ["id", "round_0"] and len(table) == 25 == table["id"].nunique()
    assert not set(table["id"]) & set(ws.labels()["id"])

    # recorded like every step output: DVC has nothing to rerun, the round's tag holds the decisions
    assert not any(dvc_repo.stage_changes(ws.root, s.name) for s in ROUND_STEPS)
    shown = subprocess.run(["git", "show", "round-0:metrics/stopping.json"], cwd=ws.root, capture_output=True,
                           text=True, check=True).stdout
    assert json.loads(shown) == record
    report = round_report(ws, 0, result["metrics"])
    assert "## Stopping" in report and "- label_budget fired — 10 labels ≥ budget 10" in report

    # the next round's decision with the same model (so the same stop-set predictions): the step alone
    rounds = pd.read_csv(ws.path(ROUNDS_METRICS))
    write_file(ws.path(ROUNDS_METRICS), pd.concat([rounds, rounds.assign(round=1)]).to_csv(index=False))
    for _ in range(2):  # a re-run of round 1 replaces its column
        record = stopping_step(ws, 1)
    table = pd.read_csv(ws.path(STOP_SET), dtype=str, keep_default_na=False)
    assert list(table.columns) == ["id", "round_0", "round_1"] and (table["round_0"] == table["round_1"]).all()
    decisions = {d["criterion"]: d for d in record["decisions"]}
    assert decisions["kappa_average"]["value"] == 1.0
    assert decisions["classification_change"]["reason"] == ("0 of 25 stop-set predictions changed class since "
                                                            "round 0 (0.0% ≤ 0.0%)")
    assert [d["stop"] for d in record["decisions"]] == [True, True, True, False, True]
    status = subprocess.run([str(VENV_BIN / "al"), "status", str(ws.root)], capture_output=True, text=True,
                            check=True).stdout
    assert "  stopping: kappa_average fired — mean kappa 1.000 ≥ 0.99 over the last 1 rounds (round 1)" in status
    assert "  stopping: low_uncertainty not yet: mean pool uncertainty " in status
