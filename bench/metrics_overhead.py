"""What ferroloop's metrics cost: the same benchmarks at each metrics level, in one run.

    python bench/metrics_overhead.py              # micro cases and HTTP, about 6 minutes
    python bench/metrics_overhead.py --quick      # about 2 minutes
    python bench/metrics_overhead.py --no-http

Each (level, case) runs in a fresh subprocess with ``FERROLOOP_METRICS=<level>``, the way a
user picks the level for a program: the micro cases through ``micro.py --worker ferroloop``
(CPU ns per operation, minimum over the samples), HTTP through ``http.py``'s uvicorn + wrk
measurement (req/s and server CPU per request, best round). Levels are rotated every round
to spread drift. The table gives each level's figure and its ratio to level "off".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent
LEVELS = ("off", "loop", "callbacks")
MICRO_CASES = ("call_soon", "timers_fire", "sleep0", "tasks_gather", "future_pingpong", "queue")


def load(name: str) -> ModuleType:
    """A bench module by file name (`http.py` would shadow the standard library's `http`)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def micro_sample(level: str, case: str, n: int, repeats: int) -> float:
    """CPU ns per operation of one micro case at one level (minimum of `repeats`)."""
    env = dict(os.environ, FERROLOOP_METRICS=level)
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "micro.py"),
            "--worker",
            "ferroloop",
            case,
            str(n),
            str(repeats),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    samples = json.loads(out.splitlines()[-1])["samples"]
    return min(s["cpu_ns"] for s in samples) / n


def rotated(items: tuple[str, ...], k: int) -> list[str]:
    k %= len(items)
    return list(items[k:] + items[:k])


def run_micro(rounds: int, repeats: int, scale: int) -> dict[tuple[str, str], float]:
    micro = load("micro")
    best: dict[tuple[str, str], float] = {}
    total, done, start = rounds * len(MICRO_CASES) * len(LEVELS), 0, time.monotonic()
    for r in range(rounds):
        for case in MICRO_CASES:
            n = micro.CASES[case].quick_n * scale
            for level in rotated(LEVELS, r):
                ns = micro_sample(level, case, n, repeats)
                key = (level, case)
                best[key] = min(best.get(key, ns), ns)
                done += 1
                elapsed = time.monotonic() - start
                print(
                    f"[{done}/{total}] {level:9} {case:16} {ns:8.1f} ns ({elapsed:.0f}s elapsed)",
                    file=sys.stderr,
                )
    return best


def run_http(rounds: int, seconds: int) -> dict[str, tuple[float, float]]:
    """Best req/s per level, with the server CPU per request of that round."""
    http = load("http")
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        appdir = Path(tmp)
        (appdir / "app.py").write_text(http.APP)
        for r in range(rounds):
            for level in rotated(LEVELS, r):
                os.environ["FERROLOOP_METRICS"] = level
                try:
                    result = http.measure("ferroloop", appdir, seconds, 32)
                finally:
                    del os.environ["FERROLOOP_METRICS"]
                if result.error:
                    raise SystemExit(f"http at level {level}: {result.error}")
                print(
                    f"[http {r + 1}/{rounds}] {level:9} {result.rps:9.0f} req/s "
                    f"{result.cpu_us_per_req:6.1f} us/req",
                    file=sys.stderr,
                )
                if result.rps > best.get(level, (0.0, 0.0))[0]:
                    best[level] = (result.rps, result.cpu_us_per_req)
    return best


def row(title: str, values: list[float], digits: int) -> str:
    """A table row: the figure per level, then each level's ratio to level "off"."""
    figures = " | ".join(f"{v:.{digits}f}" for v in values)
    ratios = " | ".join(f"{v / values[0]:.3f}x" for v in values[1:])
    return f"| {title} | {figures} | {ratios} |"


def report(micro: dict[tuple[str, str], float], http: dict[str, tuple[float, float]]) -> None:
    print("| case | " + " | ".join(LEVELS) + " | loop / off | callbacks / off |")
    print("|---|" + "---|" * (len(LEVELS) + 2))
    for case in MICRO_CASES:
        if ("off", case) in micro:
            print(row(f"{case} (CPU ns/op)", [micro[(lv, case)] for lv in LEVELS], 1))
    if http:
        print(row("HTTP req/s", [http[lv][0] for lv in LEVELS], 0))
        print(row("HTTP server CPU us/req", [http[lv][1] for lv in LEVELS], 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--rounds", type=int, help="micro rounds (quick 2, default 4)")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    micro = run_micro(rounds, repeats=3, scale=1 if args.quick else 2)
    http = {} if args.no_http else run_http(2 if args.quick else 3, 4 if args.quick else 8)
    print(
        f"# ferroloop metrics overhead, {time.strftime('%Y-%m-%d')}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; micro: {rounds} rounds"
    )
    report(micro, http)
    return 0


if __name__ == "__main__":
    sys.exit(main())
