#!/usr/bin/env bash
# Quick start 2: set everything up, then run the whole test suite:
# Rust lint, the pytest suite (ferroloop and stock asyncio side by side) and
# CPython's own asyncio test suite run against ferroloop (tests/conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== cargo fmt / clippy"
cargo fmt --check
cargo clippy --release --quiet -- -D warnings
echo "== pytest"
.venv/bin/python -m pytest -q tests --ignore=tests/conformance
echo "== CPython asyncio conformance"
.venv/bin/python tests/conformance/run.py
