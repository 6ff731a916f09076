#!/usr/bin/env bash
# Create .venv and install melodyguard with the CPU build of torch. Idempotent.
# GPU users: install the CUDA torch build of your choice into .venv first and set
# MELODYGUARD_TORCH_SPEC to it (e.g. MELODYGUARD_TORCH_SPEC="torch==2.13.0"), then add the
# "gpu" extra (faiss-gpu) with MELODYGUARD_EXTRAS="corpus,dev,gpu".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${MELODYGUARD_TORCH_SPEC:-torch==2.13.0}
EXTRAS=${MELODYGUARD_EXTRAS:-corpus,dev}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e ".[$EXTRAS]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import torch, faiss, melodyguard; print('melodyguard', melodyguard.__version__, 'torch', torch.__version__)"
