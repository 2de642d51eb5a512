#!/usr/bin/env bash
# Quick start 2: set everything up, then run the whole test suite on every supported CPython
# (3.11, 3.12, 3.13; one that is not installed is reported as skipped): lint once (the stub's
# stubtest on each version's build), then for each version the pytest suite (ferroloop and
# stock asyncio side by side) and that interpreter's own asyncio test suite run against
# ferroloop (tests/conformance).
#   PYTHONS="3.12 3.13"  run only these versions
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pythons.sh
. scripts/pythons.sh
SUPPORTED_PYTHONS="3.11 3.12 3.13"
started=$SECONDS
# Real servers the example tests start on loopback ports of their own (Debian packages).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
    echo "== installing ${missing[*]} (Debian packages) for tests/examples"
    apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
fi

versions=()
for minor in ${PYTHONS:-$SUPPORTED_PYTHONS}; do
    if ! py=$(find_python "$minor"); then
        echo "skipped: python$minor not installed"
        continue
    fi
    echo "== setup: python$minor ($py) in .venv-$minor"
    PYTHON=$py VENV=.venv-$minor bash scripts/setup.sh
    versions+=("$minor")
done
if ((${#versions[@]} == 0)); then
    echo "no supported python found" >&2
    exit 1
fi

echo "== lint: cargo fmt, clippy, ruff, stubtest"
cargo fmt --check
cargo clippy --release --quiet -- -D warnings
".venv-${versions[0]}/bin/ruff" check python tests bench examples scripts
# python/ferroloop/_ferroloop.pyi against each version's build of the native module (a few
# seconds each): the stub must hold for every version.
for minor in "${versions[@]}"; do
    ".venv-$minor/bin/python" -m mypy.stubtest ferroloop._ferroloop \
        --allowlist tests/stubtest-allowlist.txt
done

failed=()
for minor in "${versions[@]}"; do
    echo "== pytest: python$minor"
    ".venv-$minor/bin/python" -m pytest -q tests --ignore=tests/conformance || failed+=("pytest-$minor")
    echo "== CPython $minor asyncio conformance"
    ".venv-$minor/bin/python" tests/conformance/run.py || failed+=("conformance-$minor")
done
echo "== fault injection (a test build of the syscall layer, python${versions[0]})"
PYTHON=$(find_python "${versions[0]}") bash scripts/faults.sh || failed+=(faults)
echo "== wheels (one per CPython found) and sdist: build, install each in a fresh venv with no Rust on PATH, smoke-test"
export MATURIN=".venv-${versions[0]}/bin/maturin"
VERSIONS="${versions[*]}" bash scripts/wheels.sh || failed+=(wheels)
VERSIONS="${versions[*]}" SDIST_PYTHON="${versions[0]}" bash scripts/wheel_smoke.sh || failed+=(wheel-smoke)
# The upstream suites that fit CI's budget (about 8 minutes with their venvs): anyio's,
# httpx's and asyncpg's own tests from their PyPI sdists (asyncpg against a throw-away
# PostgreSQL per run), on stock asyncio and on ferroloop (the wheel just built), compared test
# by test. `scripts/upstream.sh` runs all of them.
echo "== upstream suites (anyio, httpx, asyncpg) on python${versions[0]}: stock asyncio vs ferroloop"
wheel=$(compgen -G "dist/ferroloop-*-cp${versions[0]/./}-*.whl" | head -1)
".venv-${versions[0]}/bin/python" scripts/upstream.py --wheel "$wheel" anyio httpx asyncpg ||
    failed+=(upstream)
echo "== test.sh: versions ${versions[*]} in $((SECONDS - started)) s"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
