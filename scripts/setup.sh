#!/usr/bin/env bash
# Idempotent setup for a fresh machine: a virtualenv in .venv with a CPU build of torch
# (pinned here, not in the package: the library asks for torch>=2.4) and spotsafe itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() {  # quiet, minus pip's "is ignored" chatter, but failing when pip fails
    .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored" || true; }
    return "${PIPESTATUS[0]}"
}
pip_install torch==2.13.0
pip_install -c scripts/constraints.txt -e ".[test]"
.venv/bin/python -c "import torch, spotsafe; print(f'setup ok: torch {torch.__version__}, spotsafe {spotsafe.__version__}')"
