#!/usr/bin/env bash
# Builds what we publish into dist/: one manylinux wheel per CPython (3.11, 3.12, 3.13; a version
# the machine lacks is reported as skipped) and the sdist, then prints their file names.
#   VERSIONS   CPython versions to build wheels for (default: "3.11 3.12 3.13")
#   MANYLINUX  the platform tag the wheels promise (default: manylinux_2_34, see below)
# Quiet: a step's output is shown only when it fails. Idempotent: dist/ is first emptied of
# ferroloop files, and each interpreter has its own cargo target dir (target/wheels/cpXY), as
# PyO3 recompiles everything when the interpreter changes: a second run recompiles nothing.
# maturin comes from $MATURIN if set, else .venv (scripts/setup.sh) if that has it, else from a venv made here under
# .cache/ (git-ignored).
#
# Tag: linked against this machine's glibc (2.36), Rust's std binds pthread_key_create,
# pthread_key_delete and pthread_setspecific to GLIBC_2.34 (and stat64/fstat64 to GLIBC_2.33), so
# manylinux_2_34 (Debian 12, Ubuntu 22.04, RHEL/Alma 9 and newer) is the lowest tag the auditwheel
# check accepts; an older one needs zig or an old-glibc sysroot. Naming it here, with
# --auditwheel check, makes the build fail if a change ever needs a newer glibc instead of
# silently narrowing the wheel, and never bundles an outside library into it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pythons.sh
. scripts/pythons.sh
VERSIONS=${VERSIONS:-3.11 3.12 3.13}
MANYLINUX=${MANYLINUX:-manylinux_2_34}
LOGS=target/wheels/logs
# The wheels are stripped, so the profile's line tables (kept for profiling dev builds) would
# only cost compile time and target space here.
export CARGO_PROFILE_RELEASE_DEBUG=0
mkdir -p dist "$LOGS"

# run LOG CMD...: CMD's output goes to LOG, shown only if CMD fails.
run() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "wheels.sh: failed: $*" >&2
        exit 1
    fi
}

if [[ -n ${MATURIN:-} ]]; then
    : # the caller's (scripts/test.sh passes the one in its first venv)
elif [[ -x .venv/bin/maturin ]]; then
    MATURIN=.venv/bin/maturin
else
    MATURIN=.cache/wheels-venv/bin/maturin
    if [[ ! -x "$MATURIN" ]]; then
        run "$LOGS/venv.log" python3 -m venv .cache/wheels-venv
        run "$LOGS/venv.log" .cache/wheels-venv/bin/python -m pip install --quiet \
            --disable-pip-version-check "$(grep -E '^maturin' scripts/requirements.txt)"
    fi
fi

rm -f dist/ferroloop-*.whl dist/ferroloop-*.tar.gz
for version in $VERSIONS; do
    if ! python=$(find_python "$version"); then
        echo "skipped: python$version not installed"
        continue
    fi
    tag=cp${version/./}
    run "$LOGS/$tag.log" "$MATURIN" build --release --locked --strip --quiet \
        --interpreter "$python" --compatibility "$MANYLINUX" --auditwheel check \
        --target-dir "target/wheels/$tag" --out dist
done
run "$LOGS/sdist.log" "$MATURIN" sdist --out dist
ls -1 dist/ferroloop-*
