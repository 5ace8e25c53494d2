"""Simulated active learning on MNIST: BALD vs random at the same label budget.

The Gal et al. 2017 experiment, scaled to run on a laptop CPU in a few minutes: the Gal CNN,
MC dropout with T samples, B random initial labels, then rounds of train → score a random
subsample of the pool (the BaaL study's advice for large pools) → label the top Q.

    .venv/bin/python examples/mnist_bald_vs_random.py --rounds 10 --seeds 3
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from al_lib.data import load_mnist
from al_lib.loop import simulate
from al_lib.models import build_model
from al_lib.plotting import learning_curve_table, plot_learning_curves


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", default="bald,random", help="comma-separated (default: bald,random)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--initial-labels", type=int, default=20)
    p.add_argument("--query-size", type=int, default=20)
    p.add_argument("--iterations", type=int, default=20, help="MC samples T")
    p.add_argument("--pool-subsample", type=int, default=1000, help="pool samples scored per round")
    p.add_argument("--pool-size", type=int, default=20000, help="MNIST training images used as the pool")
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=50, help="epochs per round (fixed: tiny labelled sets)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--device", default=None, help="cuda, cpu (default: CUDA when present)")
    p.add_argument("--out", type=Path, default=Path("outputs/mnist"))
    return p.parse_args(argv)


def main(argv=None) -> dict[str, pd.DataFrame]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    pool = load_mnist("train", limit=args.pool_size)
    test = load_mnist("test", limit=args.test_size)
    fit_kwargs = dict(max_epochs=args.epochs, val_fraction=0, batch_size=32, lr=1e-3, weight_decay=1e-4)
    curves = {}
    for strategy in args.strategies.split(","):
        frames = []
        for seed in range(args.seeds):
            start = time.perf_counter()
            df = simulate(
                pool,
                lambda: build_model("gal_cnn", (1, 28, 28), 10, seed=seed),
                test_set=test, strategy=strategy, initial_labels=args.initial_labels,
                query_size=args.query_size, rounds=args.rounds, iterations=args.iterations,
                pool_subsample=args.pool_subsample, fit_kwargs=fit_kwargs, seed=seed, device=args.device,
            )
            print(f"{strategy:>10} seed {seed}: final accuracy {df.accuracy.iloc[-1]:.4f} "
                  f"with {df.n_labelled.iloc[-1]} labels ({time.perf_counter() - start:.0f} s)")
            frames.append(df.assign(seed=seed, strategy=strategy))
        curves[strategy] = pd.concat(frames, ignore_index=True)

    args.out.mkdir(parents=True, exist_ok=True)
    pd.concat(curves.values(), ignore_index=True).to_csv(args.out / "learning_curves.csv", index=False)
    png = args.out / "learning_curve.png"
    plot_learning_curves(curves, path=png, title=f"MNIST, mean of {args.seeds} seeds")
    print("\nTest accuracy by number of labels (mean over seeds):")
    print(learning_curve_table(curves))
    print(f"\nlearning curve: {png}\nper-round rows: {args.out / 'learning_curves.csv'}")
    return curves


if __name__ == "__main__":
    main()
