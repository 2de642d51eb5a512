#!/usr/bin/env python3
"""Run the running interpreter's own asyncio test suite (test.test_asyncio) against ferroloop.

Each module runs in a subprocess (_worker.py) with ferroloop's policy forced and the
loop mixins subclassed onto ferroloop; a hung or crashed test is recorded and the rest
of its module resumes in a new subprocess.  See README.md for usage.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from _lists import k_matches, read_excluded, read_ids

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker.py"
FAILED = ("fail", "error", "timeout", "crash")
# Slowest first, so that two workers finish at about the same time.
SLOW_FIRST = (
    "test_tasks",
    "test_events",
    "test_subprocess",
    "test_taskgroups",
    "test_ssl",
    "test_base_events",
    "test_sendfile",
    "test_streams",
    "test_unix_events",
    "test_sslproto",
    "test_locks",
)
FAULT_LINES = 200
# Each interpreter runs its own test.test_asyncio, so each has its own list of passing ids, and
# may have exclusions of its own beside the common excluded.txt.
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
PASSING = HERE / f"passing-{VERSION}.txt"
EXCLUDED_VERSION = HERE / f"excluded-{VERSION}.txt"


@dataclass
class Record:
    id: str
    status: str
    reason: str = ""
    tb: str = ""
    pattern: str = ""
    secs: float = 0.0


@dataclass
class Config:
    loop: str
    timeout: float
    deadline: float
    excluded: list[tuple[str, str]]
    patterns: list[str]
    tmpdir: Path
    logdir: Path


@dataclass
class Attempt:
    """What one worker subprocess reported before it exited."""

    rc: int
    killed: bool
    fault: str
    plan: list[str] | None = None
    ended: dict[str, Record] = field(default_factory=dict)
    running: str | None = None
    module_error: str | None = None
    done: bool = False


# -- command line ----------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--loop",
        choices=("ferroloop", "asyncio"),
        default=os.environ.get("FERROLOOP_CONFORMANCE_LOOP", "ferroloop"),
        help="loop under test; asyncio is the reference run "
        "(default: $FERROLOOP_CONFORMANCE_LOOP or ferroloop)",
    )
    p.add_argument(
        "--module",
        action="append",
        default=[],
        help="only these modules (repeatable or comma-separated), e.g. test_tasks",
    )
    p.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="only test ids matching (substring or glob, as unittest -k; repeatable)",
    )
    p.add_argument("-j", "--jobs", type=int, default=2, help="parallel subprocesses (2)")
    p.add_argument("--timeout", type=float, default=15.0, help="per-test timeout in s (15)")
    p.add_argument(
        "--budget",
        type=float,
        default=600.0,
        help="stop starting tests after this many seconds (600)",
    )
    p.add_argument("--passing-file", type=Path, default=PASSING)
    p.add_argument(
        "--excluded-file",
        type=Path,
        action="append",
        default=None,
        help=f"exclusions (default: excluded.txt and {EXCLUDED_VERSION.name} if present)",
    )
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    p.add_argument(
        "--update-passing",
        action="store_true",
        help="rewrite the passing file from this run (the selected tests only)",
    )
    args = p.parse_args(argv)
    args.module = [m for arg in args.module for m in arg.split(",") if m]
    if args.excluded_file is None:
        args.excluded_file = [HERE / "excluded.txt", EXCLUDED_VERSION]
    default_passing = args.passing_file.resolve() == PASSING.resolve()
    if args.update_passing and args.loop == "asyncio" and default_passing:
        p.error("--update-passing from the asyncio reference run would not describe ferroloop")
    return args


def all_modules() -> list[str]:
    spec = importlib.util.find_spec("test.test_asyncio")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("this interpreter has no test.test_asyncio (install Python's test package)")
    directory = Path(next(iter(spec.submodule_search_locations)))
    return sorted(p.stem for p in directory.glob("test_*.py"))


def select_modules(requested: list[str]) -> list[str]:
    available = all_modules()
    unknown = sorted(set(requested) - set(available))
    if unknown:
        sys.exit(f"unknown module(s): {', '.join(unknown)}; available: {', '.join(available)}")
    chosen = requested or available
    rank = {m: i for i, m in enumerate(SLOW_FIRST)}
    return sorted(chosen, key=lambda m: (rank.get(m, len(rank)), m))


# -- one worker subprocess -------------------------------------------------------------


def spawn(job_path: Path, cwd: Path, log, hard_timeout: float) -> tuple[int, bool]:
    """Run the worker in its own process group; return (exit code, killed by hard timeout)."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(job_path)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    killed = False
    try:
        rc = proc.wait(timeout=hard_timeout)
    except subprocess.TimeoutExpired:
        killed = True
        proc.send_signal(signal.SIGABRT)  # faulthandler dumps the stacks first
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # children the tests left behind
    return rc, killed


def read_events(path: Path) -> list[dict]:
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            # A killed worker may leave half a line.
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def apply_event(a: Attempt, ev: dict) -> None:
    kind = ev["ev"]
    if kind == "plan":
        a.plan = ev["ids"]
    elif kind == "start":
        a.running = ev["id"]
    elif kind == "end":
        a.ended[ev["id"]] = Record(
            ev["id"],
            ev["status"],
            ev.get("reason", ""),
            ev.get("tb", ""),
            ev.get("pattern", ""),
            ev.get("secs", 0.0),
        )
        if a.running == ev["id"]:
            a.running = None
    elif kind == "module_error":
        a.module_error = ev["tb"]
    elif kind == "done":
        a.done = True


def run_attempt(module: str, cfg: Config, attempt: int, skip: set[str]) -> Attempt:
    tmp = cfg.tmpdir / f"{module}.{attempt}"
    tmp.mkdir()
    job = {
        "module": module,
        "loop": cfg.loop,
        "timeout": cfg.timeout,
        "deadline": cfg.deadline,
        "skip": sorted(skip),
        "excluded": cfg.excluded,
        "patterns": cfg.patterns,
        "out": str(tmp / "events.jsonl"),
        "fault_log": str(tmp / "fault.log"),
    }
    (tmp / "job.json").write_text(json.dumps(job))
    hard_timeout = max(cfg.deadline - time.time(), 0) + 2 * cfg.timeout + 30
    with open(cfg.logdir / f"{module}.log", "a") as log:
        log.write(f"\n===== attempt {attempt}\n")
        log.flush()
        rc, killed = spawn(tmp / "job.json", tmp, log, hard_timeout)
    fault_path = tmp / "fault.log"
    fault = fault_path.read_text(errors="replace") if fault_path.exists() else ""
    a = Attempt(rc=rc, killed=killed, fault="\n".join(fault.splitlines()[:FAULT_LINES]))
    for ev in read_events(tmp / "events.jsonl"):
        apply_event(a, ev)
    return a


# -- one module, resumed after every hang or crash -------------------------------------


def describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def died_record(test_id: str, a: Attempt, cfg: Config, started: bool) -> Record:
    where = "" if started else " (before the test started: class or module fixture?)"
    if a.killed:
        return Record(test_id, "timeout", "killed by the hard subprocess timeout" + where, a.fault)
    if "Timeout (" in a.fault:
        return Record(test_id, "timeout", f"hung for more than {cfg.timeout:g}s" + where, a.fault)
    first = next((ln for ln in a.fault.splitlines() if ln.strip()), "")
    reason = f"worker died, {describe_exit(a.rc)}{where}" + (f": {first}" if first else "")
    return Record(test_id, "crash", reason, a.fault)


def run_module(module: str, cfg: Config) -> tuple[list[Record], int]:
    """Run a module to the end; return its records and the number of restarts."""
    records: dict[str, Record] = {}
    attempt = 0
    while True:
        attempt += 1
        a = run_attempt(module, cfg, attempt, set(records))
        records.update(a.ended)
        if a.module_error is not None:
            records[module] = Record(module, "error", "import or collection failed", a.module_error)
            break
        if a.done:
            break
        if a.plan is None:  # died while importing the module
            records[module] = died_record(module, a, cfg, started=False)
            break
        pending = [t for t in a.plan if t not in records]
        culprit = a.running or (pending[0] if pending else f"{module}.tearDownModule")
        records[culprit] = died_record(culprit, a, cfg, started=a.running is not None)
        if not pending:
            break
    return list(records.values()), attempt - 1


# -- reporting -------------------------------------------------------------------------


def module_of(test_id: str) -> str:
    return test_id.split(".", 1)[0]


def counts(records: list[Record]) -> collections.Counter:
    c = collections.Counter(r.status for r in records)
    c["failed"] = sum(c[s] for s in FAILED)
    return c


def write_results(results_dir: Path, records: list[Record], loop: str) -> None:
    header = f"# loop={loop} python={sys.version.split()[0]} {time.strftime('%Y-%m-%d %H:%M')}\n"
    lines = []
    for r in sorted(records, key=lambda r: r.id):
        reason = " ".join(r.reason.split())
        lines.append(f"{r.id} {r.status}" + (f" # {reason}" if reason else ""))
    (results_dir / "results.txt").write_text(header + "\n".join(lines) + "\n")
    failures = [
        f"=== {r.id}: {r.status}: {r.reason}\n{r.tb.rstrip()}\n"
        for r in sorted(records, key=lambda r: r.id)
        if r.status in FAILED
    ]
    (results_dir / "failures.txt").write_text("\n".join(failures))
    slowest = sorted((r for r in records if r.secs), key=lambda r: -r.secs)
    (results_dir / "durations.txt").write_text("".join(f"{r.secs:8.3f} {r.id}\n" for r in slowest))


def module_table(records: list[Record]) -> str:
    by_module = collections.defaultdict(list)
    for r in records:
        by_module[module_of(r.id)].append(r)
    rows = [f"{'module':<22}{'pass':>6}{'fail':>6}{'skip':>6}{'excl':>6}"]
    for module in sorted(by_module):
        c = counts(by_module[module])
        rows.append(f"{module:<22}{c['pass']:>6}{c['failed']:>6}{c['skip']:>6}{c['excluded']:>6}")
    return "\n".join(rows)


def summary_line(records: list[Record]) -> str:
    """The summary, then the same counts as the plain closing line CI reads
    (`N passed, N failed, N skipped`)."""
    c = counts(records)
    return (
        f"conformance: {c['pass']} passed / {c['failed']} failed / {c['excluded']} excluded"
        f" / {len(records)} total ({c['skip']} skipped)\n"
        f"conformance: {c['pass']} passed, {c['failed']} failed, {c['skip']} skipped"
    )


def stale_exclusions(excluded: list[tuple[str, str]], records: list[Record]) -> list[str]:
    used = {r.pattern for r in records if r.status == "excluded"}
    return [p for p, _ in excluded if p not in used]


# -- passing.txt -----------------------------------------------------------------------


def in_scope(test_id: str, args: argparse.Namespace, modules: list[str]) -> bool:
    return module_of(test_id) in modules and k_matches(test_id, args.patterns)


def regressions(passing: set[str], records: list[Record], args, modules) -> list[str]:
    status = {r.id: r for r in records}
    out = []
    for test_id in sorted(passing):
        if in_scope(test_id, args, modules) and test_id not in status:
            out.append(f"{test_id}: not run (missing)")
        elif test_id in status and status[test_id].status != "pass":
            r = status[test_id]
            out.append(f"{test_id}: {r.status}" + (f" # {r.reason}" if r.reason else ""))
    return out


def update_passing(path: Path, records: list[Record], args, modules) -> int:
    kept = [t for t in read_ids(path) if not in_scope(t, args, modules)]
    ids = sorted(set(kept) | {r.id for r in records if r.status == "pass"})
    header = (
        "# Tests of CPython's test.test_asyncio that pass on ferroloop; run.py fails if\n"
        "# one stops passing.  Regenerate with: run.py --update-passing\n"
    )
    path.write_text(header + "".join(f"{t}\n" for t in ids))
    return len(ids)


# -- main ------------------------------------------------------------------------------


def run_all(modules: list[str], cfg: Config, jobs: int) -> list[Record]:
    def one(module: str) -> list[Record]:
        started = time.time()
        records, restarts = run_module(module, cfg)
        c = counts(records)
        print(
            f"  {module}: {c['pass']} passed, {c['failed']} failed, {c['skip']} skipped, "
            f"{c['excluded']} excluded ({time.time() - started:.0f}s"
            + (f", {restarts} restarts)" if restarts else ")"),
            flush=True,
        )
        return records

    with ThreadPoolExecutor(jobs) as pool:
        return [r for records in pool.map(one, modules) for r in records]


def execute(args, modules: list[str], excluded: list[tuple[str, str]]) -> list[Record]:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    logdir = args.results_dir / "logs"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir()
    print(f"conformance: {len(modules)} modules on {args.loop}, logs in {logdir}")
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        deadline = time.time() + args.budget
        cfg = Config(
            args.loop,
            args.timeout,
            deadline,
            excluded,
            args.patterns,
            Path(tmp),
            logdir,
        )
        records = run_all(modules, cfg, args.jobs)
    write_results(args.results_dir, records, args.loop)
    return records


def report(args, modules: list[str], excluded, records: list[Record]) -> int:
    """Print the tables and the summary; return the exit status."""
    print(module_table(records))
    if not args.module and not args.patterns:
        for pattern in stale_exclusions(excluded, records):
            print(f"warning: exclusion matches no test: {pattern}")
    passing = set(read_ids(args.passing_file))
    regressed = regressions(passing, records, args, modules)
    for line in regressed:
        print(f"REGRESSED {line}")
    others = sum(r.status in FAILED and r.id not in passing for r in records)
    missing = "" if args.passing_file.exists() else " (file missing: nothing to compare)"
    print(
        f"{len(regressed)} regressions against {args.passing_file.name}{missing}, "
        f"{others} other failures (details: {args.results_dir / 'failures.txt'})"
    )
    if args.update_passing:
        n = update_passing(args.passing_file, records, args, modules)
        print(f"wrote {n} ids to {args.passing_file}")
    print(summary_line(records))
    if args.update_passing:
        return 0
    # Every test that is not excluded must pass: a regression (a listed id that stopped
    # passing) and a new failure both fail the run.
    return 1 if regressed or others else 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    modules = select_modules(args.module)
    try:
        excluded = [e for path in args.excluded_file for e in read_excluded(path)]
    except ValueError as e:
        sys.exit(str(e))
    records = execute(args, modules, excluded)
    return report(args, modules, excluded, records)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
