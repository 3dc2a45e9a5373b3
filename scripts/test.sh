#!/usr/bin/env bash
# The test suite (unit, integration with real subprocesses and signals, CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# Debian's headless Chromium loads the HTML report in tests/integration/test_report_html.py.
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# Debian's SLURM daemons and munge: tests/integration/test_slurm_real.py starts a one-node cluster in a temp dir.
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge >/dev/null
fi
# The linter first (rules in pyproject.toml): a second or two, and it fails before 9 minutes of tests.
.venv/bin/ruff check src tests examples bench
# The public API's types (files and options in pyproject.toml's [tool.mypy]): a few seconds with its cache.
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
