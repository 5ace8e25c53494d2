#!/usr/bin/env bash
# Set everything up, then run the main job: simulated active learning on the bundled MNIST,
# BALD vs random, printing the learning curve and writing outputs/mnist/learning_curve.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/mnist_bald_vs_random.py "$@"
