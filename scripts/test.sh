#!/usr/bin/env bash
# The test suite (unit, integration with real subprocesses and signals, CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
