"""The seed's systematic study as a Prefect flow: one task per cell, one file per finished cell.

``al study EXPERIMENT --dataset D`` runs every cell (condition × strategy × seed) of the
experiment (al_lib/study.py) that has no record yet under ``OUT/cells/``: the record file *is*
the cell's result, written atomically when the cell ends, so a killed or interrupted study
resumes where it stopped, on another day or another machine (no Prefect cache keys). A cell
that is killed goes on from its last finished round: it saves its state after every round
under ``OUT/cells/partial/`` (removed once its record is written). Cells run
one after another, or in parallel on a Dask task runner (``workers`` > 1 or ``dask_address``).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from al_lib.study import (EXPERIMENTS, Cell, cells, experiments, partial_path, progress, record_path, run_cell,
                          twin_record, write_record)

#: Folder of a study's records under its output folder.
CELLS = "cells"


def default_out(dataset: str, quick: bool) -> Path:
    """``studies/<dataset name>[-quick]``: a quick run never mixes with (or resumes) a full one."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(dataset).name if os.sep in dataset or "/" in dataset else dataset)
    return Path("studies") / f"{name.strip('-.') or 'data'}{'-quick' if quick else ''}"


def study_cells(experiment: str, *, dataset: str, quick: bool, seeds: int | None = None) -> list[Cell]:
    """The cells of ``experiment`` (or of every experiment for ``"all"``), in run order."""
    if experiment != "all" and experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}: choose one of {', '.join(EXPERIMENTS)} or all")
    chosen = experiments(quick=quick, seeds=seeds)
    names = EXPERIMENTS if experiment == "all" else (experiment,)
    return [c for name in names for c in cells(chosen[name], dataset=dataset, quick=quick)]


def load_study_source(dataset: str):
    """The :class:`al_lib.study.StudySource` of ``dataset``: a workspace (its oracle truth, or
    its labels, its held-out split as the test set, its model and training settings), else
    :func:`al_lib.study.load_source` (mnist, digits, an image folder, a manifest)."""
    from al_lib.study import load_source

    path = Path(dataset)
    if path.is_dir() and (path / "params.yaml").is_file():
        return _workspace_source(str(path.resolve()))
    return load_source(dataset)


_WORKSPACE_SOURCES: dict = {}


def _workspace_source(root: str):
    if root in _WORKSPACE_SOURCES:
        return _WORKSPACE_SOURCES[root]
    import numpy as np

    from al_lib.data import ManifestDataset
    from al_lib.study import source_from_images
    from tasks.workspace import MANIFEST, Workspace, model_spec

    ws = Workspace(root)
    params = ws.params()
    spec = model_spec(params, ws.root)
    policy = spec.transforms
    images = ManifestDataset(ws.path(MANIFEST), root=ws.root, mode="L" if policy.channels == 1 else "RGB",
                             transform=policy.eval_transform())
    truth = ws.oracle_labels()
    truth = ws.labels() if truth is None else truth
    index = {c: i for i, c in enumerate(params.classes)}
    known = dict(zip(truth["id"].astype(str), truth["label"].astype(str)))
    targets = np.array([index.get(known.get(i, ""), -1) for i in images.ids], dtype=np.int64)
    held = ws.held_out_ids()
    held_out = [i in held for i in images.ids]
    source = source_from_images(root, images, targets, params.classes, held_out,
                                lambda seed: spec.build(len(params.classes), seed=seed), params.training)
    _WORKSPACE_SOURCES[root] = source
    return source


@task(name="study-cell", cache_policy=NONE, task_run_name="{key}")
def cell_task(key: str, config: dict, out: str, device: str | None = None, threads: int | None = None) -> dict:
    """Run one cell unless its record exists (or the same run's, under another experiment: then
    it is copied); write the record atomically. Returns a summary: key, ran (bool), reused_from
    (the twin's key or None), seconds, and the last round's n_labelled, accuracy and nll."""
    import json

    cell = Cell(config["experiment"], config["condition"], config["strategy"], config["seed"],
                config["dataset"], config["quick"], config["settings"])
    folder = Path(out) / CELLS
    path = record_path(folder, cell)
    if path.is_file():
        record, ran = json.loads(path.read_text()), False
    elif (twin := twin_record(folder, cell)) is not None:  # the same run under another experiment's name
        record, ran = twin, False
        write_record(folder, record)
    else:
        import torch

        before = torch.get_num_threads()
        if threads:  # tiny models on shared cores: 1 thread is many times faster than 2 fighting
            torch.set_num_threads(int(threads))
        partial = partial_path(folder, cell)
        if partial.is_file():
            get_run_logger().info("%s: going on from the rounds saved in %s", key, partial)
        try:
            record, ran = run_cell(cell, load_study_source(cell.dataset), device=device, checkpoint=partial), True
        finally:
            torch.set_num_threads(before)
        write_record(folder, record)
        partial.unlink(missing_ok=True)  # the record holds every round now
    last = record["rows"][-1]
    return {"key": key, "ran": ran, "reused_from": record.get("reused_from"), "seconds": record["seconds"],
            "n_labelled": last["n_labelled"],
            "accuracy": last["accuracy"], "nll": last["nll"], "device": record["device"]}


@flow(name="al-study", log_prints=True)
def al_study(experiment: str, dataset: str = "mnist", quick: bool = False, seeds: int | None = None,
             out: str | None = None, workers: int = 1, dask_address: str | None = None,
             device: str | None = None, threads: int | None = None) -> dict:
    """Run the cells of ``experiment`` (a name of :data:`al_lib.study.EXPERIMENTS` or ``"all"``)
    on ``dataset`` that have no record under ``out/cells`` yet.

    ``quick``: the quick scale (1 seed, tiny budgets). ``seeds``: overrides the number of seeds.
    ``workers`` / ``dask_address``: cells in parallel on Dask (a local cluster of ``workers``
    single-threaded processes, or an existing cluster). ``device``: cuda or cpu (default CUDA when
    present). ``threads``: torch threads per cell (default: 1 when quick or on Dask, else torch's).

    Returns ``{"experiment", "out", "cells", "ran", "reused", "skipped", "failed", "seconds", "results"}``
    (``reused``: cells whose identical run was recorded under another experiment, copied, not rerun).
    """
    log = get_run_logger()
    all_cells = study_cells(experiment, dataset=dataset, quick=quick, seeds=seeds)
    out_dir = Path(out) if out else default_out(dataset, quick)
    folder = out_dir / CELLS
    todo = [c for c in all_cells if not record_path(folder, c).is_file()]
    for c in all_cells:  # a partial file left by a run killed between the record's write and its removal
        if record_path(folder, c).is_file():
            partial_path(folder, c).unlink(missing_ok=True)
    log.info("study %s on %s%s: %d cells, %d already recorded in %s, %d to run. %s", experiment, dataset,
             " (quick)" if quick else "", len(all_cells), len(all_cells) - len(todo), folder, len(todo),
             progress(folder, all_cells).describe())
    parallel = workers > 1 or bool(dask_address)
    threads = threads or (1 if quick or parallel else None)
    # The same run under two experiments (baseline = noise λ=0 = converged = ...) is computed once:
    # copies of runs already recorded first (no time, the tables complete at once), then every
    # distinct run, then its twins copy its record — on Dask too, where a twin started beside its
    # original would find no record yet and compute it again.
    start = time.perf_counter()
    copies = [c for c in todo if twin_record(folder, c) is not None]
    states = [_run_here(log, i, len(todo), c, out_dir, device, threads) for i, c in enumerate(copies, 1)]
    distinct, twins = split_twins([c for c in todo if c not in copies])
    if distinct and parallel:
        states += _run_on_dask(distinct, len(todo), str(out_dir), device, threads, workers, dask_address,
                               done=len(states))
    else:
        states += [_run_here(log, i, len(todo), c, out_dir, device, threads)
                   for i, c in enumerate(distinct, len(states) + 1)]
    lost = {o["key"] for o in states if o["error"] is not None}
    lost_runs = {c.run_hash() for c in distinct if c.key() in lost}
    for i, c in enumerate(twins, len(states) + 1):
        if c.run_hash() in lost_runs:  # its run failed: left to the rerun, not computed here under another name
            log.error("cell %d of %d not run: %s — the same run failed under another experiment", i, len(todo), c.key())
            states.append({"key": c.key(), "summary": None, "error": "the same run failed"})
        else:
            states.append(_run_here(log, i, len(todo), c, out_dir, device, threads))
    seconds = time.perf_counter() - start
    results = [o["summary"] for o in states if o["error"] is None]
    failed = [o["key"] for o in states if o["error"] is not None]
    ran = sum(r["ran"] for r in results)
    reused = sum(bool(r["reused_from"]) for r in results)
    log.info("study %s: %d cells run in %.1f s, %d copied from the same run under another experiment, "
             "%d already recorded, %d failed; records in %s", experiment, ran, seconds, reused,
             len(all_cells) - len(todo), len(failed), folder)
    result = {"experiment": experiment, "out": str(out_dir), "cells": len(all_cells), "ran": ran, "reused": reused,
              "skipped": len(all_cells) - len(todo), "failed": failed, "seconds": seconds, "results": results}
    record_run(out_dir, result, workers=workers, device=device)
    if failed:  # every other cell ran and is recorded: a rerun runs only these
        raise RuntimeError(f"{len(failed)} of {len(todo)} study cells failed (see their task logs): "
                           + ", ".join(failed))
    return result


def split_twins(todo: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """``todo`` split into the first cell of each distinct run (:meth:`Cell.run_hash`) and the
    rest (the same runs under other experiments' names), each in ``todo``'s order."""
    seen: set[str] = set()
    distinct, twins = [], []
    for c in todo:
        (twins if c.run_hash() in seen else distinct).append(c)
        seen.add(c.run_hash())
    return distinct, twins


def _run_here(log, i: int, n: int, c: Cell, out_dir: Path, device, threads) -> dict:
    state = cell_task(c.key(), c.config(), str(out_dir), device, threads, return_state=True)
    return _outcome(log, i, n, c.key(), state)


def _outcome(log, i: int, n: int, key: str, state) -> dict:
    """Log cell ``i`` of ``n`` by its final Prefect state; ``{"key", "summary", "error"}`` (plain data)."""
    if not state.is_completed():
        log.error("cell %d of %d failed: %s — %s", i, n, key, state.message)
        return {"key": key, "summary": None, "error": state.message or state.type.value}
    s = state.result()
    verb = "ran" if s["ran"] else f"same run as {s['reused_from']}" if s.get("reused_from") else "already recorded"
    log.info("cell %d of %d %s: %s — %d labels, accuracy %.4f, NLL %.4f (%.1f s on %s)", i, n, verb, key,
             s["n_labelled"], s["accuracy"], s["nll"], s["seconds"], s["device"])
    return {"key": key, "summary": s, "error": None}


def _run_on_dask(todo: list[Cell], total: int, out: str, device, threads, workers: int, address: str | None,
                 done: int = 0) -> list:
    from flows.dask_runner import dask_task_runner, workers_report_here

    with workers_report_here():
        return study_cells_parallel.with_options(task_runner=dask_task_runner(workers, address))(
            [c.key() for c in todo], [c.config() for c in todo], out, device, threads, total, done)


@flow(name="al-study-parallel")
def study_cells_parallel(keys: list[str], configs: list[dict], out: str, device: str | None,
                         threads: int | None, total: int | None = None, done: int = 0) -> list:
    """The cells on the flow's task runner, each logged as it ends (as cell ``done`` + i of
    ``total``, default the number of cells here); returns their outcomes (``{"key", "summary",
    "error"}``) in the order they ended."""
    from prefect.futures import as_completed

    log = get_run_logger()
    futures = {cell_task.submit(k, c, out, device, threads): k for k, c in zip(keys, configs)}
    states = []
    for i, future in enumerate(as_completed(list(futures)), done + 1):
        future.wait()
        states.append(_outcome(log, i, total or len(futures), futures[future], future.state))
    return states


#: The study folder's log of runs (JSON list): when, what, how many cells, how long, where.
RUNS = "runs.json"
#: Free text the report includes after the runs table (e.g. the estimate of the full study's time).
NOTES = "notes.md"


def record_run(out: str | os.PathLike, result: dict, *, workers: int, device: str | None) -> None:
    """Append this run's timing to ``out/runs.json`` (atomic rewrite)."""
    import json
    import platform
    from datetime import datetime, timezone

    from al_lib.atomic import atomic_write_text

    path = Path(out) / RUNS
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append({"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "experiment": result["experiment"], "cells": result["cells"], "ran": result["ran"],
                 "seconds": round(result["seconds"], 2), "workers": workers, "device": device or "auto",
                 "cpus": os.cpu_count(), "host": platform.node()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(runs, indent=1) + "\n")


def write_study_report(out: str | os.PathLike, to: str | os.PathLike) -> Path:
    """:func:`al_lib.study_report.write_report` of ``out/cells`` into ``to``, with the runs'
    timings of ``out/runs.json`` and the text of ``out/notes.md`` when present."""
    import json

    from al_lib.study_report import write_report

    runs_path = Path(out) / RUNS
    note = None
    if runs_path.is_file():
        runs = [r for r in json.loads(runs_path.read_text()) if r["ran"]]
        if runs:
            note = "\n".join(["Runs that computed cells (wall time of the flow, Prefect included):", "",
                              "| finished (UTC) | experiment | cells run | wall s | workers | device | CPUs |",
                              "|---|---|---|---|---|---|---|"]
                             + [f"| {r['finished_at']} | {r['experiment']} | {r['ran']} of {r['cells']} | "
                                f"{r['seconds']:.1f} | {r['workers']} | {r['device']} | {r['cpus']} |" for r in runs])
    notes = Path(out) / NOTES
    if notes.is_file():  # what the people running the study wrote down (timings, estimates, caveats)
        note = (note + "\n\n" if note else "") + notes.read_text().strip()
    return write_report(Path(out) / CELLS, to, timing_note=note)
