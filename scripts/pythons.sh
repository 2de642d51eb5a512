# shellcheck shell=bash
# Sourced by scripts/wheels.sh and scripts/wheel_smoke.sh: find_python 3.X prints the path of a
# working CPython 3.X, or fails (status 1) when the machine has none.
# Looks for `python3.X` on PATH first, then in pyenv's versions (pyenv's shims are on PATH but a
# shim refuses to run a version that is not selected, hence the check that it really runs). A
# candidate must report the version asked for and be able to create a venv (ensurepip), and the
# path printed is the interpreter's own sys.executable, not a shim.

find_python() {
    local version=$1 candidate root
    local check="import ensurepip, sys, venv; sys.exit(sys.version_info[:2] != tuple(map(int, '$version'.split('.'))))"
    local -a candidates=()
    if candidate=$(command -v "python$version" 2>/dev/null); then
        candidates+=("$candidate")
    fi
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    # Newest patch release first.
    while IFS= read -r candidate; do
        [[ -n "$candidate" ]] && candidates+=("$candidate")
    done < <(compgen -G "$root/versions/$version.*/bin/python$version" | sort -rV)
    for candidate in "${candidates[@]}"; do
        if [[ -x "$candidate" ]] && "$candidate" -c "$check" >/dev/null 2>&1; then
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}
