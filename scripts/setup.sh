#!/usr/bin/env bash
# Idempotent setup for a fresh machine: a virtualenv in .venv with a CPU build of torch
# (pinned here, not in the package: the library asks for torch>=2.4) and spotsafe itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, spotsafe; print(f'setup ok: torch {torch.__version__}, spotsafe {spotsafe.__version__}')"
