#!/usr/bin/env bash
# The fault-injection tests (tests/test_faults.py): builds ferroloop with the test-only
# `fault-injection` cargo feature as a wheel, installs it into its own venv (.venv-faults,
# never the editable build the other venvs share) and runs the tests there. Release builds
# never carry the feature. Called by scripts/test.sh.
#   PYTHON  the interpreter (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-faults
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VPY" -m pip install --quiet --disable-pip-version-check pytest pytest-timeout pytest-asyncio maturin
rm -rf target/wheels-faults
CARGO_TARGET_DIR=target/faults "$VPY" -m maturin build --release --quiet \
    --features fault-injection --interpreter "$VPY" --out target/wheels-faults
"$VPY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    target/wheels-faults/ferroloop-*.whl
# From a folder without python/ on the path, so the installed test build is imported.
cd tests
"../$VPY" -m pytest -q -p no:cacheprovider --rootdir=. test_faults.py
