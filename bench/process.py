"""Side-by-side subprocess benchmarks of asyncio event loops (GUIDE §5).

Runs two cases on stock asyncio, uvloop and ferroloop (and rloop when it is
installed) in one run, each (loop, case, round) in a fresh subprocess:

* spawn: PROCS (200) concurrent ``create_subprocess_exec("/bin/true")``, all
  awaited; wall time, parent CPU and children's CPU per process.
* pipe: MIB (100) MiB through ``cat`` (stdin=PIPE, stdout=PIPE), written and
  read concurrently from the loop; MiB/s and parent CPU per MiB.

    python bench/process.py --quick               # well under a minute on 2 cores
    python bench/process.py --markdown            # more rounds, Markdown table

Internal entry point (used by the driver, handy for debugging one case):

    python bench/process.py --worker LOOP CASE SIZE REPEATS
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Sibling module (bench/ is sys.path[0] when this file runs as a script):
# loop table, probing, machine description and table rendering are shared.
import micro
from micro import LOOPS, BenchError, fmt_ratio, ratio, render

PROCS = 200  # processes per spawn measurement
MIB = 100  # MiB per pipe measurement
BLOCK = 1 << 20  # the writer writes one 1 MiB block, then drains
READ_SIZE = 1 << 20  # StreamReader.read(n) per read
WORKER_TIMEOUT_S = 120.0
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SPAWN_TARGET = 1.0  # ferroloop spawn rate >= 1.0x uvloop's
PIPE_TARGET = 1.5  # ferroloop pipe throughput >= 1.5x uvloop's

Loop = asyncio.AbstractEventLoop
Sample = dict[str, int]


# --------------------------------------------------------------------------
# Cases: run inside the worker; each returns one validated sample.
# --------------------------------------------------------------------------


def children_cpu_ns() -> int:
    """CPU of waited-for children (os.times, clock-tick resolution)."""
    t = os.times()
    return round((t.children_user + t.children_system) * 1e9)


def case_spawn(loop: Loop, procs: int) -> Sample:
    async def one() -> int:
        proc = await asyncio.create_subprocess_exec("/bin/true")
        return await proc.wait()

    async def driver() -> list[int]:
        return await asyncio.gather(*[one() for _ in range(procs)])

    child0, cpu0 = children_cpu_ns(), time.process_time_ns()
    wall0 = time.perf_counter_ns()
    codes = loop.run_until_complete(driver())
    wall1, cpu1 = time.perf_counter_ns(), time.process_time_ns()
    child1 = children_cpu_ns()
    ok = sum(1 for c in codes if c == 0)
    if ok != procs:
        raise BenchError(f"spawn: {ok} of {procs} processes exited with 0: {codes}")
    return {
        "n": ok,
        "wall_ns": wall1 - wall0,
        "cpu_ns": cpu1 - cpu0,
        "children_cpu_ns": child1 - child0,
    }


_BLOCK_DATA = random.Random(42).randbytes(BLOCK)


def case_pipe(loop: Loop, mib: int) -> Sample:
    # Every chunk is compared with the bytes expected at its offset as it arrives (a memcmp,
    # under 0.1 ms per MiB) and then dropped. Keeping the chunks to hash them after the
    # clock stopped made the case measure the page faults of 100 MiB of fresh memory
    # (80,000 minor faults, the same on every loop) instead of the loop's pipe path.
    doubled = _BLOCK_DATA * 2  # any chunk of at most one block is a slice of this
    state = {"n": 0, "bad": 0}
    times: dict[str, int] = {}

    async def driver() -> int:
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None and stdout is not None

        async def writer() -> None:
            for _ in range(mib):
                stdin.write(_BLOCK_DATA)
                await stdin.drain()
            stdin.close()

        async def reader() -> None:
            n = bad = 0
            while chunk := await stdout.read(READ_SIZE):
                start = n % BLOCK
                if chunk != doubled[start : start + len(chunk)]:
                    bad += 1
                n += len(chunk)
            state["n"], state["bad"] = n, bad

        times["cpu0"], times["wall0"] = time.process_time_ns(), time.perf_counter_ns()
        await asyncio.gather(writer(), reader())
        code = await proc.wait()
        times["wall1"], times["cpu1"] = time.perf_counter_ns(), time.process_time_ns()
        return code

    code = loop.run_until_complete(driver())
    nbytes = state["n"]
    if code != 0 or nbytes != mib * BLOCK or state["bad"]:
        raise BenchError(
            f"pipe: exit {code}, {nbytes} of {mib * BLOCK} bytes, "
            f"{state['bad']} chunks differing from what was written"
        )
    return {
        "n": nbytes,
        "wall_ns": times["wall1"] - times["wall0"],
        "cpu_ns": times["cpu1"] - times["cpu0"],
    }


CASES: dict[str, Callable[[Loop, int], Sample]] = {
    "spawn": case_spawn,
    "pipe": case_pipe,
}
WARMUP = {"spawn": 20, "pipe": 4}  # sizes of the unmeasured first run


def run_worker(loop_name: str, case: str, size: int, repeats: int) -> dict[str, Any]:
    """No CPU pinning: the children would inherit it and share the parent's core."""
    loop = micro.load_factory(loop_name)()
    try:
        CASES[case](loop, WARMUP[case])
        samples = [CASES[case](loop, size) for _ in range(repeats)]
    finally:
        loop.close()
    return {"loop": loop_name, "case": case, "size": size, "samples": samples}


# --------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    def best(self, key: str, scale: float, mean: bool = False) -> float | None:
        """Minimum (or pooled mean) of samples[key] / samples["n"] * scale."""
        if self.error or not self.samples:
            return None
        if mean:
            total = sum(s[key] for s in self.samples)
            return total / sum(s["n"] for s in self.samples) * scale
        return min(s[key] / s["n"] * scale for s in self.samples)


def spawn_worker(args: Sequence[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise BenchError(lines[-1] if lines else f"exit status {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_all(
    loops: Sequence[str], sizes: dict[str, int], rounds: int, repeats: int
) -> dict[str, dict[str, Cell]]:
    cells = {case: {name: Cell() for name in loops} for case in CASES}
    for case, size in sizes.items():
        for r in range(rounds):
            k = r % len(loops)
            for name in [*loops[k:], *loops[:k]]:  # rotate the order per round
                cell = cells[case][name]
                if cell.error is not None:
                    continue
                args = ["--worker", name, case, str(size), str(repeats)]
                try:
                    cell.samples += spawn_worker(args)["samples"]
                except subprocess.TimeoutExpired:
                    cell.error = f"timeout after {WORKER_TIMEOUT_S:.0f} s"
                except BenchError as exc:
                    cell.error = str(exc)
            print(f"[{case} {r + 1}/{rounds}] done", file=sys.stderr, flush=True)
    return cells


@dataclass(frozen=True)
class Metric:
    case: str
    title: str
    key: str
    scale: float  # per-n value * scale = the figure shown
    higher_is_better: bool = False
    target: float | None = None  # bound on the ferroloop/uvloop "goodness" ratio
    target_name: str = ""
    mean: bool = False  # pooled mean instead of the minimum (coarse clocks)

    def value(self, cell: Cell) -> float | None:
        best = cell.best(self.key, self.scale, self.mean)
        if best is None or not self.higher_is_better:
            return best
        return 1 / best if best else None  # seconds per unit -> units per second


def metrics() -> list[Metric]:
    mib = BLOCK
    return [
        Metric("spawn", "spawn: wall us/proc", "wall_ns", 1e-3, False,
               SPAWN_TARGET, "spawn rate"),
        Metric("spawn", "spawn: parent CPU us/proc", "cpu_ns", 1e-3),
        Metric("spawn", "spawn: children CPU us/proc (mean)", "children_cpu_ns", 1e-3,
               mean=True),
        Metric("pipe", "pipe: MiB/s", "wall_ns", mib * 1e-9, True,
               PIPE_TARGET, "throughput"),
        Metric("pipe", "pipe: parent CPU ms/MiB", "cpu_ns", mib * 1e-6),
    ]  # fmt: skip


def fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def table_rows(
    loops: Sequence[str],
    cells: dict[str, dict[str, Cell]],
    probes: dict[str, dict[str, Any]],
) -> list[list[str]]:
    rows = [["metric", *loops, "ferroloop/uvloop", "target (vs uvloop)"]]
    for m in metrics():
        row = [m.title]
        values = {}
        for name in loops:
            cell = cells[m.case][name]
            values[name] = m.value(cell)
            if not probes[name]["ok"]:
                row.append(probes[name]["status"])
            else:
                row.append("FAILED" if cell.error else fmt_value(values[name]))
        r = ratio(values.get("ferroloop"), values.get("uvloop"))
        status = "-"
        if m.target is not None:
            good = None if r is None else (r if m.higher_is_better else 1 / r)
            verdict = "n/a" if good is None else "met" if good >= m.target else "NOT met"
            got = "" if good is None else f" ({good:.2f}x)"
            status = f"{m.target_name} >= {m.target:.2f}x{got}: {verdict}"
        rows.append([*row, fmt_ratio(r), status])
    return rows


FOOTNOTE = (
    "Best (min time) of all samples. spawn: {procs} concurrent "
    "create_subprocess_exec('/bin/true'), all awaited (exit codes checked); children "
    "CPU from os.times() has 10 ms ticks, so it is the mean over all samples. "
    "pipe: {mib} MiB through `cat`, written in 1 MiB blocks with drain() while "
    "StreamReader.read(1 MiB) reads concurrently (byte count checked, and every chunk "
    "compared with what was written as it arrives); the rate excludes the spawn of `cat`. "
    f"Targets from the issue: spawn rate >= {SPAWN_TARGET:.1f}x uvloop's, pipe "
    f"throughput >= {PIPE_TARGET:.1f}x uvloop's."
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short run (under a minute)")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--loops", help=f"comma-separated subset of {','.join(LOOPS)}")
    ap.add_argument("--rounds", type=int, help="workers per (loop, case) [quick 3, 5]")
    ap.add_argument("--repeats", type=int, help="samples per worker [quick 3, 5]")
    ap.add_argument("--procs", type=int, default=PROCS, help="processes per sample")
    ap.add_argument("--mib", type=int, default=MIB, help="MiB per pipe sample")
    ap.add_argument("--output", type=Path, help="JSON [bench/results/process-*.json]")
    return ap.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--worker"]:
        loop_name, case, size, repeats = argv[1:5]
        print(json.dumps(run_worker(loop_name, case, int(size), int(repeats))))
        return 0

    args = parse_args(argv)
    started = time.perf_counter()
    loops, probes = micro.select_loops(micro.parse_names(args.loops, list(LOOPS), "loops"))
    settings: dict[str, Any] = {
        "mode": "quick" if args.quick else "default",
        "rounds": args.rounds or (3 if args.quick else 5),
        "repeats": args.repeats or (3 if args.quick else 5),
        "procs": args.procs,
        "mib": args.mib,
    }
    runnable = [name for name in loops if probes[name]["ok"]]
    cells = run_all(
        runnable,
        {"spawn": args.procs, "pipe": args.mib},
        settings["rounds"],
        settings["repeats"],
    )
    for per_loop in cells.values():  # loops that are not installed: empty cells
        for name in loops:
            per_loop.setdefault(name, Cell())
    machine = micro.machine_info()
    settings["wall_s"] = round(time.perf_counter() - started, 1)

    out = args.output or RESULTS_DIR / f"process-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": machine,
        "settings": settings,
        "loops": probes,
        "results": {
            case: {n: {"error": c.error, "samples": c.samples} for n, c in per.items()}
            for case, per in cells.items()
        },
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")

    print(micro.describe(machine, probes))
    print(render(table_rows(loops, cells, probes), args.markdown))
    print("\n" + FOOTNOTE.replace("{mib}", str(args.mib)).replace("{procs}", str(args.procs)))
    failures = [(c, n, x.error) for c, per in cells.items() for n, x in per.items() if x.error]
    for case, name, error in failures:
        print(f"FAILED {name} {case}: {error}", file=sys.stderr)
    print(f"\nwall time {settings['wall_s']} s; raw results: {out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
