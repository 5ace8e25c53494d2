#!/usr/bin/env bash
# Set everything up, then run the main job: simulated active-learning rounds through Prefect on a
# workspace of bundled MNIST digits (outputs/demo-workspace), printing the learning curve and
# where the queries and labelled snapshots are. Extra arguments go to flows/demo.py (--rounds N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m flows.demo "$@"
