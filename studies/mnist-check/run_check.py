"""A label-efficiency check on one seed: a full-scale cell of al_lib.study, with fewer rounds.

Usage, from the repository root::

    .venv/bin/python studies/mnist-check/run_check.py STRATEGY ROUNDS SEED

writes ``studies/mnist-check/label_efficiency.STRATEGY.sSEED.roundsROUNDS.json`` (the cell's
record, as ``al study`` stores it) and prints, per round, n_labelled, test accuracy and the seconds
of training, MC evaluation and scoring. Not a study cell: its round count differs from the
experiment's, so ``al study`` neither reuses nor reports it.
"""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import torch  # noqa: E402

from al_lib.study import cells, experiments, load_source, run_cell  # noqa: E402


def main(strategy: str, rounds: int, seed: int) -> None:
    torch.set_num_threads(1)
    experiment = experiments(seeds=seed + 1)["label_efficiency"]
    cell = next(c for c in cells(experiment, dataset="mnist", quick=False) if (c.strategy, c.seed) == (strategy, seed))
    cell = replace(cell, settings={**cell.settings, "rounds": rounds})
    start = time.time()
    record = run_cell(cell, load_source("mnist"), device="cpu")
    out = HERE / f"label_efficiency.{strategy}.s{seed}.rounds{rounds}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    for row in record["rows"]:
        print(row["n_labelled"], round(row["accuracy"], 4), *(round(row[k], 1) for k in
              ("seconds_train", "seconds_eval", "seconds_score")))
    print(f"{out}: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
