"""HTTP benchmark: uvicorn (httptools) serving a minimal raw ASGI app under `wrk`, on stock
asyncio, uvloop and ferroloop, side by side in one run (issue 3's HTTP case).

The server runs pinned to core 0, wrk to core 1; reported per loop: requests/s, p50/p99
latency (from wrk) and the server's CPU µs per request (utime+stime from /proc over the
measured window), with ratios to uvloop. The target: ferroloop >= 1.10x uvloop's req/s at
no more CPU per request.

    .venv/bin/python bench/http.py            # about 40 s
    .venv/bin/python bench/http.py --seconds 10 --connections 64
    .venv/bin/python bench/http.py --close    # a new connection per request

The figures also go to bench/results/http-<date>.json (gitignored; --output FILE to
choose), which bench/charts.py draws. Needs `wrk` (Debian package `wrk`) and uvicorn +
httptools in the venv (scripts/requirements.txt). Loopback only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _machine import (
    NOISY_PCT,
    Progress,
    children_cpu_us,
    cpu_us,
    machine_busy_us,
    machine_info,
)

SERVER_CORE, CLIENT_CORE = 0, 1
LOOPS = {"asyncio": "asyncio", "uvloop": "uvloop", "ferroloop": "ferroloop:new_event_loop"}
APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
"""
RESULTS_DIR = Path(__file__).resolve().parent / "results"
WRK_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


@dataclass
class Result:
    loop: str
    rps: float = 0.0
    requests: int = 0
    cpu_us_per_req: float = 0.0
    p50: str = "-"
    p99: str = "-"
    error: str = ""
    # Busy CPU of the machine in the measured window beyond the server and wrk, in % of one
    # core: other processes (a disturbed measurement) plus unattributed interrupt time.
    other_cpu_pct: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def wrk(port: int, seconds: int, connections: int, close: bool = False) -> str:
    # --close: every request on a new connection (`Connection: close`), so each one
    # also pays the server's accept, transport set-up and close.
    header = ["-H", "Connection: close"] if close else []
    cmd = [
        "taskset",
        "-c",
        str(CLIENT_CORE),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        *header,
        f"http://127.0.0.1:{port}/",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def parse_wrk(out: str, result: Result) -> None:
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if not (total and rps):
        raise ValueError(f"unexpected wrk output: {out!r}")
    if errors:
        raise ValueError(f"wrk reported errors: {errors.group(0)}")
    result.requests, result.rps = int(total.group(1)), float(rps.group(1))
    for pct, attr in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"\s{pct}(?:\.000)?%\s+(\S+)", out)
        if m:
            setattr(result, attr, m.group(1))


def measure(loop: str, appdir: Path, seconds: int, connections: int, close: bool) -> Result:
    result = Result(loop)
    port = free_port()
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(SERVER_CORE),
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            LOOPS[loop],
            "--http",
            "httptools",
            "--log-level",
            "error",
            "--no-access-log",
        ],
        cwd=appdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        if not wait_listening(port, server):
            result.error = (
                "server did not start: " + server.stderr.read().decode()[-300:]
                if server.poll() is not None and server.stderr
                else "server did not start"
            )
            return result
        wrk(port, 1, connections, close)  # warm-up
        before, busy, wrk_cpu = cpu_us(server.pid), machine_busy_us(), children_cpu_us()
        started = time.monotonic()
        out = wrk(port, seconds, connections, close)
        window_us = (time.monotonic() - started) * 1e6
        spent = cpu_us(server.pid) - before
        other = machine_busy_us() - busy - spent - (children_cpu_us() - wrk_cpu)
        result.other_cpu_pct = max(other, 0.0) / window_us * 100
        parse_wrk(out, result)
        result.cpu_us_per_req = spent / max(result.requests, 1)
    except (subprocess.CalledProcessError, ValueError, OSError) as exc:
        result.error = str(exc)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return result


def latency_us(text: str) -> float | None:
    """wrk's latency ("656.00us", "1.15ms", "2.01s") in µs; None for "-"."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * WRK_UNITS_US[m.group(2)] if m else None


def as_json(r: Result) -> dict[str, Any]:
    return asdict(r) | {"p50_us": latency_us(r.p50), "p99_us": latency_us(r.p99)}


def write_json(
    path: Path, args: argparse.Namespace, best: dict[str, Result], runs: list[Result]
) -> None:
    doc = {
        "benchmark": "http",
        "machine": machine_info(),
        "settings": {
            "seconds": args.seconds,
            "connections": args.connections,
            "connection_close": args.close,
            "rounds": args.rounds,
            "server_core": SERVER_CORE,
            "client_core": CLIENT_CORE,
            "figure": "best req/s of the rounds per loop; CPU = server utime+stime / requests",
        },
        "results": {loop: as_json(r) for loop, r in best.items()},
        "runs": [as_json(r) for r in runs],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def run_rounds(args: argparse.Namespace, appdir: Path) -> tuple[dict[str, Result], list[Result]]:
    """Every loop once per round (interleaved rounds spread drift); the best req/s per loop."""
    loops = args.loops.split(",")
    progress = Progress(args.rounds * len(loops))
    best: dict[str, Result] = {}
    runs: list[Result] = []
    for _ in range(args.rounds):
        for loop in loops:
            r = measure(loop, appdir, args.seconds, args.connections, args.close)
            runs.append(r)
            shown = f"FAILED: {r.error[:100]}" if r.error else f"{r.rps:,.0f} req/s"
            progress.step(
                f"{loop} {shown}, {r.cpu_us_per_req:.1f} µs CPU/req, "
                f"other CPU {r.other_cpu_pct:.0f}%"
            )
            if loop not in best or (not r.error and r.rps > best[loop].rps):
                best[loop] = r
    return best, runs


def report(results: list[Result]) -> None:
    base = next((r for r in results if r.loop == "uvloop" and not r.error), None)
    print(
        f"{'loop':<10} {'req/s':>9} {'CPU µs/req':>11} {'p50':>9} {'p99':>9} "
        f"{'req/s vs uvloop':>16} {'CPU vs uvloop':>14}"
    )
    for r in results:
        if r.error:
            print(f"{r.loop:<10} FAILED: {r.error}")
            continue
        rps_ratio = f"{r.rps / base.rps:.2f}x" if base else "-"
        cpu_ratio = f"{r.cpu_us_per_req / base.cpu_us_per_req:.2f}x" if base else "-"
        print(
            f"{r.loop:<10} {r.rps:>9,.0f} {r.cpu_us_per_req:>11.1f} {r.p50:>9} {r.p99:>9} "
            f"{rps_ratio:>16} {cpu_ratio:>14}"
        )
    ferro = next((r for r in results if r.loop == "ferroloop" and not r.error), None)
    if base and ferro:
        met = ferro.rps >= 1.10 * base.rps and ferro.cpu_us_per_req <= base.cpu_us_per_req
        print(f"target (>= 1.10x uvloop req/s at no more CPU/req): {'met' if met else 'not met'}")
    noisy = [r for r in results if not r.error and r.other_cpu_pct > NOISY_PCT]
    if noisy:
        worst = max(noisy, key=lambda r: r.other_cpu_pct)
        print(
            f"WARNING: {len(noisy)} measurement(s) ran beside other busy processes (CPU beyond "
            f"server + wrk > {NOISY_PCT:g}% of a core; worst {worst.other_cpu_pct:.0f}% at "
            f"{worst.loop}): req/s is disturbed, rerun on a quiet machine."
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument(
        "--close",
        action="store_true",
        help="a new connection per request (wrk sends `Connection: close`)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="best req/s of N rounds per loop")
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--output", type=Path, help="JSON path [bench/results/http-<date>.json]")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package `wrk`)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        appdir = Path(tmp)
        (appdir / "app.py").write_text(APP)
        best, runs = run_rounds(args, appdir)
    print(
        f"# uvicorn+httptools raw ASGI under wrk -t1 -c{args.connections} -d{args.seconds}s"
        f"{' with Connection: close' if args.close else ''}, "
        f"server on core {SERVER_CORE}, wrk on core {CLIENT_CORE}, best of {args.rounds}"
    )
    report(list(best.values()))
    out = args.output or RESULTS_DIR / f"http-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    write_json(out, args, best, runs)
    print(f"raw results: {out}", file=sys.stderr)
    return 1 if any(r.error for r in best.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
