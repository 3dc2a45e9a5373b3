#!/usr/bin/env bash
# The main job: a real training run SIGKILLed at random steps, resumed each time, and
# checked bit-for-bit against an uninterrupted run. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/preemption_demo.py "$@"
