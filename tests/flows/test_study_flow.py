"""`al study` through Prefect: cells as tasks, records as files, resume, report."""

import json
import os
import time

import pytest

from al_lib.study import EXPERIMENTS, read_records
from flows.cli import main
from flows.study import al_study, split_twins, study_cells


def test_an_experiment_runs_as_tasks_resumes_and_reports(prefect_api, tmp_path):
    out = tmp_path / "study"
    first = al_study("pool_size", dataset="digits", quick=True, out=str(out))
    expected = study_cells("pool_size", dataset="digits", quick=True)
    assert first["cells"] == first["ran"] == len(expected) == 4 and first["skipped"] == 0
    files = sorted((out / "cells").glob("*.json"))
    assert [f.stem for f in files] == sorted(c.key() for c in expected)

    # A cell's file: its full config and one row per round, labels growing by the query size,
    # the share of the pool it scored.
    cell = next(c for c in expected if c.condition == "pool=25%")
    record = json.loads((out / "cells" / f"{cell.key()}.json").read_text())
    assert record["config"] == cell.config() and record["key"] == cell.key()
    rows = record["rows"]
    assert [r["n_labelled"] for r in rows] == [20, 30, 40, 50]
    assert rows[0]["n_scored"] == 195  # 25 % of the 780 unlabelled images
    assert all(0 <= r["accuracy"] <= 1 and r["nll"] > 0 and r["minority_f1"] is None for r in rows)

    # Resume: a second run finds every record and runs nothing; a lost record is recomputed alone.
    assert al_study("pool_size", dataset="digits", quick=True, out=str(out))["ran"] == 0
    (out / "cells" / f"{cell.key()}.json").unlink()
    again = al_study("pool_size", dataset="digits", quick=True, out=str(out))
    assert again["ran"] == 1 and [r["key"] for r in again["results"]] == [cell.key()]
    assert [r["ran"] for r in json.loads((out / "runs.json").read_text())] == [4, 0, 1]

    # The report, from the stored cells only (through the CLI): the other experiments are missing.
    report = tmp_path / "report.md"
    assert main(["study", "report", "--out", str(out), "--to", str(report)]) == 0
    text = report.read_text()
    assert "Quick run only" in text and "| finished (UTC) | experiment | cells run |" in text
    assert "4 of 4 cells recorded." in text and "Not run yet (0 of 3 cells)." in text
    assert "Progress: 16 of 98 rounds recorded (4 of 26 distinct runs); 82 rounds left." in text
    assert "| 25 % |" in text and "**Finding.** Scoring" in text
    assert (tmp_path / "report" / "pool_size_speedup.png").stat().st_size > 5000


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_whole_quick_study(prefect_api, tmp_path):
    """`al study all --quick --workers 2`: every experiment, then the report of all of them (about a
    minute of cells on 2 quiet cores; docs/study.md records the time measured). On Dask the runs
    shared by several experiments are still computed once."""
    out = tmp_path / "study"
    start = time.perf_counter()
    result = al_study("all", dataset="digits", quick=True, out=str(out), workers=2)
    seconds = time.perf_counter() - start
    expected = study_cells("all", dataset="digits", quick=True)
    # The baseline's runs are also noise λ=0, converged, Q=10, Δ=0 and (quick) label efficiency's.
    assert result["ran"] + result["reused"] == len(expected) and result["reused"] == 13
    assert {r["config"]["experiment"] for r in read_records(out / "cells")} == set(EXPERIMENTS)
    cell = next(c for c in expected if c.experiment == "imbalance" and c.condition == "delta=3")
    record = json.loads((out / "cells" / f"{cell.key()}.json").read_text())
    assert len(record["minority_classes"]) == 3 and all(0 <= r["minority_f1"] <= 1 for r in record["rows"])
    assert al_study("all", dataset="digits", quick=True, out=str(out))["ran"] == 0

    report = tmp_path / "report.md"
    assert main(["study", "report", "--out", str(out), "--to", str(report)]) == 0
    text = report.read_text()
    for name in ("Baseline", "Noise", "Convergence", "Query size", "Pool size", "Imbalance", "Label efficiency"):
        assert f"## {name}" in text
    assert text.count("**Finding.**") == len(EXPERIMENTS) and "incomplete" not in text
    for png in ("baseline_accuracy", "baseline_nll", "convergence_active_gain", "pool_size_speedup",
                "imbalance_minority_f1", "label_efficiency_accuracy"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 5000
    print(f"quick study: {len(expected)} cells in {seconds:.1f} s")


def test_a_killed_cell_goes_on_from_its_last_round(prefect_api, tmp_path, monkeypatch):
    """A cell killed in round 2 leaves its first two rounds under cells/partial/; the next
    `al study` goes on from there, records the cell whole and removes the partial file."""
    import al_lib.loop as loop
    from al_lib.study import partial_path, run_cell

    out = tmp_path / "study"
    cell = next(c for c in study_cells("pool_size", dataset="digits", quick=True) if c.condition == "pool=25%")
    partial = partial_path(out / "cells", cell)
    acquire, calls = loop.acquire, []

    def killed_in_round_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return acquire(*args, **kwargs)

    monkeypatch.setattr(loop, "acquire", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, checkpoint=partial)
    monkeypatch.setattr(loop, "acquire", acquire)
    assert len(json.loads(partial.read_text())["rows"]) == 2
    assert read_records(out / "cells") == []  # a partial cell is not a record

    result = al_study("pool_size", dataset="digits", quick=True, out=str(out))
    assert result["ran"] == 4 and not partial.exists()
    record = json.loads((out / "cells" / f"{cell.key()}.json").read_text())
    assert record["resumed_rounds"] == 2 and [r["n_labelled"] for r in record["rows"]] == [20, 30, 40, 50]
    assert record["seconds"] >= sum(r["seconds_train"] + r["seconds_eval"] for r in record["rows"])
    others = [json.loads(f.read_text()) for f in (out / "cells").glob("*.json") if f.stem != cell.key()]
    assert [r["resumed_rounds"] for r in others] == [0, 0, 0]

    # A partial file beside its finished record (killed between the two writes) is removed.
    partial.write_text("{}")
    assert al_study("pool_size", dataset="digits", quick=True, out=str(out))["ran"] == 0 and not partial.exists()


def test_a_run_shared_by_experiments_is_computed_once():
    """The full study's 220 cells are 170 distinct runs: the baseline's 15 are also noise λ=0,
    converged, Q=10 and Δ=0 (50 twins), copied after the first is computed."""
    todo = study_cells("all", dataset="mnist", quick=False)
    distinct, twins = split_twins(todo)
    assert (len(todo), len(distinct), len(twins)) == (220, 170, 50)
    assert len({c.run_hash() for c in distinct}) == 170 and {c.run_hash() for c in twins} <= {c.run_hash() for c in distinct}
    assert {c.experiment for c in twins} == {"noise", "convergence", "query_size", "imbalance"}
    assert [c.key() for c in distinct] == [c.key() for c in todo if c in distinct]  # the study's order kept


def test_a_failed_run_leaves_its_twins_and_copies_to_the_rerun(prefect_api, tmp_path, monkeypatch):
    """A failed run is not computed again under a second experiment's name in the same study;
    a failed twin or copy fails alone: every other cell is recorded, the error names the failed
    cells, and a rerun completes exactly those."""
    import flows.study as study

    out = tmp_path / "study"
    picked = [c for c in study_cells("all", dataset="digits", quick=True) if c.strategy == "random"
              and (c.experiment == "baseline" or (c.experiment == "noise" and c.condition != "lambda=0.1"))]
    baseline, twin, noisy = picked  # noise λ=0 is the baseline's run; λ=0.05 a run of its own
    assert twin.run_hash() == baseline.run_hash() != noisy.run_hash()
    monkeypatch.setattr(study, "study_cells", lambda *args, **kwargs: picked)
    run_cell, write_record = study.run_cell, study.write_record

    def run_fails(cell):
        def patched(c, *args, **kwargs):
            if c.key() == cell.key():
                raise RuntimeError(f"{c.key()} ran out of memory")
            return run_cell(c, *args, **kwargs)
        return patched

    def write_fails(cell):
        def patched(folder, record):
            if record["key"] == cell.key():
                raise OSError(f"no space left on device to write {record['key']}")
            return write_record(folder, record)
        return patched

    def failed_keys(**kwargs):
        with pytest.raises(RuntimeError) as error:
            al_study("all", dataset="digits", quick=True, out=str(out), **kwargs)
        return {k for k in (baseline.key(), twin.key(), noisy.key()) if k in str(error.value)}

    # The baseline's run fails: its twin is not computed in its place, the other run is recorded.
    monkeypatch.setattr(study, "run_cell", run_fails(baseline))
    assert failed_keys() == {baseline.key(), twin.key()}
    assert [r["key"] for r in read_records(out / "cells")] == [noisy.key()]

    # The run succeeds, its twin's copy fails to write; then the copy of the recorded run fails.
    monkeypatch.setattr(study, "run_cell", run_cell)
    monkeypatch.setattr(study, "write_record", write_fails(twin))
    assert failed_keys() == {twin.key()}
    assert failed_keys() == {twin.key()}
    monkeypatch.setattr(study, "write_record", write_record)
    result = al_study("all", dataset="digits", quick=True, out=str(out))
    assert (result["ran"], result["reused"], result["skipped"], result["failed"]) == (0, 1, 2, [])
    assert sorted(r["key"] for r in read_records(out / "cells")) == sorted(c.key() for c in picked)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cells_on_dask_give_the_records_of_a_serial_run(prefect_api, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "dask"
    al_study("query_size", dataset="digits", quick=True, out=str(serial))
    result = al_study("query_size", dataset="digits", quick=True, out=str(parallel), workers=2)
    assert result["ran"] == 6
    # The baseline's BALD and Random are Q=10's runs: copied first, before the one cell to compute.
    baseline = al_study("baseline", dataset="digits", quick=True, out=str(parallel), workers=2)
    assert [(r["ran"], bool(r["reused_from"])) for r in baseline["results"]] == [(False, True)] * 2 + [(True, False)]
    for a in sorted((serial / "cells").glob("*.json")):
        rows_a = json.loads(a.read_text())["rows"]
        rows_b = json.loads((parallel / "cells" / a.name).read_text())["rows"]
        assert [(r["n_labelled"], r["accuracy"], r["nll"]) for r in rows_a] == \
            [(r["n_labelled"], r["accuracy"], r["nll"]) for r in rows_b]


@pytest.mark.slow
@pytest.mark.parametrize("out, report", [("studies/mnist", "docs/study.md"),
                                         ("studies/mnist-quick", "studies/mnist-quick/study.md")])
def test_the_committed_report_is_written_from_the_committed_cells(out, report, tmp_path, monkeypatch):
    """docs/study.md is what `al study report` writes from the committed cells and notes: after
    adding cells, rerun it (the figures are checked to exist, their pixels are matplotlib's)."""
    import re
    from pathlib import Path

    from flows.study import write_study_report

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the report names its cells folder as given, relative to the repository
    fresh = write_study_report(out, tmp_path / "study.md").read_text()
    committed = (root / report).read_text()
    assert fresh == committed, f"{report} is out of date: run `al study report --out {out} --to {report}`"
    for png in re.findall(r"\]\(([^)]+\.png)\)", committed):
        assert (root / report).parent.joinpath(png).is_file(), png


def test_a_workspace_is_a_study_source(make_workspace):
    """The workspace's oracle truth is the pool's labels, its held-out split the test set, its
    params' model and training the study's."""
    from al_lib.study import Cell, experiments, run_cell
    from flows.study import load_study_source

    ws = make_workspace(holdout=20)
    source = load_study_source(str(ws.root))
    assert len(source.test) == 20 and len(source.pool) == 130 and source.classes == ["0", "1", "2"]
    assert source.fit_defaults["max_epochs"] == 3  # the workspace's params.yaml training section
    settings = {**experiments(quick=True)["baseline"].settings, "rounds": 1, "pool_limit": None,
                "fit_kwargs": {"max_epochs": 2}}
    record = run_cell(Cell("baseline", "standard", "bald", 0, str(ws.root), True, settings), source, device="cpu")
    assert record["test_size"] == 20 and record["rows"][0]["n_labelled"] == 20


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_al_study_on_local_workers_uses_one_prefect_server(tmp_path):
    """`al study --workers 2` as a user runs it (no PREFECT_API_URL, no `al server`): the workers
    report to the command's temporary server; without that each started its own (3 in all) and
    their task runs and logs never reached the flow's."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no recorded `al server` there
    al = str(Path(sys.executable).parent / "al")
    done = subprocess.run([al, "study", "query_size", "--dataset", "digits", "--quick", "--workers", "2",
                           "--out", str(tmp_path / "study")], env=env, capture_output=True, text=True, timeout=540)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert len(read_records(tmp_path / "study" / "cells")) == 6
    assert output.count("Starting temporary server") == 1, output[-3000:]
