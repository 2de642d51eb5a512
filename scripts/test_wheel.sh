# shellcheck shell=bash
# Sourced by scripts/faults.sh and scripts/valgrind.sh: install_test_wheel builds ferroloop as a
# wheel in a cargo target folder of its own and installs it into a venv of its own, so a test
# build (a cargo feature, debug info) never overwrites the editable build in python/ferroloop/
# that the other venvs share.
#   install_test_wheel NAME [maturin build options...]
# uses the venv .venv-NAME, the target folder target/NAME and the wheel folder target/wheels-NAME;
# $PY is the interpreter that creates the venv. It sets VPY to the venv's python. Run it from the
# repository's root, and run the tests from a folder without python/ on sys.path (tests/), so the
# installed build is the one imported.

install_test_wheel() {
    local name=$1
    shift
    local venv=".venv-$name" wheels="target/wheels-$name"
    if [[ ! -x "$venv/bin/python" ]]; then
        "$PY" -m venv "$venv"
    fi
    VPY="$venv/bin/python"
    "$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VPY" -m pip install --quiet --disable-pip-version-check pytest pytest-timeout pytest-asyncio maturin
    rm -rf "$wheels"
    CARGO_TARGET_DIR="target/$name" "$VPY" -m maturin build --release --quiet \
        --interpreter "$VPY" --out "$wheels" "$@"
    "$VPY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
        "$wheels"/ferroloop-*.whl
}
