#!/usr/bin/env bash
# Runs the micro benchmarks and the HTTP benchmark on every supported CPython that is
# installed (3.11, 3.12, 3.13), ferroloop beside stock asyncio and uvloop in one run per
# version, keeps each version's output (tables and JSON) in bench/results/versions-<date>/,
# and draws the charts of all versions side by side there (bench/charts.py).
#   PYTHONS="3.12 3.13"   only these versions
#   MICRO_ARGS            arguments for bench/micro.py (default: --markdown)
#   HTTP_ARGS             arguments for bench/http.py (default: --seconds 6)
#   OUT                   the output folder (default: bench/results/versions-<date>)
# Each version's venv is set up (or refreshed) with scripts/setup.sh, as scripts/test.sh does.
# A line per finished step goes to stderr: [2/6] python3.11 http done (3m10s elapsed, ~6m left)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pythons.sh
. scripts/pythons.sh
out=${OUT:-bench/results/versions-$(date -u +%Y-%m-%d)}
mkdir -p "$out"
command -v wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }

read -ra minors <<<"${PYTHONS:-3.11 3.12 3.13}"
steps=$((${#minors[@]} * 2)) done_steps=0 chart_py=""
progress() {  # progress WHAT: one line per finished step, with the time left at this pace
    done_steps=$((done_steps + 1))
    local left=$((SECONDS * (steps - done_steps) / done_steps))
    printf '[%d/%d] %s (%dm%02ds elapsed, ~%dm%02ds left)\n' "$done_steps" "$steps" "$1" \
        $((SECONDS / 60)) $((SECONDS % 60)) $((left / 60)) $((left % 60)) >&2
}

for minor in "${minors[@]}"; do
    if ! py=$(find_python "$minor"); then
        echo "skipped: python$minor not installed"
        steps=$((steps - 2))
        continue
    fi
    PYTHON=$py VENV=.venv-$minor bash scripts/setup.sh >/dev/null
    vpy=".venv-$minor/bin/python" chart_py=".venv-$minor/bin/python"
    echo "== python$minor: bench/micro.py ${MICRO_ARGS:---markdown}"
    # shellcheck disable=SC2086
    "$vpy" bench/micro.py ${MICRO_ARGS:---markdown} --output "$out/micro-$minor.json" \
        | tee "$out/micro-$minor.md"
    progress "python$minor micro done"
    echo "== python$minor: bench/http.py ${HTTP_ARGS:---seconds 6}"
    # shellcheck disable=SC2086
    "$vpy" bench/http.py ${HTTP_ARGS:---seconds 6} --output "$out/http-$minor.json" \
        | tee "$out/http-$minor.txt"
    progress "python$minor http done"
done
if [[ -n "$chart_py" ]]; then
    "$chart_py" bench/charts.py "$out"/micro-*.json "$out"/http-*.json --out "$out"
fi
echo "results in $out/"
