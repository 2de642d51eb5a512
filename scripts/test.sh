#!/usr/bin/env bash
# Quick start 2: set everything up, then run the whole test suite:
# lint (Rust and Python), the pytest suite (ferroloop and stock asyncio side by side) and
# CPython's own asyncio test suite run against ferroloop (tests/conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real servers the example tests start on loopback ports of their own (Debian packages).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
    echo "== installing ${missing[*]} (Debian packages) for tests/examples"
    apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
fi
echo "== lint: cargo fmt, clippy, ruff"
cargo fmt --check
cargo clippy --release --quiet -- -D warnings
.venv/bin/ruff check python tests bench examples
echo "== pytest"
.venv/bin/python -m pytest -q tests --ignore=tests/conformance
echo "== CPython asyncio conformance"
.venv/bin/python tests/conformance/run.py
