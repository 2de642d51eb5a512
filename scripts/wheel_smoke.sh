#!/usr/bin/env bash
# Smoke test of the wheels and sdist scripts/wheels.sh left in dist/ (run it first; the
# pytest suite never runs either). For each CPython (3.11, 3.12, 3.13; a version the machine lacks is skipped):
# a fresh venv, `pip install --no-index` of that version's wheel with a PATH holding no cargo or
# rustc (checked), then scripts/wheel_smoke.py in it. Then the sdist: a fresh 3.11 venv, a plain
# `pip install` of the .tar.gz (builds with cargo, and fetches maturin from PyPI as the build
# backend), and the same smoke program. One line per artefact; the log of each failure.
#   VERSIONS     CPython versions to test wheels for (default: "3.11 3.12 3.13")
#   SDIST_PYTHON the version to build and test the sdist with (default: 3.11; empty: skip)
#   KEEP         if set, keep the temporary folder (venvs, logs) for inspection
# Exits 1 if any check fails (or a wheel is missing for an installed version).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pythons.sh
. scripts/pythons.sh
VERSIONS=${VERSIONS:-3.11 3.12 3.13}
SDIST_PYTHON=${SDIST_PYTHON-3.11}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferroloop-wheel-smoke.XXXXXX")
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    if [[ -n ${KEEP:-} ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cp scripts/wheel_smoke.py "$WORK/smoke.py"
failed=0

# report NAME ARTEFACT LOG STATUS: the artefact's one line, and its log if it failed.
report() {
    if [[ $4 == 0 ]]; then
        echo "$1: ok ($2)"
    else
        echo "$1: FAILED ($2)"
        sed 's/^/    /' "$3"
        failed=1
    fi
}

# smoke VENV CMD...: runs CMD in VENV with nothing of this shell's environment but HOME, and a
# PATH of the venv and the system's bin directories only: no cargo, no rustc, no pyenv. From the
# temporary folder, so the checkout's python/ cannot be imported by accident; killed after 5 min.
smoke() {
    local venv=$1
    shift
    (cd "$WORK" && timeout 300 env -i HOME="$HOME" LANG=C.UTF-8 PATH="$venv/bin:/usr/bin:/bin" "$@")
}

# wheel_check PYTHON WHEEL VENV: the steps for one wheel; their output goes to stdout.
wheel_check() {
    local python=$1 wheel=$2 venv=$3
    "$python" -m venv "$venv" || return 1
    if smoke "$venv" bash -c 'command -v cargo || command -v rustc'; then
        echo "cargo or rustc is on the smoke test's PATH: it would not prove the wheel needs none"
        return 1
    fi
    smoke "$venv" python -m pip install --quiet --no-index --disable-pip-version-check \
        "$PWD/$wheel" || return 1
    smoke "$venv" python smoke.py
}

for version in $VERSIONS; do
    if ! python=$(find_python "$version"); then
        echo "skipped: python$version not installed"
        continue
    fi
    tag=cp${version/./}
    wheels=(dist/ferroloop-*-"$tag"-"$tag"-*.whl)
    if [[ ! -f ${wheels[0]} ]]; then
        echo "wheel $version: FAILED (no dist/ferroloop-*-$tag-$tag-*.whl: run scripts/wheels.sh)"
        failed=1
        continue
    fi
    status=0
    wheel_check "$python" "${wheels[0]}" "$WORK/venv-$tag" >"$WORK/$tag.log" 2>&1 || status=$?
    report "wheel $version" "${wheels[0]#dist/}" "$WORK/$tag.log" "$status"
done

if [[ -n $SDIST_PYTHON ]]; then
    sdists=(dist/ferroloop-*.tar.gz)
    if ! python=$(find_python "$SDIST_PYTHON"); then
        echo "skipped: python$SDIST_PYTHON not installed"
    elif [[ ! -f ${sdists[0]} ]]; then
        echo "sdist $SDIST_PYTHON: FAILED (no dist/ferroloop-*.tar.gz: run scripts/wheels.sh)"
        failed=1
    else
        status=0
        venv=$WORK/venv-sdist
        {
            "$python" -m venv "$venv" &&
                # The normal PATH: building from source needs cargo. No pip cache, so that a
                # wheel pip built from an earlier sdist of the same name can never stand in.
                timeout 900 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
                    --no-cache-dir "$PWD/${sdists[0]}" &&
                smoke "$venv" python smoke.py
        } >"$WORK/sdist.log" 2>&1 || status=$?
        report "sdist $SDIST_PYTHON" "${sdists[0]#dist/}" "$WORK/sdist.log" "$status"
    fi
fi
exit "$failed"
