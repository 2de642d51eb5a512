"""Side-by-side micro benchmarks of asyncio event loops (GUIDE §5).

Runs every case on stock asyncio, uvloop, ferroloop (and rloop when it is
installed) in one run, each (loop, case, round) in a fresh subprocess pinned to
one core, and reports CPU nanoseconds per operation plus ferroloop's ratios.

    python bench/micro.py --quick                 # about a minute on 2 cores
    python bench/micro.py --markdown              # longer run, Markdown table
    python bench/micro.py --loops asyncio,uvloop --cases call_soon,sleep0

Internal entry points (used by the driver, handy for debugging one case):

    python bench/micro.py --probe LOOP
    python bench/micro.py --worker LOOP CASE N REPEATS
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _machine import Progress, machine_info

BATCH = 1000  # callbacks / timers / tasks scheduled before the loop runs them
QUEUE_MAXSIZE = 16  # bounded, so the producer really waits for the consumer
WORKER_TIMEOUT_S = 120.0
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# name -> (module, factory attribute). The first three are always reported
# (as "not installed" when missing); the rest only appear when importable.
LOOPS: dict[str, tuple[str, str]] = {
    "asyncio": ("asyncio", "new_event_loop"),
    "uvloop": ("uvloop", "new_event_loop"),
    "ferroloop": ("ferroloop", "new_event_loop"),
    "rloop": ("rloop", "new_event_loop"),
}
REQUIRED_LOOPS = ("asyncio", "uvloop", "ferroloop")

Loop = asyncio.AbstractEventLoop
CaseFunc = Callable[[Loop, int], int]


class BenchError(RuntimeError):
    """A case did not do the work it claims to measure."""


# --------------------------------------------------------------------------
# Cases. Each runs N operations on `loop` and returns how many it observed
# completing; the worker fails loudly unless that equals N.
# --------------------------------------------------------------------------


def _batches(n: int) -> int:
    if n <= 0 or n % BATCH:
        raise BenchError(f"N must be a positive multiple of {BATCH}, got {n}")
    return n // BATCH


def case_call_soon(loop: Loop, n: int) -> int:
    done = 0

    def cb() -> None:
        nonlocal done
        done += 1

    async def driver() -> None:
        call_soon = loop.call_soon
        for _ in range(_batches(n)):
            for _ in range(BATCH):
                call_soon(cb)
            await asyncio.sleep(0)  # FIFO: our wakeup runs after the batch

    loop.run_until_complete(driver())
    return done


def case_call_soon_args(loop: Loop, n: int) -> int:
    done = 0

    def cb(step: int, _name: str, _extra: object) -> None:
        nonlocal done
        done += step

    async def driver() -> None:
        call_soon = loop.call_soon
        for _ in range(_batches(n)):
            for _ in range(BATCH):
                call_soon(cb, 1, "x", None)
            await asyncio.sleep(0)

    loop.run_until_complete(driver())
    return done


def case_call_later_cancel(loop: Loop, n: int) -> int:
    fired = 0
    pairs = 0

    def cb() -> None:
        nonlocal fired
        fired += 1

    async def driver() -> None:
        nonlocal pairs
        call_later = loop.call_later
        for _ in range(_batches(n)):
            for _ in range(BATCH - 1):
                call_later(10.0, cb).cancel()
            handle = call_later(10.0, cb)
            handle.cancel()
            if not handle.cancelled():
                raise BenchError("TimerHandle.cancel() did not cancel")
            pairs += BATCH
            await asyncio.sleep(0)  # let the loop drop cancelled timers

    loop.run_until_complete(driver())
    if fired:
        raise BenchError(f"{fired} cancelled timers fired")
    return pairs


def case_timers_fire(loop: Loop, n: int) -> int:
    fired = 0

    def cb() -> None:
        nonlocal fired
        fired += 1

    async def driver() -> None:
        call_later = loop.call_later
        target = 0
        for _ in range(_batches(n)):
            for _ in range(BATCH):
                call_later(0, cb)
            target += BATCH
            while fired < target:
                await asyncio.sleep(0)

    loop.run_until_complete(driver())
    return fired


def case_sleep0(loop: Loop, n: int) -> int:
    done = 0

    async def driver() -> None:
        nonlocal done
        for _ in range(n):
            await asyncio.sleep(0)
            done += 1

    loop.run_until_complete(driver())
    return done


def case_tasks_gather(loop: Loop, n: int) -> int:
    done = 0

    async def one() -> int:
        return 1

    async def driver() -> None:
        nonlocal done
        create_task = loop.create_task
        for _ in range(_batches(n)):
            results = await asyncio.gather(*[create_task(one()) for _ in range(BATCH)])
            done += sum(results)

    loop.run_until_complete(driver())
    return done


def case_eager_tasks_gather(loop: Loop, n: int) -> int:
    """create_task + gather of 1000 tasks under asyncio.eager_task_factory (3.12+): half of
    the coroutines finish inside create_task, half suspend once (the shape of a cache that
    mostly hits)."""
    done = 0

    async def hit() -> int:
        return 1

    async def miss() -> int:
        await asyncio.sleep(0)
        return 1

    async def driver() -> None:
        nonlocal done
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        create_task = loop.create_task
        for _ in range(_batches(n)):
            tasks = [create_task(hit() if i & 1 else miss()) for i in range(BATCH)]
            done += sum(await asyncio.gather(*tasks))

    loop.run_until_complete(driver())
    return done


def case_future_pingpong(loop: Loop, n: int) -> int:
    trips = 0
    inbox: list[asyncio.Future[asyncio.Future[None]]] = [loop.create_future()]

    async def pinger() -> None:
        for _ in range(n):
            reply: asyncio.Future[None] = loop.create_future()
            inbox[0].set_result(reply)
            await reply

    async def ponger() -> None:
        nonlocal trips
        for _ in range(n):
            reply = await inbox[0]
            inbox[0] = loop.create_future()
            trips += 1
            reply.set_result(None)

    async def driver() -> None:
        await asyncio.gather(ponger(), pinger())

    loop.run_until_complete(driver())
    return trips


def case_queue(loop: Loop, n: int) -> int:
    got = 0

    async def producer(queue: asyncio.Queue[int]) -> None:
        for _ in range(n):
            await queue.put(1)

    async def consumer(queue: asyncio.Queue[int]) -> None:
        nonlocal got
        for _ in range(n):
            got += await queue.get()

    async def driver() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=QUEUE_MAXSIZE)
        await asyncio.gather(producer(queue), consumer(queue))

    loop.run_until_complete(driver())
    return got


def case_call_soon_threadsafe(loop: Loop, n: int) -> int:
    done = 0
    finished: asyncio.Future[None] = loop.create_future()

    def cb() -> None:
        nonlocal done
        done += 1

    def post() -> None:
        call_soon_threadsafe = loop.call_soon_threadsafe
        for _ in range(n):
            call_soon_threadsafe(cb)
        call_soon_threadsafe(finished.set_result, None)  # FIFO: runs last

    poster = threading.Thread(target=post, name="poster")

    async def driver() -> None:
        poster.start()
        await finished

    loop.run_until_complete(driver())
    poster.join()
    return done


@dataclass(frozen=True)
class Case:
    name: str
    func: CaseFunc
    quick_n: int  # ops per measurement in --quick; the default run uses 3x
    target: float | None  # the bound on ferroloop/uvloop CPU per op
    title: str
    cpus: int = 1  # cores the worker is pinned to
    min_python: tuple[int, int] = (3, 11)  # the first version whose asyncio has the feature


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("call_soon", case_call_soon, 200_000, 0.30, "call_soon(cb)"),
        Case(
            "call_soon_args",
            case_call_soon_args,
            200_000,
            None,
            "call_soon(cb, a, b, c)",
        ),
        Case(
            "call_later_cancel",
            case_call_later_cancel,
            100_000,
            0.50,
            "call_later(10) + cancel",
        ),
        Case("timers_fire", case_timers_fire, 50_000, None, "call_later(0) timers firing"),
        Case("sleep0", case_sleep0, 50_000, 0.50, "await sleep(0)"),
        Case(
            "tasks_gather",
            case_tasks_gather,
            20_000,
            0.85,
            "create_task + gather (x1000)",
        ),
        Case(
            "eager_tasks_gather",
            case_eager_tasks_gather,
            20_000,
            None,
            "eager create_task + gather (x1000)",
            min_python=(3, 12),
        ),
        Case(
            "future_pingpong",
            case_future_pingpong,
            20_000,
            0.50,
            "future ping-pong round trip",
        ),
        Case("queue", case_queue, 50_000, None, f"Queue(maxsize={QUEUE_MAXSIZE}) put/get"),
        Case(
            "call_soon_threadsafe",
            case_call_soon_threadsafe,
            50_000,
            0.30,
            "call_soon_threadsafe from a thread",
            cpus=2,
        ),
    )
}


# --------------------------------------------------------------------------
# Worker and probe: run inside a fresh subprocess.
# --------------------------------------------------------------------------


def load_factory(loop_name: str) -> Callable[[], Loop]:
    module_name, attr = LOOPS[loop_name]
    factory: Callable[[], Loop] = getattr(importlib.import_module(module_name), attr)
    return factory


def pin_to_cpus(count: int) -> list[int]:
    """Pin this process to the last `count` allowed CPUs; return them."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-count:]
    os.sched_setaffinity(0, chosen)
    return chosen


def measure_once(case: Case, loop: Loop, n: int) -> dict[str, int]:
    gc.collect()
    cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
    done = case.func(loop, n)
    wall1, cpu1 = time.perf_counter_ns(), time.process_time_ns()
    if done != n:
        raise BenchError(f"{case.name}: expected {n} operations, observed {done}")
    return {"cpu_ns": cpu1 - cpu0, "wall_ns": wall1 - wall0}


def run_worker(loop_name: str, case_name: str, n: int, repeats: int) -> dict[str, Any]:
    case = CASES[case_name]
    cpus = pin_to_cpus(case.cpus)
    loop = load_factory(loop_name)()
    try:
        measure_once(case, loop, max(BATCH, n // 10 // BATCH * BATCH))  # warm up
        samples = [measure_once(case, loop, n) for _ in range(repeats)]
    finally:
        loop.close()
    return {
        "loop": loop_name,
        "case": case_name,
        "n": n,
        "cpus": cpus,
        "samples": samples,
    }


def run_probe(loop_name: str) -> dict[str, Any]:
    module_name = LOOPS[loop_name][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return {"ok": False, "status": "not installed", "error": repr(exc)}
    try:
        load_factory(loop_name)().close()
    except Exception as exc:  # noqa: BLE001 - any failure: the loop is unusable
        return {"ok": False, "status": "broken", "error": repr(exc)}
    version = getattr(module, "__version__", platform.python_version())
    return {"ok": True, "status": "ok", "version": str(version)}


# --------------------------------------------------------------------------
# Driver: spawns workers, aggregates, prints the table, writes JSON.
# --------------------------------------------------------------------------


@dataclass
class Cell:
    """All samples of one (loop, case) pair."""

    n: int = 0
    samples: list[dict[str, int]] = field(default_factory=list)
    error: str | None = None

    def per_op(self, key: str) -> list[float]:
        return [s[key] / self.n for s in self.samples]

    def best(self, key: str = "cpu_ns") -> float | None:
        """Minimum per-operation value of `key` ("cpu_ns" or "wall_ns")."""
        return min(self.per_op(key)) if self.samples and not self.error else None


def spawn(args: Sequence[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise BenchError(lines[-1] if lines else f"exit status {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def probe_loops(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    probes: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            probes[name] = spawn(["--probe", name], timeout=60)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            probes[name] = {"ok": False, "status": "broken", "error": str(exc)}
    return probes


def run_cell(loop_name: str, case: Case, n: int, repeats: int, cell: Cell) -> None:
    args = ["--worker", loop_name, case.name, str(n), str(repeats)]
    try:
        result = spawn(args, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        cell.error = f"timeout after {WORKER_TIMEOUT_S:.0f} s"
    except BenchError as exc:
        cell.error = str(exc)
    else:
        cell.n = n
        cell.samples.extend(result["samples"])


def run_all(
    loops: Sequence[str], cases: Sequence[Case], scale: int, rounds: int, repeats: int
) -> dict[str, dict[str, Cell]]:
    """Each round runs every loop once per case, rotating the loops' order."""
    cells = {c.name: {name: Cell() for name in loops} for c in cases}
    progress = Progress(len(cases) * rounds * len(loops))
    for case in cases:
        n = case.quick_n * scale
        for r in range(rounds):
            order = list(loops[r % len(loops) :]) + list(loops[: r % len(loops)])
            for name in order:
                cell = cells[case.name][name]
                if cell.error is None:
                    run_cell(name, case, n, repeats, cell)
                shown = "FAILED" if cell.error else f"{fmt_ns(cell.best())} ns"
                progress.step(f"{name} {case.name} {shown}")
    return cells


def fmt_ns(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_cell(cell: Cell, key: str = "cpu_ns") -> str:
    return "FAILED" if cell.error else fmt_ns(cell.best(key))


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def target_status(case: Case, vs_uvloop: float | None) -> str:
    if case.target is None:
        return "-"
    bound = f"<= {case.target:.2f}x"
    if vs_uvloop is None:
        return f"{bound}: n/a"
    return f"{bound}: {'met' if vs_uvloop <= case.target else 'NOT met'}"


def table_rows(
    cases: Sequence[Case],
    loops: Sequence[str],
    cells: dict[str, dict[str, Cell]],
    probes: dict[str, dict[str, Any]],
) -> list[list[str]]:
    header = ["case", *(f"{name} ns/op" for name in loops)]
    header += ["ferroloop/uvloop", "ferroloop/asyncio", "target (vs uvloop)"]
    rows = [header]
    for case in cases:
        row = [case.title]
        for name in loops:
            installed = probes[name]["ok"]
            row.append(fmt_cell(cells[case.name][name]) if installed else probes[name]["status"])
        cpu = {name: cells[case.name][name].best() for name in loops}
        vs_uv = ratio(cpu.get("ferroloop"), cpu.get("uvloop"))
        vs_aio = ratio(cpu.get("ferroloop"), cpu.get("asyncio"))
        row += [fmt_ratio(vs_uv), fmt_ratio(vs_aio), target_status(case, vs_uv)]
        rows.append(row)
    return rows


def wall_rows(
    cases: Sequence[Case],
    loops: Sequence[str],
    cells: dict[str, dict[str, Cell]],
    probes: dict[str, dict[str, Any]],
) -> list[list[str]]:
    rows = [["case", *(f"{name} wall ns/op" for name in loops)]]
    for case in cases:
        row = [case.title]
        for name in loops:
            cell = cells[case.name][name]
            row.append(fmt_cell(cell, "wall_ns") if probes[name]["ok"] else "-")
        rows.append(row)
    return rows


def render(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(
            1,
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|",
        )
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def describe(machine: dict[str, Any], probes: dict[str, dict[str, Any]]) -> str:
    versions = ", ".join(
        f"{name} {p['version']}" if p["ok"] else f"{name} ({p['status']})"
        for name, p in probes.items()
    )
    return (
        f"{machine['date']} | {machine['nproc']} CPUs, {machine['cpu_model']} | "
        f"{machine['implementation']} {machine['python']} | {versions}"
    )


FOOTNOTE = (
    "CPU ns per operation (process CPU time, min over all samples; lower is better). "
    "Targets from the issue: ferroloop <= 0.30x uvloop for call_soon and "
    "call_soon_threadsafe, <= 0.50x for call_later+cancel, sleep(0) and future "
    "ping-pong, <= 0.85x for creating and gathering 1000 tasks; "
    "other cases have no target."
)


def write_json(
    path: Path,
    machine: dict[str, Any],
    settings: dict[str, Any],
    probes: dict[str, dict[str, Any]],
    cells: dict[str, dict[str, Cell]],
) -> None:
    results: dict[str, dict[str, Any]] = {}
    for case_name, per_loop in cells.items():
        results[case_name] = {}
        for name, cell in per_loop.items():
            entry: dict[str, Any] = {
                "n": cell.n,
                "error": cell.error,
                "samples": cell.samples,
            }
            if cell.samples and not cell.error:
                cpu, wall = cell.per_op("cpu_ns"), cell.per_op("wall_ns")
                entry |= {
                    "cpu_ns_per_op_min": min(cpu),
                    "cpu_ns_per_op_median": statistics.median(cpu),
                    "wall_ns_per_op_min": min(wall),
                }
            results[case_name][name] = entry
    doc = {
        "machine": machine,
        "settings": settings,
        "loops": probes,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def parse_names(text: str | None, known: Sequence[str], what: str) -> list[str] | None:
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short run (about a minute on 2 cores)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--loops", help=f"comma-separated subset of {','.join(LOOPS)}")
    ap.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument(
        "--rounds",
        type=int,
        help="fresh subprocesses per (loop, case) [quick 3, default 5]",
    )
    ap.add_argument("--repeats", type=int, help="measurements per subprocess [quick 3, default 5]")
    ap.add_argument("--output", type=Path, help="JSON path [bench/results/micro-<date>.json]")
    return ap.parse_args(argv)


def select_loops(
    requested: list[str] | None,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Probe the loops; optional extras that fail to import are dropped silently."""
    names = requested or list(LOOPS)
    probes = probe_loops(names)
    keep = [n for n in names if requested or n in REQUIRED_LOOPS or probes[n]["ok"]]
    return keep, {n: probes[n] for n in keep}


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--worker"]:
        loop_name, case_name, n, repeats = argv[1:5]
        print(json.dumps(run_worker(loop_name, case_name, int(n), int(repeats))))
        return 0
    if argv[:1] == ["--probe"]:
        print(json.dumps(run_probe(argv[1])))
        return 0

    args = parse_args(argv)
    started = time.perf_counter()
    loops, probes = select_loops(parse_names(args.loops, list(LOOPS), "loops"))
    case_names = parse_names(args.cases, list(CASES), "cases") or list(CASES)
    cases = [CASES[name] for name in case_names]
    skipped = [c.name for c in cases if sys.version_info[:2] < c.min_python]
    for name in skipped:
        print(f"skipped: {name} needs Python {'.'.join(map(str, CASES[name].min_python))}+")
    cases = [c for c in cases if c.name not in skipped]
    settings: dict[str, Any] = {
        "mode": "quick" if args.quick else "default",
        "scale": 1 if args.quick else 3,
        "rounds": args.rounds or (3 if args.quick else 5),
        "repeats": args.repeats or (3 if args.quick else 5),
        "batch": BATCH,
        "queue_maxsize": QUEUE_MAXSIZE,
        "timer": "time.process_time_ns (all threads of the worker)",
    }
    runnable = [name for name in loops if probes[name]["ok"]]
    cells = run_all(runnable, cases, settings["scale"], settings["rounds"], settings["repeats"])
    for case in cases:  # loops that are not installed get empty cells
        for name in loops:
            cells[case.name].setdefault(name, Cell())
    machine = machine_info()
    settings["wall_s"] = round(time.perf_counter() - started, 1)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.output or RESULTS_DIR / f"micro-{stamp}.json"
    write_json(out, machine, settings, probes, cells)

    print(describe(machine, probes))
    print(render(table_rows(cases, loops, cells, probes), args.markdown))
    print(f"\n{FOOTNOTE}\n")
    print(render(wall_rows(cases, loops, cells, probes), args.markdown))
    failures = [
        (c, n, cell.error) for c, per in cells.items() for n, cell in per.items() if cell.error
    ]
    for case_name, name, error in failures:
        print(f"FAILED {name} {case_name}: {error}", file=sys.stderr)
    print(f"\nwall time {settings['wall_s']} s; raw results: {out}", file=sys.stderr)
    # Another loop failing a case is a finding to report (uvloop 0.23 cannot run an eager
    # task factory on 3.13), not a failure of this run; ferroloop failing one is.
    return 1 if any(name == "ferroloop" for _, name, _ in failures) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
