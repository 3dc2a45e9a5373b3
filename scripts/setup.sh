#!/usr/bin/env bash
# Idempotent setup for a fresh machine: a virtualenv in .venv with a CPU build of torch
# (pinned here, not in the package: the library asks for torch>=2.4) and spotsafe itself.
#
#   bash scripts/setup.sh          # what the demo uses: torch, spotsafe and its few dependencies
#   bash scripts/setup.sh test     # and the test stack: pytest, obstore, boto3, the SeaweedFS binary, and the
#                                  # frameworks the integrations are tested against (lightning, transformers, accelerate)
#
# A second run with nothing changed returns at once: each stack leaves a stamp in .venv
# naming the hash of this script, scripts/constraints.txt and pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=${1:-base}
case "$STACK" in
    base) EXTRAS="" IMPORTS="torch, spotsafe" ;;
    test) EXTRAS="[test,lightning,hf]" IMPORTS="torch, spotsafe, pytest, obstore, boto3, lightning, transformers, accelerate" ;;
    *) echo "usage: bash scripts/setup.sh [base|test]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
STAMP=".venv/.spotsafe-setup-$STACK"
HASH=$(cat scripts/setup.sh scripts/constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && [ -x .venv/bin/python ] \
        && .venv/bin/python -c "import $IMPORTS" 2>/dev/null && { [ "$STACK" = base ] || { [ -x .venv/bin/weed ] && [ -x .venv-sky/bin/python ]; }; }; then
    exit 0  # this stack is installed and nothing it depends on changed
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() {  # quiet, minus pip's "is ignored" chatter, but failing when pip fails
    .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored" || true; }
    return "${PIPESTATUS[0]}"
}
pip_install torch==2.13.0
pip_install -c scripts/constraints.txt -e ".$EXTRAS"
if [ "$STACK" = test ] && [ ! -x .venv-sky/bin/python ] || { [ "$STACK" = test ] && ! .venv-sky/bin/python -c "import sky" 2>/dev/null; }; then
    # SkyPilot validates the skypilot recipe in the tests; it pins click<8.2, which transformers' huggingface-hub
    # refuses, so it lives in a virtualenv of its own that only that test calls
    "$PY" -m venv .venv-sky
    .venv-sky/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt skypilot 2>&1 | { grep -v "is ignored" || true; }
fi
.venv/bin/python -c "import torch, spotsafe; print(f'setup ok ($STACK): torch {torch.__version__}, spotsafe {spotsafe.__version__}')"
echo "$HASH" > "$STAMP"
