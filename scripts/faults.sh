#!/usr/bin/env bash
# The fault-injection tests (tests/test_faults.py): builds ferroloop with the test-only
# `fault-injection` cargo feature as a wheel, installs it into its own venv (.venv-faults,
# never the editable build the other venvs share) and runs the tests there. Release builds
# never carry the feature. Called by scripts/test.sh.
#   PYTHON  the interpreter (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# shellcheck source=scripts/test_wheel.sh
. scripts/test_wheel.sh
install_test_wheel faults --features fault-injection
# From a folder without python/ on the path, so the installed test build is imported.
cd tests
"../$VPY" -m pytest -q -p no:cacheprovider --rootdir=. test_faults.py
