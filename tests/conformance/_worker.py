"""Runs one module of CPython's test.test_asyncio in this process (started by run.py).

Usage: _worker.py JOB.json.  The job names the module, the loop ("ferroloop" or
"asyncio"), the per-test timeout, the run's deadline, the ids to skip (already
recorded by an earlier attempt), the exclusions and the -k patterns.

Events are appended to job["out"] as JSON lines, flushed one by one so that the
parent can tell which test was running when this process died:
  {"ev": "plan", "ids": [...]}            tests about to run, in order
  {"ev": "start", "id": ...}
  {"ev": "end", "id": ..., "status": ..., "reason": ..., "tb": ...}
  {"ev": "module_error", "tb": ...}       the module could not be imported
  {"ev": "done"}
A per-test faulthandler timer (always armed, re-armed at every test boundary)
dumps all threads to job["fault_log"] and exits if a test hangs.
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import importlib
import json
import os
import re
import sys
import time
import traceback
import unittest
from collections.abc import Callable
from dataclasses import dataclass

from _lists import id_matches, k_matches, short_id

SELECTOR_CLASSES = (
    "SelectEventLoopTests",
    "EPollEventLoopTests",
    "PollEventLoopTests",
    "KqueueEventLoopTests",
)


@dataclass(frozen=True)
class Mirror:
    """A test class built like the module's SelectorEventLoop class, on the loop under test."""

    name: str
    # Dotted names in the test module's namespace, in MRO order.
    bases: tuple[str, ...]
    # The module's own selector-loop classes that this class stands in for.
    replaces: tuple[str, ...] = ()
    # Run only the tests defined in this mixin.
    tests_from: str | None = None


MIRRORS = {
    "test_events": [
        Mirror(
            "EventLoopTests",
            ("EventLoopTestsMixin", "test_utils.TestCase"),
            SELECTOR_CLASSES,
        ),
        Mirror(
            "SubprocessTests",
            ("UnixEventLoopTestsMixin", "SubprocessTestsMixin", "test_utils.TestCase"),
            tests_from="SubprocessTestsMixin",
        ),
    ],
    "test_sock_lowlevel": [
        Mirror("SockTests", ("BaseSockTestsMixin", "test_utils.TestCase"), SELECTOR_CLASSES),
    ],
    "test_sendfile": [
        Mirror(
            "SendfileTests",
            ("SendfileTestsBase", "test_utils.TestCase"),
            SELECTOR_CLASSES,
        ),
    ],
    "test_server": [
        Mirror(
            "StartServerTests",
            ("SelectorStartServerTests",),
            ("SelectorStartServerTests",),
        ),
    ],
    "test_buffered_proto": [
        Mirror(
            "BufferedProtocolTests",
            ("BaseTestBufferedProtocol", "unittest.TestCase"),
            ("BufferedProtocolSelectorTests",),
        ),
    ],
    "test_sslproto": [
        Mirror(
            "StartTLSTests",
            ("BaseStartTLS", "unittest.TestCase"),
            ("SelectorStartTLSTests",),
        ),
    ],
}


class Emitter:
    def __init__(self, file) -> None:
        self._file = file

    def __call__(self, **event: object) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()


# -- loop selection --------------------------------------------------------------------


def select_loop(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """Make asyncio's default policy create `name` loops; return the loop factory."""
    if name == "asyncio":
        return asyncio.new_event_loop
    import ferroloop

    # asyncio.set_event_loop_policy(None), called by every module's tearDownModule and by
    # many tests, re-creates `asyncio.DefaultEventLoopPolicy()`: make that ours too.
    asyncio.DefaultEventLoopPolicy = ferroloop.EventLoopPolicy
    asyncio.unix_events.DefaultEventLoopPolicy = ferroloop.EventLoopPolicy
    asyncio.set_event_loop_policy(None)
    loop = asyncio.new_event_loop()
    loop.close()
    if not isinstance(loop, ferroloop.Loop):
        raise TypeError(f"policy forcing failed: asyncio.new_event_loop() gave {loop!r}")
    return ferroloop.new_event_loop


# -- collecting tests ------------------------------------------------------------------


def add_mirrors(module, make_loop) -> tuple[set[type], dict[type, set[str]]]:
    """Add the module's mirror classes; return (replaced classes, {class: allowed names})."""
    replaced, only = set(), {}
    for m in MIRRORS.get(module.__name__.rsplit(".", 1)[-1], []):
        bases = tuple(functools.reduce(getattr, b.split("."), module) for b in m.bases)

        def factory(self):
            return make_loop()

        cls = type(
            m.name,
            bases,
            {
                "create_event_loop": factory,
                "new_loop": factory,
                "__module__": module.__name__,
                "__qualname__": m.name,
            },
        )
        setattr(module, m.name, cls)
        replaced.update(getattr(module, r) for r in m.replaces if hasattr(module, r))
        if m.tests_from:
            only[cls] = set(vars(getattr(module, m.tests_from)))
    return replaced, only


def flatten(suite) -> list[unittest.TestCase]:
    if isinstance(suite, unittest.TestSuite):
        return [t for s in suite for t in flatten(s)]
    return [suite]


def collect(module, make_loop) -> list[unittest.TestCase]:
    replaced, only = add_mirrors(module, make_loop)
    tests = flatten(unittest.defaultTestLoader.loadTestsFromModule(module))
    return [
        t
        for t in tests
        if type(t) not in replaced and (type(t) not in only or t._testMethodName in only[type(t)])
    ]


def exclusion(test_id: str, excluded: list[list[str]]) -> tuple[str, str] | None:
    return next(((p, r) for p, r in excluded if id_matches(test_id, p)), None)


# -- the result object -----------------------------------------------------------------

FIXTURE_RE = re.compile(r"^(\w+) \((.+)\)$")


def holder_id(test) -> str:
    """An id for `test`; fixture errors ("setUpClass (mod.Cls)") become "mod.Cls.setUpClass"."""
    m = FIXTURE_RE.match(test.id())
    return short_id(f"{m[2]}.{m[1]}" if m else test.id())


def exc_reason(err) -> str:
    line = traceback.format_exception_only(err[0], err[1])[-1].strip()
    return line if len(line) <= 160 else line[:157] + "..."


class Result(unittest.TestResult):
    """Emits one "end" event per test; a hang trips the faulthandler timer."""

    def __init__(self, emit: Emitter, job: dict, fault_file) -> None:
        super().__init__()
        self._emit, self._fault = emit, fault_file
        self._timeout, self._deadline = job["timeout"], job["deadline"]
        self._current = None
        self._ended: set[str] = set()
        self._setup_failures: dict[str, tuple[str, str, str]] = {}
        self.budget_exhausted = False
        self._arm()

    def _arm(self) -> None:
        faulthandler.dump_traceback_later(self._timeout, exit=True, file=self._fault)

    def _end(self, test_id: str, status: str, reason: str, tb: str = "", **extra) -> None:
        self._ended.add(test_id)
        self._emit(ev="end", id=test_id, status=status, reason=reason, tb=tb, **extra)

    def startTest(self, test) -> None:
        super().startTest(test)
        self._current, self._status, self._reason, self._tbs = test, None, "", []
        self._started = time.monotonic()
        self._emit(ev="start", id=holder_id(test))
        self._arm()

    def stopTest(self, test) -> None:
        super().stopTest(test)
        if test is not self._current:
            # 3.12+ skips a skipped test without startTest() but still calls stopTest();
            # addSkip() has already recorded it.
            self._arm()
            return
        secs = round(time.monotonic() - self._started, 3)
        status, reason = self._status or "error", self._reason
        if not self._status:
            reason = "no outcome reported"
        self._end(holder_id(test), status, reason, "\n".join(self._tbs), secs=secs)
        self._current = None
        self._arm()
        if time.time() > self._deadline:
            self.budget_exhausted = True
            self.stop()

    def _set(self, test, status: str, reason: str, tb: str = "") -> None:
        if test is not self._current:
            self._fixture(holder_id(test), status, reason, tb)
            return
        if self._status in (None, "pass"):
            self._status, self._reason = status, reason
        if tb:
            self._tbs.append(tb)

    def _fixture(self, fixture_id: str, status: str, reason: str, tb: str) -> None:
        """A setUpClass/setUpModule outcome applies to the tests it kept from running."""
        scope, name = fixture_id.rsplit(".", 1)
        if name in ("setUpClass", "setUpModule"):
            self._setup_failures[scope] = (status, f"{name}: {reason}", tb)
        else:
            self._end(fixture_id, status, reason, tb)

    def finish(self, planned: list[str]) -> None:
        """Record the planned tests that never started."""
        for test_id in planned:
            if test_id in self._ended:
                continue
            scopes = self._setup_failures.items()
            cause = next((v for s, v in scopes if id_matches(test_id, s)), None)
            if cause:
                self._end(test_id, *cause)
            elif self.budget_exhausted:
                self._end(test_id, "timeout", "not run: the time budget was exhausted")
            else:
                self._end(test_id, "error", "not run, no outcome reported")

    def _set_err(self, test, status: str, err, label: str = "") -> None:
        reason, tb = exc_reason(err), self._exc_info_to_string(err, test)
        self._set(test, status, label + reason, label + tb)

    def addError(self, test, err) -> None:
        self._set_err(test, "error", err)

    def addFailure(self, test, err) -> None:
        self._set_err(test, "fail", err)

    def addSubTest(self, test, subtest, err) -> None:
        if err is not None:
            status = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set_err(test, status, err, f"{subtest._subDescription()}: ")

    def addSuccess(self, test) -> None:
        self._set(test, "pass", "")

    def addSkip(self, test, reason: str) -> None:
        self._set(test, "skip", reason)

    def addExpectedFailure(self, test, err) -> None:
        self._set(test, "pass", "expected failure")

    def addUnexpectedSuccess(self, test) -> None:
        self._set(test, "fail", "unexpected success")


# -- main ------------------------------------------------------------------------------


def plan(tests, job, emit: Emitter) -> list[unittest.TestCase]:
    """Drop done and -k-filtered tests, record the excluded ones, return the rest."""
    skip, selected = set(job["skip"]), []
    for test in tests:
        test_id = short_id(test.id())
        if test_id in skip or not k_matches(test_id, job["patterns"]):
            continue
        if hit := exclusion(test_id, job["excluded"]):
            emit(ev="end", id=test_id, status="excluded", reason=hit[1], pattern=hit[0])
        else:
            selected.append(test)
    emit(ev="plan", ids=[short_id(t.id()) for t in selected])
    return selected


def run(job: dict, emit: Emitter, fault_file) -> None:
    faulthandler.dump_traceback_later(job["timeout"], exit=True, file=fault_file)
    try:
        make_loop = select_loop(job["loop"])
        module = importlib.import_module("test.test_asyncio." + job["module"])
        tests = plan(collect(module, make_loop), job, emit)
    except unittest.SkipTest as e:  # e.g. the Windows-only modules
        emit(ev="end", id=job["module"], status="skip", reason=str(e))
        emit(ev="done")
        return
    except Exception:  # noqa: BLE001 -- any import failure is a result to record
        emit(ev="module_error", tb=traceback.format_exc())
        return
    result = Result(emit, job, fault_file)
    if time.time() > job["deadline"]:
        result.budget_exhausted = True
    else:
        unittest.TestSuite(tests).run(result)
    faulthandler.cancel_dump_traceback_later()
    result.finish([short_id(t.id()) for t in tests])
    emit(ev="done")


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    with (
        open(job["out"], "a", encoding="utf-8") as out,
        open(job["fault_log"], "w") as fault,
    ):
        faulthandler.enable(file=fault, all_threads=True)
        run(job, Emitter(out), fault)
    sys.stdout.flush()
    sys.stderr.flush()
    # Leftover non-daemon threads of a failed test must not hang the exit.
    os._exit(0)


if __name__ == "__main__":
    main()
