#!/usr/bin/env bash
# Set everything up, then run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Test-only tools (the user setup needs none of them): headless Chromium renders `dvc plots show`
# (tests/tasks/test_plots_template.py, skipped when it cannot be installed).
if ! command -v chromium >/dev/null 2>&1; then
  apt_log=$(mktemp)
  echo "test: installing chromium (apt-get)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >"$apt_log" 2>&1; then
    echo "test: could not install chromium (the plots rendering test will be skipped):"
    tail -5 "$apt_log"
  fi
  rm -f "$apt_log"
fi

# Label Studio 1.23 in its own venv, .venv-labelstudio/ (tests/flows/test_labelstudio_server.py starts a real
# server; skipped when it cannot be installed). ~3 min the first time, under a second afterwards.
if ! bash scripts/install_labelstudio.sh; then
  echo "test: could not install Label Studio (the Label Studio tests will be skipped)"
fi

export DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest -q "$@"
