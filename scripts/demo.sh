#!/usr/bin/env bash
# The main job: a real training run interrupted at random steps (SIGKILLs, and SIGTERM
# notices that it answers with a checkpoint and exit 75), resumed each time, and checked
# bit-for-bit against an uninterrupted run. Extra arguments go to the demo
# (examples/preemption_demo.py --help); --dir DIR keeps the runs and report.html there.
#
# It installs only what it uses (bash scripts/setup.sh: torch and spotsafe, not the test
# stack) and leaves nothing behind: its temp dir /tmp/spotsafe-demo-* is removed when it
# ends, fails or is interrupted (Ctrl-C, SIGTERM).
set -euo pipefail
# No cloud metadata server is probed here: the demo's notices are signals only.
export SPOTSAFE_AWS_METADATA_URL=off SPOTSAFE_GCP_METADATA_URL=off SPOTSAFE_AZURE_METADATA_URL=off
cd "$(dirname "$0")/.."
bash scripts/setup.sh base
exec .venv/bin/python examples/preemption_demo.py "$@"
