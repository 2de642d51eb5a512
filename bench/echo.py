"""Side-by-side TCP echo benchmark of asyncio event loops (GUIDE §5, issue 3).

A compiled load generator (bench/echo, Rust) drives echo servers written
three ways -- `sock_*` (loop.sock_accept/sock_recv/sock_sendall), streams
(asyncio.start_server) and an asyncio.Protocol (loop.create_server) -- on
stock asyncio, uvloop and ferroloop, plus a native Rust echo server as the
floor, at 1 KiB, 10 KiB and 100 KiB. The server runs pinned to core 0, the
load generator to core 1; every echoed byte is verified. Reported per cell:
the server's CPU µs per request (utime+stime from /proc/<pid>/stat over the
measured window), req/s, p50/p99 latency, and CPU ratios to the floor and to
uvloop.

    .venv/bin/python bench/echo.py --quick          # about a minute
    .venv/bin/python bench/echo.py --markdown       # longer run, Markdown tables
    .venv/bin/python bench/echo.py --loops asyncio,uvloop --styles protocol --sizes 1024
    .venv/bin/python bench/echo.py --selftest       # loadgen must catch broken servers
    .venv/bin/python bench/echo.py --styles sock --sizes 1024,102400 --read-size 4096,65536,262144

`--read-size` is what the sock_* and streams servers ask for per read (a list: each value
is its own row; the protocol server reads what its transport reads).

Internal entry point (used by the driver, handy for debugging one server):

    python bench/echo.py --serve LOOP STYLE [--read-size N]   # prints the port, serves until killed
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from _machine import NOISY_PCT, Progress, cpu_us, loop_versions, machine_busy_us, machine_info

HERE = Path(__file__).resolve().parent
PKG_DIR = HERE / "echo"
TARGET_DIR = PKG_DIR / "target"
BIN_DIR = TARGET_DIR / "release"
RESULTS_DIR = HERE / "results"

HOST = "127.0.0.1"  # loopback only
SERVER_CORE = 0
LOADGEN_CORE = 1
# What the sock_* and streams servers ask for per read by default (asyncio's transport reads
# 256 KiB); --read-size sets it.
READ_SIZE = 256 * 1024
# Styles whose server reads with an explicit size (the protocol server reads what its
# transport reads).
SIZED_STYLES = ("sock", "streams")
SIZES = (1024, 10 * 1024, 100 * 1024)
STYLES = ("sock", "streams", "protocol")
FAULTS = ("flip", "drop", "extra", "close", "stall")

# name -> (module, factory attribute)
LOOPS: dict[str, tuple[str, str]] = {
    "asyncio": ("asyncio", "new_event_loop"),
    "uvloop": ("uvloop", "new_event_loop"),
    "ferroloop": ("ferroloop", "new_event_loop"),
}

EXIT_NOT_IMPLEMENTED = 3
EXIT_NOT_INSTALLED = 4
STARTUP_TIMEOUT_S = 15.0
LOADGEN_STALL_TIMEOUT_S = 5.0

# Targets from issue 3, on CPU per request: (style, size or None for all) -> (baseline, max)
TARGETS: dict[tuple[str, int | None], tuple[str, float]] = {
    ("protocol", None): ("floor", 1.08),
    ("streams", None): ("uvloop", 0.75),
    ("sock", 1024): ("uvloop", 0.50),
    ("sock", 100 * 1024): ("uvloop", 0.80),
}


# --------------------------------------------------------------------------
# Servers (run in a subprocess: `echo.py --serve LOOP STYLE`)
# --------------------------------------------------------------------------


def _fatal_not_implemented(exc: BaseException) -> None:
    sys.stderr.write(f"NOT_IMPLEMENTED: {type(exc).__name__}: {exc}\n")
    sys.stderr.flush()
    os._exit(EXIT_NOT_IMPLEMENTED)


def _listening_socket() -> socket.socket:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(128)
    lsock.setblocking(False)
    return lsock


def _announce(port: int) -> None:
    print(port, flush=True)


async def serve_sock(loop: asyncio.AbstractEventLoop, read_size: int = READ_SIZE) -> None:
    async def client(conn: socket.socket) -> None:
        try:
            with conn:
                while True:
                    data = await loop.sock_recv(conn, read_size)
                    if not data:
                        return
                    await loop.sock_sendall(conn, data)
        except NotImplementedError as exc:
            _fatal_not_implemented(exc)
        except ConnectionError:
            pass

    lsock = _listening_socket()
    _announce(lsock.getsockname()[1])
    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        # asyncio/uvloop transports set TCP_NODELAY themselves; raw sockets need it here.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(client(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def serve_streams(loop: asyncio.AbstractEventLoop, read_size: int = READ_SIZE) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(read_size)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except NotImplementedError as exc:
            _fatal_not_implemented(exc)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, HOST, 0)
    _announce(server.sockets[0].getsockname()[1])
    await server.serve_forever()


class EchoProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class FaultyEchoProtocol(EchoProtocol):
    """An echo server that misbehaves once per connection after ~50 kB (--selftest)."""

    after = 50_000

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.echoed = 0
        self.broken = False

    def data_received(self, data: bytes) -> None:
        if self.broken and self.fault == "stall":
            return
        self.echoed += len(data)
        if self.broken or self.echoed < self.after:
            self.transport.write(data)
            return
        self.broken = True
        mid = len(data) // 2
        if self.fault == "flip":
            self.transport.write(data[:mid] + bytes([data[mid] ^ 0x01]) + data[mid + 1 :])
        elif self.fault == "drop":
            self.transport.write(data[:mid] + data[mid + 1 :])
        elif self.fault == "extra":
            self.transport.write(data + b"!")
        elif self.fault == "close":
            self.transport.write(data[:mid])
            self.transport.close()
        # "stall": write nothing, ever again.


async def serve_protocol(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol] = EchoProtocol
) -> None:
    server = await loop.create_server(factory, HOST, 0)
    _announce(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def serve(loop_name: str, style: str, read_size: int = READ_SIZE) -> int:
    module_name, attr = LOOPS[loop_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        sys.stderr.write(f"NOT_INSTALLED: {exc}\n")
        return EXIT_NOT_INSTALLED
    loop: asyncio.AbstractEventLoop = getattr(module, attr)()
    asyncio.set_event_loop(loop)

    def on_error(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, NotImplementedError):
            _fatal_not_implemented(exc)
        lp.default_exception_handler(context)

    loop.set_exception_handler(on_error)
    main: Any
    if style == "sock":
        main = serve_sock(loop, read_size)
    elif style == "streams":
        main = serve_streams(loop, read_size)
    elif style == "protocol":
        main = serve_protocol(loop)
    elif style.startswith("fault-") and style[6:] in FAULTS:
        fault = style[6:]
        main = serve_protocol(loop, lambda: FaultyEchoProtocol(fault))
    else:
        sys.stderr.write(f"unknown style {style!r}\n")
        return 2
    try:
        loop.run_until_complete(main)
    except NotImplementedError as exc:
        _fatal_not_implemented(exc)
    return 0


# --------------------------------------------------------------------------
# Driver helpers
# --------------------------------------------------------------------------


class LineReader:
    """Reads lines from a pipe with a timeout (no threads)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.fd = pipe.fileno()
        self.buf = b""
        self.eof = False

    def readline(self, timeout: float) -> str | None:
        """A line without its newline; None on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.eof = True
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")


def pinned(core: int) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return pin


def cpu_ns_schedstat(pid: int) -> int:
    """Run time of all the process's threads in ns (/proc/<pid>/task/*/schedstat).

    Finer-grained than the clock ticks of /proc/<pid>/stat; recorded in the
    JSON as a cross-check. Threads that exited in the window are missed.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def binaries_stale() -> bool:
    bins = [BIN_DIR / "loadgen", BIN_DIR / "floor"]
    if not all(b.exists() for b in bins):
        return True
    built = min(b.stat().st_mtime for b in bins)
    sources = [PKG_DIR / "Cargo.toml", PKG_DIR / "Cargo.lock", *PKG_DIR.glob("src/**/*.rs")]
    return any(s.exists() and s.stat().st_mtime > built for s in sources)


def build(force: bool = False) -> None:
    if not force and not binaries_stale():
        return
    cmd = [
        "cargo",
        "build",
        "--release",
        "--manifest-path",
        str(PKG_DIR / "Cargo.toml"),
        "--target-dir",
        str(TARGET_DIR),
    ]
    print("building:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


class Server:
    """An echo server subprocess pinned to SERVER_CORE."""

    def __init__(
        self, kind: str, loop_name: str | None, style: str | None, read_size: int | None = None
    ) -> None:
        if kind == "floor":
            cmd = [str(BIN_DIR / "floor"), "--port", "0"]
        else:
            assert loop_name is not None and style is not None
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", loop_name, style]
            if read_size is not None:
                cmd += ["--read-size", str(read_size)]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            preexec_fn=pinned(SERVER_CORE),
        )
        assert self.proc.stdout is not None
        self.reader = LineReader(self.proc.stdout)
        self.port: int | None = None

    def start(self) -> int | None:
        line = self.reader.readline(STARTUP_TIMEOUT_S)
        if line is not None and line.strip().isdigit():
            self.port = int(line)
        return self.port

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def status(self) -> str:
        """'not implemented' / 'not installed' / 'failed', from exit code and stderr."""
        rc = self.proc.poll()
        err = self.stderr_text()
        if rc == EXIT_NOT_IMPLEMENTED or "NotImplementedError" in err or "NOT_IMPLEMENTED" in err:
            return "not implemented"
        if rc == EXIT_NOT_INSTALLED:
            return "not installed"
        return "failed"

    def detail(self) -> str:
        err = self.stderr_text().strip().splitlines()
        rc = self.proc.poll()
        last = err[-1] if err else ""
        return f"server exit={rc}: {last}" if rc is not None else f"server running: {last}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@dataclass
class Params:
    connections: int
    warmup: float
    seconds: float
    rounds: int


@dataclass
class Sample:
    status: str  # "ok", "not implemented", "not installed", "failed"
    detail: str = ""
    requests: int = 0
    seconds: float = 0.0
    req_per_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    max_us: float = 0.0
    bytes_verified: int = 0
    server_cpu_us: float = 0.0
    server_cpu_ns_schedstat: int = 0
    cpu_us_per_req: float = 0.0
    loadgen_cpu_us: float = 0.0
    # Busy CPU of the machine in the window beyond server + loadgen, in % of one core:
    # other processes (a disturbed measurement) plus unattributed interrupt time.
    other_cpu_pct: float = 0.0


@dataclass
class Cell:
    size: int
    kind: str  # "floor" or "<loop>/<style>"
    loop: str | None
    style: str | None
    read_size: int | None = None  # the server's read size (SIZED_STYLES only)
    samples: list[Sample] = field(default_factory=list)

    @property
    def label(self) -> str:
        """kind, with the read size when the server has one ("ferroloop/sock@64K")."""
        if self.read_size is None:
            return self.kind
        return f"{self.kind}@{fmt_size(self.read_size).replace(' KiB', 'K')}"

    @property
    def best(self) -> Sample | None:
        ok = [s for s in self.samples if s.status == "ok"]
        if ok:
            return min(ok, key=lambda s: s.cpu_us_per_req)
        return self.samples[-1] if self.samples else None


def run_loadgen(port: int, size: int, p: Params, server_pid: int, timeout: float) -> Sample:
    cmd = [
        str(BIN_DIR / "loadgen"),
        "--port",
        str(port),
        "--size",
        str(size),
        "--connections",
        str(p.connections),
        "--warmup",
        str(p.warmup),
        "--seconds",
        str(p.seconds),
        "--timeout",
        str(timeout),
        "--sync",
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=pinned(LOADGEN_CORE),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    reader = LineReader(proc.stdout)
    sample = Sample(status="failed")
    try:
        line = reader.readline(p.warmup + timeout + 30)
        if line == "ready":
            cpu0, sched0 = cpu_us(server_pid), cpu_ns_schedstat(server_pid)
            lg0, busy0 = cpu_us(proc.pid), machine_busy_us()
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            line = reader.readline(p.seconds + timeout + 30)
            if line is not None and line.startswith("{"):
                # Sampled while loadgen holds its connections open and idle.
                cpu1, sched1 = cpu_us(server_pid), cpu_ns_schedstat(server_pid)
                lg1, busy1 = cpu_us(proc.pid), machine_busy_us()
                sample.server_cpu_us = cpu1 - cpu0
                sample.server_cpu_ns_schedstat = sched1 - sched0
                sample.loadgen_cpu_us = lg1 - lg0
                other = (busy1 - busy0) - sample.server_cpu_us - sample.loadgen_cpu_us
                sample.other_cpu_pct = max(other, 0.0) / (p.seconds * 1e6) * 100
        if line is not None and line.startswith("{"):
            result = json.loads(line)
            if result.get("errors", 1) == 0:
                sample.status = "ok"
                for key in ("requests", "seconds", "req_per_s", "p50_us", "p99_us", "max_us"):
                    setattr(sample, key, result[key])
                sample.bytes_verified = result["bytes_verified"]
                if sample.requests:
                    sample.cpu_us_per_req = sample.server_cpu_us / sample.requests
            else:
                sample.detail = str(result.get("error", "loadgen reported errors"))
        elif line is None:
            sample.detail = "loadgen produced no result in time"
        else:
            sample.detail = f"unexpected loadgen output {line!r}"
    except (OSError, ValueError, KeyError) as exc:
        sample.detail = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stdout.close()
        proc.stderr.close()
    if sample.status != "ok" and not sample.detail:
        sample.detail = err.splitlines()[-1] if err else f"loadgen exit={proc.returncode}"
    if sample.status == "ok" and proc.returncode != 0:
        sample.status, sample.detail = "failed", f"loadgen exit={proc.returncode}: {err}"
    return sample


def measure(cell: Cell, p: Params) -> Sample:
    if cell.loop is not None and importlib.util.find_spec(LOOPS[cell.loop][0]) is None:
        return Sample(status="not installed")
    server = Server(cell.kind, cell.loop, cell.style, cell.read_size)
    try:
        port = server.start()
        if port is None:
            if server.proc.poll() is None:
                server.proc.terminate()
            try:
                server.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
            return Sample(status=server.status(), detail=server.detail())
        sample = run_loadgen(port, cell.size, p, server.proc.pid, LOADGEN_STALL_TIMEOUT_S)
        if sample.status != "ok":
            time.sleep(0.2)  # let a dying server finish writing its reason
            status = server.status()
            if status != "failed" or server.proc.poll() is not None:
                sample.status = status
                sample.detail = f"{sample.detail}; {server.detail()}"
        elif server.proc.poll() is not None:
            sample.status, sample.detail = "failed", server.detail()
        return sample
    finally:
        server.stop()


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def fmt_size(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def ratio(a: Sample | None, b: Sample | None) -> float | None:
    if a is None or b is None or a.status != "ok" or b.status != "ok" or not b.cpu_us_per_req:
        return None
    return a.cpu_us_per_req / b.cpu_us_per_req


def fr(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}×"


def find(
    cells: Sequence[Cell], size: int, kind: str, read_size: int | None = None
) -> Sample | None:
    for c in cells:
        if c.size == size and c.kind == kind and c.read_size == read_size:
            return c.best
    return None


def render(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cols: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def main_table(cells: Sequence[Cell], markdown: bool) -> str:
    headers = ["size", "server", "CPU µs/req", "×floor", "×uvloop", "req/s", "p50 µs", "p99 µs"]
    rows: list[list[str]] = []
    for c in cells:
        s = c.best
        if s is None:
            continue
        name = c.kind if c.style is None else f"{c.style} · {c.loop}"
        if c.read_size is not None:
            name += f" · read {fmt_size(c.read_size)}"
        if s.status != "ok":
            rows.append([fmt_size(c.size), name, s.status, "", "", "", "", ""])
            continue
        floor = find(cells, c.size, "floor")
        uv = find(cells, c.size, f"uvloop/{c.style}", c.read_size) if c.style else None
        rows.append(
            [
                fmt_size(c.size),
                name,
                f"{s.cpu_us_per_req:.2f}",
                "1.00×" if c.kind == "floor" else fr(ratio(s, floor)),
                "" if c.style is None or c.loop == "uvloop" else fr(ratio(s, uv)),
                f"{s.req_per_s:,.0f}",
                f"{s.p50_us:.0f}",
                f"{s.p99_us:.0f}",
            ]
        )
    return render(headers, rows, markdown)


def target_table(
    cells: Sequence[Cell], sizes: Sequence[int], read_sizes: Sequence[int], markdown: bool
) -> str:
    headers = ["size", "case", "target", "ferroloop", "uvloop", "asyncio", "met"]
    rows: list[list[str]] = []
    measured = {c.style for c in cells}
    for style in (s for s in STYLES if s in measured):
        for size, rs in (
            (size, rs) for size in sizes for rs in (read_sizes if style in SIZED_STYLES else [None])
        ):
            target = TARGETS.get((style, size)) or TARGETS.get((style, None))
            if target is None:
                continue
            base_name, limit = target
            base = (
                find(cells, size, "floor")
                if base_name == "floor"
                else find(cells, size, f"uvloop/{style}", rs)
            )
            got = {
                lp: ratio(find(cells, size, f"{lp}/{style}", rs), base)
                for lp in ("ferroloop", "uvloop", "asyncio")
            }
            fer = find(cells, size, f"ferroloop/{style}", rs)
            met = (
                "—" if got["ferroloop"] is None else ("yes" if got["ferroloop"] <= limit else "no")
            )
            rows.append(
                [
                    fmt_size(size),
                    style if rs is None else f"{style}, read {fmt_size(rs)}",
                    f"≤ {limit:.2f}× {base_name}",
                    fr(got["ferroloop"])
                    if got["ferroloop"] is not None
                    else (fer.status if fer is not None else "—"),
                    "" if base_name == "uvloop" else fr(got["uvloop"]),
                    fr(got["asyncio"]),
                    met,
                ]
            )
    return render(headers, rows, markdown)


# --------------------------------------------------------------------------
# Self-test: the load generator must catch broken servers.
# --------------------------------------------------------------------------


def selftest() -> int:
    p = Params(connections=4, warmup=0.0, seconds=1.0, rounds=1)
    failures = 0
    for style in ("protocol", *(f"fault-{f}" for f in FAULTS)):
        server = Server("python", "asyncio", style)
        try:
            port = server.start()
            if port is None:
                print(f"{style:14} server did not start: {server.detail()}")
                failures += 1
                continue
            sample = run_loadgen(port, 10 * 1024, p, server.proc.pid, timeout=1.0)
        finally:
            server.stop()
        caught = sample.status != "ok"
        expect_fail = style != "protocol"
        good = caught == expect_fail
        failures += not good
        verdict = "ok  " if good else "BAD "
        what = f"caught: {sample.detail}" if caught else f"passed, {sample.requests} requests"
        print(f"{verdict} {style:14} {what}")
    print("selftest:", "all good" if not failures else f"{failures} unexpected result(s)")
    return 1 if failures else 0


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def make_cells(
    sizes: Sequence[int], loops: Sequence[str], styles: Sequence[str], read_sizes: Sequence[int]
) -> list[Cell]:
    cells: list[Cell] = []
    for size in sizes:
        cells.append(Cell(size, "floor", None, None))
        for style in styles:
            for rs in read_sizes if style in SIZED_STYLES else [None]:
                for lp in loops:
                    cells.append(Cell(size, f"{lp}/{style}", lp, style, rs))
    return cells


def rotated(items: Sequence[Cell], k: int) -> Iterator[Cell]:
    k %= max(len(items), 1)
    yield from items[k:]
    yield from items[:k]


def parse_list(value: str, allowed: Sequence[str]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed)}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--serve", nargs=2, metavar=("LOOP", "STYLE"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="short run (about a minute)")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--selftest", action="store_true", help="check loadgen catches bad echoes")
    ap.add_argument("--loops", default=",".join(LOOPS), help="comma list (default: all)")
    ap.add_argument("--styles", default=",".join(STYLES), help="comma list: sock,streams,protocol")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma list of bytes")
    ap.add_argument(
        "--read-size",
        default=str(READ_SIZE),
        help=f"comma list of bytes the sock_* and streams servers read at once (default {READ_SIZE})",
    )
    ap.add_argument("--no-floor", action="store_true", help="skip the native floor server")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--warmup", type=float, help="seconds (quick 0.3, default 1)")
    ap.add_argument("--seconds", type=float, help="measured seconds (quick 1.5, default 4)")
    ap.add_argument("--rounds", type=int, help="runs per cell, best kept (quick 1, default 3)")
    ap.add_argument("--output", type=Path, help="JSON results file")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo")
    args = ap.parse_args(argv)

    if args.serve:
        loop_name, style = args.serve
        if loop_name not in LOOPS:
            ap.error(f"unknown loop {loop_name}")
        return serve(loop_name, style, int(args.read_size))

    if not args.no_build:
        build()
    if args.selftest:
        return selftest()

    loops = parse_list(args.loops, list(LOOPS))
    styles = parse_list(args.styles, STYLES)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    read_sizes = [int(s) for s in args.read_size.split(",") if s.strip()]
    if not read_sizes or min(read_sizes) <= 0:
        ap.error("--read-size needs positive sizes")
    p = Params(
        connections=args.connections,
        warmup=args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0),
        seconds=args.seconds if args.seconds is not None else (1.5 if args.quick else 4.0),
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else 3),
    )
    cells = make_cells(sizes, loops, styles, read_sizes)
    if args.no_floor:
        cells = [c for c in cells if c.kind != "floor"]

    t_start = time.monotonic()
    versions = loop_versions(LOOPS)
    machine: dict[str, Any] = machine_info() | {"loops": versions}
    print(
        f"# echo benchmark {machine['date']}: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"Python {machine['python']}"
    )
    print("# loops: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"# {p.connections} connections, warm-up {p.warmup:g} s, measured {p.seconds:g} s, "
        f"{p.rounds} round(s) (best CPU/req kept); server on core {SERVER_CORE}, "
        f"loadgen on core {LOADGEN_CORE}; every echoed byte verified",
        flush=True,
    )
    progress = Progress(p.rounds * len(cells))
    for r in range(p.rounds):
        for size in sizes:
            group = [c for c in cells if c.size == size]
            for cell in rotated(group, r):
                s = measure(cell, p)
                cell.samples.append(s)
                shown = (
                    f"{s.cpu_us_per_req:8.2f} µs/req {s.req_per_s:10,.0f} req/s "
                    f"p50 {s.p50_us:.0f} p99 {s.p99_us:.0f} µs, other CPU {s.other_cpu_pct:.0f}%"
                    if s.status == "ok"
                    else f"{s.status}: {s.detail[:150]}"
                )
                progress.step(f"round {r + 1}: {fmt_size(size):>7} {cell.label:24} {shown}")

    wall = time.monotonic() - t_start
    print()
    print("## Server CPU per request (best of rounds), throughput and latency")
    print()
    print(main_table(cells, args.markdown))
    print()
    print("## Targets (issue 3), ratios of server CPU per request")
    print()
    print(target_table(cells, sizes, read_sizes, args.markdown))
    print()
    failed = [c for c in cells if c.best is not None and c.best.status == "failed"]
    for c in cells:
        b = c.best
        if b is not None and b.status != "ok":
            print(f"- {fmt_size(c.size)} {c.label}: {b.status}: {b.detail[:300]}")
    noisy = [
        (s.other_cpu_pct, f"{fmt_size(c.size)} {c.label}")
        for c in cells
        for s in c.samples
        if s.status == "ok" and s.other_cpu_pct > NOISY_PCT
    ]
    if noisy:
        worst = max(noisy)
        print(
            f"\nWARNING: {len(noisy)} measurement(s) ran beside other busy processes "
            f"(CPU beyond server + loadgen > {NOISY_PCT:g}% of a core; worst {worst[0]:.0f}% "
            f"at {worst[1]}): figures are disturbed, rerun on a quiet machine."
        )
    verified = sum(s.bytes_verified for c in cells for s in c.samples)
    print(f"\nbytes verified: {verified:,}; wall time {wall:.1f} s")

    out = args.output or RESULTS_DIR / f"echo-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "params": asdict(p),
                "wall_seconds": wall,
                "cells": [asdict(c) for c in cells],
                "medians_cpu_us_per_req": {
                    f"{c.size}:{c.label}": statistics.median(
                        s.cpu_us_per_req for s in c.samples if s.status == "ok"
                    )
                    for c in cells
                    if any(s.status == "ok" for s in c.samples)
                },
            },
            indent=1,
        )
    )
    print(f"raw results: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
