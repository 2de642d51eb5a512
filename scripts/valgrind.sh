#!/usr/bin/env bash
# Memory safety: a representative part of ferroloop's own pytest suite (transports, sock_*,
# timers and handles, subprocesses; the ferroloop side only) under valgrind's memcheck, on a
# release build of ferroloop with full debug info installed from a wheel into its own venv
# (.venv-valgrind, target/valgrind: never the editable build in python/ferroloop/ the other
# venvs share). CPython runs with PYTHONMALLOC=malloc so memcheck sees every allocation;
# scripts/valgrind-python.supp holds CPython's own noise (CPython frames only). Fails on any
# invalid read/write/free or use of an uninitialised value, on a definite leak whose stack is in
# ferroloop, or on a failed test (scripts/valgrind_report.py decides and prints the summary).
# About 7-8 minutes on 2 cores (a first build adds one). Not part of scripts/test.sh.
#   PYTHON  the interpreter (default: python3)
#   LOGS    the folder for memcheck's logs (default: target/valgrind-logs)
#   VALGRIND  the valgrind to run (default: /usr/bin/valgrind, the Debian package)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${LOGS:-target/valgrind-logs}
VALGRIND=${VALGRIND:-/usr/bin/valgrind}
TESTS=(test_net.py test_datagram.py test_transport_states.py test_transport_properties.py
    test_sock.py test_fd_watch.py test_scheduling.py test_context.py test_gc.py test_exceptions.py
    test_process.py)
# Deselected by id, because of memcheck rather than of what they check; pytest's --timeout
# below is raised for every test (everything runs 20-50 times slower).
DESELECT=(
    # valgrind 3.19 does not implement pidfd_open (ENOSYS), so ferroloop falls back to one
    # waitpid thread per child, which these tests assert does not happen
    # (or, for the third, that the loop sees the exit before its waitpid thread reaps it).
    "test_process.py::test_children_watched_through_pidfds"
    "test_process.py::test_loop_closed_while_children_run[pidfd]"
    "test_process.py::test_child_reaped_elsewhere_reports_popen_status"
    # Timing: a child (not under memcheck) that sleeps 0.5 s must still run when the loop
    # closes, which takes longer than that under memcheck.
    "test_process.py::test_loop_closed_while_children_run[thread]"
    # A child forked without exec runs under memcheck too (silently:
    # --child-silent-after-fork) and exits with memcheck's --error-exitcode (99, not the 0
    # asserted): memcheck reports some error in it at exit, which the silent child does not
    # say (not traced; the PyO3 allocation suppressed above is not the only one).
    "test_process.py::test_fork_child_cannot_use_inherited_loop_and_parent_keeps_watchers"
    "test_process.py::test_fork_child_closing_loop_leaves_parent_watching"
)

# shellcheck source=scripts/test_wheel.sh
. scripts/test_wheel.sh
CARGO_PROFILE_RELEASE_DEBUG=true install_test_wheel valgrind
# test_transport_properties.py's property tests
"$VPY" -m pip install --quiet --disable-pip-version-check "hypothesis>=6.100"
rm -rf "$LOGS"
mkdir -p "$LOGS"
logs=$(cd "$LOGS" && pwd)
started=$SECONDS
deselect=()
for id in "${DESELECT[@]}"; do
    deselect+=(--deselect "$id")
done
# From tests/, without python/ on the path, so the installed build is imported. Children that
# exec (the subprocess tests' Pythons) run natively; forked children that do not exec are silent.
status=0
(cd tests && PYTHONMALLOC=malloc PYTHONPATH=../scripts "$VALGRIND" --tool=memcheck \
    --error-exitcode=99 --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --suppressions=../scripts/valgrind-python.supp \
    --num-callers=40 --child-silent-after-fork=yes --log-file="$logs/memcheck.%p.log" \
    "../$VPY" -m pytest -q -p no:cacheprovider --rootdir=. -p valgrind_timeouts --timeout=600 \
    -k ferroloop "${deselect[@]}" "${TESTS[@]}") | tee "$logs/pytest.out" || status=$?
echo "== valgrind: exit status $status in $((SECONDS - started)) s"
verdict=0
"$VPY" scripts/valgrind_report.py "$logs"/memcheck.*.log || verdict=1
# Status 99 is memcheck's (unsuppressed errors: the report above decides); any other non-zero
# status is pytest's.
if ((status != 0 && status != 99)) || grep -qE '[0-9]+ (failed|error)' "$logs/pytest.out"; then
    echo "valgrind: pytest failed (see $logs/pytest.out)"
    verdict=1
fi
exit "$verdict"
