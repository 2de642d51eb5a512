#!/usr/bin/env bash
# Runs the micro benchmarks and the HTTP benchmark on every supported CPython that is
# installed (3.11, 3.12, 3.13), ferroloop beside stock asyncio and uvloop in one run per
# version, and keeps each version's output in bench/results/versions-<date>/.
#   PYTHONS="3.12 3.13"   only these versions
#   MICRO_ARGS            arguments for bench/micro.py (default: --markdown)
#   HTTP_ARGS             arguments for bench/http.py (default: --seconds 6)
# Each version's venv is set up (or refreshed) with scripts/setup.sh, as scripts/test.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pythons.sh
. scripts/pythons.sh
out=bench/results/versions-$(date -u +%Y-%m-%d)
mkdir -p "$out"
command -v wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
for minor in ${PYTHONS:-3.11 3.12 3.13}; do
    if ! py=$(find_python "$minor"); then
        echo "skipped: python$minor not installed"
        continue
    fi
    PYTHON=$py VENV=.venv-$minor bash scripts/setup.sh >/dev/null
    echo "== python$minor: bench/micro.py ${MICRO_ARGS:---markdown}"
    # shellcheck disable=SC2086
    ".venv-$minor/bin/python" bench/micro.py ${MICRO_ARGS:---markdown} | tee "$out/micro-$minor.md"
    echo "== python$minor: bench/http.py ${HTTP_ARGS:---seconds 6}"
    # shellcheck disable=SC2086
    ".venv-$minor/bin/python" bench/http.py ${HTTP_ARGS:---seconds 6} | tee "$out/http-$minor.txt"
done
echo "results in $out/"
