#!/usr/bin/env bash
# Creates a virtual environment (if missing), installs the Python packages the demo and tests
# need, and builds ferroloop's extension in release mode into it.
#   PYTHON  the interpreter to build for (default: python3)
#   VENV    the virtual environment's folder (default: .venv)
# Idempotent: safe to run again; a rebuild is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VPY" -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
VIRTUAL_ENV="$PWD/$VENV" "$VPY" -m maturin develop --release --quiet
"$VPY" -c 'import ferroloop, sys; print("ferroloop", ferroloop.__version__, "built for", sys.version.split()[0])'
