#!/usr/bin/env bash
# Quick start 1: set everything up, then run the short side-by-side micro benchmark demo
# (ferroloop vs stock asyncio vs uvloop), printing a table with ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/micro.py --quick "$@"
