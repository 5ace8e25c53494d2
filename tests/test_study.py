import json

import numpy as np
import pytest
import torch

from al_lib.data import ArrayDataset
from al_lib.study import (
    EXPERIMENTS, Cell, cells, experiments, load_source, read_records, record_path, run_cell,
    source_from_images, write_record,
)


@pytest.fixture(autouse=True)
def one_thread():
    """The cells' own setting (flows/study.py runs quick cells on 1 torch thread): 2 threads on a
    loaded 2-core machine are many times slower for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_experiments_keep_the_seeds_structure():
    full = experiments()
    assert tuple(full) == EXPERIMENTS
    assert full["noise"].conditions == {f"lambda={v}": {"label_noise": v} for v in (0.0, 0.05, 0.1)}
    assert set(full["convergence"].conditions) == {"under-trained", "converged", "over-trained"}
    assert full["label_efficiency"].strategies == ("bald", "batch_bald", "entropy", "variation_ratio", "random")
    assert all(e.seeds == tuple(range(5)) for e in full.values())
    # Every query size reaches exactly the same final budget.
    finals = {q["query_size"] * (q["rounds"] - 1) for q in full["query_size"].conditions.values()}
    assert finals == {300}
    assert experiments(quick=True)["baseline"].seeds == (0,)
    assert experiments(seeds=2)["noise"].seeds == (0, 1)
    with pytest.raises(ValueError, match="seeds"):
        experiments(seeds=0)


@pytest.mark.parametrize("n_labels", [20, 120, 320])
def test_training_regimes_are_under_and_over_trained_at_every_budget(n_labels):
    """The convergence experiment's regimes, trained by al_lib's own fit (a linear model on
    ``n_labels`` points): 1/10 and 3 times the converged model's samples drawn, at every budget."""
    from al_lib.training import fit

    regimes = experiments()["convergence"].conditions
    base = experiments()["baseline"].settings["fit_kwargs"]
    gen = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(n_labels, 4, generator=gen), torch.arange(n_labels) % 2)
    drawn = {}
    for name, overrides in {"converged": {}, **regimes}.items():
        result = fit(torch.nn.Linear(4, 2), data, **{**base, **overrides.get("fit_kwargs", {})}, progress=False)
        drawn[name] = result.epochs_run * result.samples_per_epoch
    assert drawn["under-trained"] * 10 == drawn["converged"] and drawn["over-trained"] == 3 * drawn["converged"]


def test_cell_keys_are_stable_distinct_and_follow_the_config():
    grid = [c for e in experiments().values() for c in cells(e, dataset="mnist", quick=False)]
    keys = [c.key() for c in grid]
    assert len(set(keys)) == len(keys)
    again = [c.key() for e in experiments().values() for c in cells(e, dataset="mnist", quick=False)]
    assert keys == again
    cell = grid[0]
    assert cell.key().startswith("baseline.standard.bald.s0.")
    changed = Cell(cell.experiment, cell.condition, cell.strategy, cell.seed, cell.dataset, cell.quick,
                   {**cell.settings, "iterations": 3})
    assert changed.key() != cell.key() and changed.key().rsplit(".", 1)[0] == cell.key().rsplit(".", 1)[0]
    # The same run under two experiments' names has the same run hash (computed once).
    twin = next(c for c in grid if c.experiment == "noise" and c.condition == "lambda=0.0" and c.strategy == "bald"
                and c.seed == 0)
    assert twin.run_hash() == cell.run_hash() and twin.key() != cell.key()
    assert len({c.run_hash() for c in grid}) < len(grid)
    # Seeds outermost: the first cells cover every condition and strategy.
    noise = cells(experiments()["noise"], dataset="mnist", quick=False)
    assert {(c.condition, c.strategy) for c in noise[:9]} == {(c.condition, c.strategy) for c in noise}


def _tiny(experiment="imbalance", condition="delta=3", strategy="bald", **settings):
    e = experiments(quick=True)[experiment]
    base = {**e.settings, **e.conditions[condition], "rounds": 2, "pool_limit": 400, "test_limit": 100,
            "fit_kwargs": {"max_epochs": 3, "val_fraction": 0.0, "batch_size": 64}, **settings}
    return Cell(experiment, condition, strategy, 0, "digits", True, base)


def test_run_cell_records_rounds_and_the_reduced_classes_f1(tmp_path):
    cell = _tiny()
    record = run_cell(cell, device="cpu")
    assert record["key"] == cell.key() and record["config"] == cell.config()
    assert len(record["minority_classes"]) == 3
    assert [r["n_labelled"] for r in record["rows"]] == [20, 30]
    assert all(0 <= r["minority_f1"] <= 1 for r in record["rows"])
    assert record["rows"][0]["n_scored"] == 150 and record["rows"][-1]["seconds_score"] < record["seconds"]
    # The imbalanced pool keeps 25 % of three classes (digits: ~40 a class in 400).
    assert record["pool_size"] < 400
    path = write_record(tmp_path, record)
    assert path == record_path(tmp_path, cell)
    assert read_records(tmp_path) == [json.loads(path.read_text())]
    again = run_cell(cell, device="cpu")
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in record["rows"]]  # seeded


def test_pool_fraction_scores_that_share_of_the_pool():
    record = run_cell(_tiny("pool_size", "pool=25%"), device="cpu")
    assert record["rows"][0]["n_scored"] == int(np.ceil(0.25 * (400 - 20)))
    assert record["rows"][0]["minority_f1"] is None


def test_bad_sources_and_records_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        load_source(str(tmp_path / "no-such-folder"))
    (tmp_path / "broken.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="broken.json"):
        read_records(tmp_path)


def test_source_from_images_uses_the_held_out_split():
    x = torch.rand(12, 1, 8, 8)
    targets = np.array([0, 1] * 5 + [-1, 0])
    held_out = [False] * 8 + [True, True, False, True]
    source = source_from_images("mine", ArrayDataset(x, np.zeros(12)), targets, ["a", "b"], held_out,
                                lambda seed: torch.nn.Linear(64, 2))
    assert len(source.pool) == 8 and len(source.test) == 3  # the unlabelled image is left out
    assert source.test.targets.tolist() == [0, 1, 0]
    assert torch.equal(source.test.x[2], x[11])
    without = source_from_images("mine", ArrayDataset(x), targets, ["a", "b"], None, lambda seed: None)
    assert len(without.pool) + len(without.test) == 11 and len(without.test) == 3


def test_a_calibration_setting_reaches_simulate():
    record = run_cell(_tiny("baseline", "standard", calibration="temperature", initial_labels=50,
                            fit_kwargs={"max_epochs": 3, "val_fraction": 0.5, "batch_size": 64}), device="cpu")
    assert record["config"]["settings"]["calibration"] == "temperature"
    assert all(r["temperature"] > 0 and "ece_uncalibrated" in r for r in record["rows"])


def test_progress_counts_each_shared_run_once_and_the_rounds_kept_part_way(tmp_path):
    from al_lib.study import partial_path, progress

    todo = [c for name in ("baseline", "noise") for c in cells(experiments(quick=True)[name], dataset="digits",
                                                                quick=True)]
    assert len(todo) == 12  # 3 baseline cells, 9 noise cells of which λ = 0 are the baseline's runs
    first = progress(tmp_path, todo)
    assert (first.runs, first.rounds, first.rounds_left) == (9, 36, 36)
    baseline_bald = next(c for c in todo if c.experiment == "baseline" and c.strategy == "bald")
    record_path(tmp_path, baseline_bald).write_text("{}")  # only its name (the run hash) is read
    noisy = [c for c in todo if c.condition == "lambda=0.05"]
    partial_path(tmp_path, noisy[0]).parent.mkdir()
    partial_path(tmp_path, noisy[0]).write_text(json.dumps({"rows": [{}, {}]}))
    partial_path(tmp_path, noisy[1]).write_text("{truncated")  # unreadable: no round counted
    now = progress(tmp_path, todo)
    assert (now.runs_recorded, now.rounds_recorded, now.runs_partial, now.rounds_partial, now.rounds_left) == \
        (1, 4, 1, 2, 30)
    assert now.describe() == ("4 of 36 rounds recorded (1 of 9 distinct runs), 2 more in 1 run stopped part-way "
                              "(kept in `partial/`); 30 rounds left.")
    assert now.describe(partial=False) == "4 of 36 rounds recorded (1 of 9 distinct runs); 32 rounds left."
    for c in todo:
        record_path(tmp_path, c).write_text("{}")
    assert progress(tmp_path, todo).describe() == "All 36 rounds of the 9 distinct runs recorded."
