#!/usr/bin/env bash
# Creates .venv (if missing), installs the Python packages the demo and tests need,
# and builds ferroloop's extension in release mode into that venv.
# Idempotent: safe to run again; a rebuild is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VPY" -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
VIRTUAL_ENV="$PWD/.venv" "$VPY" -m maturin develop --release --quiet
"$VPY" -c 'import ferroloop, sys; print("ferroloop", ferroloop.__version__, "built for", sys.version.split()[0])'
