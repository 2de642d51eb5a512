#!/usr/bin/env bash
# Runs unmodified upstream test suites (anyio, uvicorn, httpx, aiohttp, asyncpg; see
# scripts/upstream.py) on stock asyncio and on ferroloop and compares them test by test. Not part
# of scripts/test.sh (about 27 minutes for all suites on 2 cores, past CI's budget). asyncpg's
# runs need Debian's postgresql package (each run starts a throw-away cluster on loopback).
#   bash scripts/upstream.sh [SUITE ...] [--markdown FILE]
#   PYTHON_MINOR=3.12  the CPython to run on (default 3.11)
# Its own venvs: .venv-upstream-3.X (maturin, to build ferroloop's wheel into
# .cache/upstream/wheels) and .venv-upstream-3.X-<suite> (made by upstream.py); never .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pythons.sh
. scripts/pythons.sh
minor=${PYTHON_MINOR:-3.11}
if ! py=$(find_python "$minor"); then
    echo "python$minor not installed" >&2
    exit 1
fi
venv=.venv-upstream-$minor
if [[ ! -x "$venv/bin/python" ]]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 'maturin>=1.9.4,<2'
wheels=.cache/upstream/wheels/$minor
rm -rf "$wheels"
"$venv/bin/maturin" build --release --quiet -i "$venv/bin/python" -o "$wheels"
wheel=$(compgen -G "$wheels/ferroloop-*.whl" | head -1)
exec "$venv/bin/python" scripts/upstream.py --wheel "$wheel" "$@"
