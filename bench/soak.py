"""Soak run (GUIDE §5: "a soak run must show no growth"): a server with steady mixed traffic on
stock asyncio, uvloop and ferroloop side by side, each watched for memory, fd and task growth.

Each loop gets a fresh server process (`soak.py --worker LOOP ...`) that serves, on 127.0.0.1:
a TCP echo server written with asyncio streams (`start_server`), a TCP echo server written as a
`Protocol` (`create_server`), a UDP echo endpoint, a self-rescheduling `call_later` timer that
also creates and cancels a far timer on every tick, and a thread posting `call_soon_threadsafe`
callbacks. A client process (`soak.py --client ...`, always on stock asyncio so it is the same
for every loop) keeps persistent connections busy on both TCP servers, opens and closes short
connections continuously (one echo each, to both servers in turn) and bounces datagrams off the
UDP endpoint, for `--seconds`.

Every `--interval` seconds the server samples itself: RSS (VmRSS from /proc/self/status), open
fds (/proc/self/fd), objects tracked by the gc and `len(asyncio.all_tasks())`. The figure is the
least-squares slope of RSS over time after `--warmup` seconds, in KiB per minute. A loop FAILS
if that slope exceeds `--max-slope` (default 512 KiB/min, see bench/README.md), if the open
fds or the tasks, once the client has gone and every connection is closed, differ from the
baseline taken before the client started, or if any kind of traffic did less than one
operation per second (a soak that does nothing is a bug). The exit status is non-zero if any
loop failed.

    .venv/bin/python bench/soak.py                          # 60 s per loop, ~3.5 min
    .venv/bin/python bench/soak.py --seconds 120 --loops ferroloop
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
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from _machine import cpu_model, loop_versions

HOST = "127.0.0.1"  # loopback only
LOOPS: dict[str, tuple[str, ...]] = {
    "asyncio": ("asyncio",),
    "uvloop": ("uvloop",),
    "ferroloop": ("ferroloop",),
}
MAX_SLOPE_KIB_MIN = 512.0
PERSISTENT = 8  # persistent connections per TCP server
SHORT_WORKERS = 4  # client tasks opening and closing short connections
UDP_WORKERS = 2
PAYLOADS = (b"x" * 64, b"y" * 1500, b"z" * 16384)
TIMER_TICK_S = 0.002
THREADSAFE_PERIOD_S = 0.001
DRAIN_TIMEOUT_S = 15.0
UDP_REPLY_TIMEOUT_S = 1.0


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    objects: int
    tasks: int


@dataclass
class WorkerResult:
    loop: str
    samples: list[Sample]
    baseline: Sample
    final: Sample
    server: dict[str, int]
    client: dict[str, int]
    warmup: float


# -- the server (one subprocess per loop) -------------------------------------------------


def sample(t0: float) -> Sample:
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return Sample(
        t=time.monotonic() - t0,
        rss=rss,
        fds=len(os.listdir("/proc/self/fd")),
        objects=len(gc.get_objects()),
        tasks=len(asyncio.all_tasks()),
    )


class EchoProtocol(asyncio.Protocol):
    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.counts["proto_conns"] += 1
        self.counts["open"] += 1

    def data_received(self, data: bytes) -> None:
        self.counts["proto_bytes"] += len(data)
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counts["open"] -= 1


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # stock asyncio's datagram transport of 3.11 is no asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counts["udp_datagrams"] += 1
        self.transport.sendto(data, addr)


def stream_handler(counts: Counter[str]) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["stream_conns"] += 1
        counts["open"] += 1
        try:
            while data := await reader.read(65536):
                counts["stream_bytes"] += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            counts["open"] -= 1

    return handle


class Ticker:
    """A timer that reschedules itself, creating and cancelling a far timer on every tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counts: Counter[str]) -> None:
        self.loop, self.counts = loop, counts
        self.handle = loop.call_later(TIMER_TICK_S, self.tick)

    def tick(self) -> None:
        self.counts["timers"] += 1
        self.loop.call_later(60.0, self.tick).cancel()
        self.handle = self.loop.call_later(TIMER_TICK_S, self.tick)

    def stop(self) -> None:
        self.handle.cancel()


def count_errors(counts: Counter[str]) -> Any:
    """An exception handler that counts what reaches it (a soak with errors fails)."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        counts["errors"] += 1
        loop.default_exception_handler(context)

    return handler


def post_threadsafe(
    loop: asyncio.AbstractEventLoop, counts: Counter[str], stop: threading.Event
) -> None:
    def callback() -> None:
        counts["threadsafe"] += 1

    while not stop.wait(THREADSAFE_PERIOD_S):
        loop.call_soon_threadsafe(callback)


async def start_servers(counts: Counter[str]) -> tuple[list[Any], list[int]]:
    """The streams, protocol and UDP servers: (what to close, their ports)."""
    loop = asyncio.get_running_loop()
    streams = await asyncio.start_server(stream_handler(counts), HOST, 0)
    proto = await loop.create_server(lambda: EchoProtocol(counts), HOST, 0)
    udp, _ = await loop.create_datagram_endpoint(lambda: UdpEcho(counts), local_addr=(HOST, 0))
    ports = [s.sockets[0].getsockname()[1] for s in (streams, proto)]
    ports.append(udp.get_extra_info("sockname")[1])
    return [streams, proto, udp], ports


async def run_client(ports: list[int], seconds: float) -> dict[str, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        ",".join(map(str, ports)),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"client exited with {proc.returncode}")
    return dict(json.loads(out))


async def sample_until(
    done: asyncio.Future[Any], t0: float, interval: float, samples: list[Sample]
) -> None:
    while not done.done():
        await asyncio.wait([done], timeout=interval)
        samples.append(sample(t0))


async def drain(counts: Counter[str]) -> None:
    """Wait until the server side of every connection is closed."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while counts["open"] > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    gc.collect()
    await asyncio.sleep(0.2)  # let closed transports finish their callbacks


class Background:
    """The timer and the `call_soon_threadsafe` thread, running until `stop()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counts: Counter[str]) -> None:
        self.stopping = threading.Event()
        self.poster = threading.Thread(target=post_threadsafe, args=(loop, counts, self.stopping))
        self.poster.start()
        self.ticker = Ticker(loop, counts)

    def stop(self) -> None:
        self.ticker.stop()
        self.stopping.set()
        self.poster.join()


async def soak(loop_name: str, seconds: float, interval: float, warmup: float) -> WorkerResult:
    counts: Counter[str] = Counter()
    asyncio.get_running_loop().set_exception_handler(count_errors(counts))
    servers, ports = await start_servers(counts)
    gc.collect()
    t0 = time.monotonic()
    samples = [sample(t0)]
    background = Background(asyncio.get_running_loop(), counts)
    client = asyncio.ensure_future(run_client(ports, seconds))
    await sample_until(client, t0, interval, samples)
    background.stop()
    await drain(counts)
    final = sample(t0)  # before the servers close: the baseline has their sockets
    for server in servers:
        server.close()
    server_counts = {k: n for k, n in counts.items() if k != "open"}
    return WorkerResult(
        loop_name, samples, samples[0], final, server_counts, client.result(), warmup
    )


def worker(loop_name: str, seconds: float, interval: float, warmup: float) -> None:
    loop = importlib.import_module(LOOPS[loop_name][0]).new_event_loop()
    try:
        result = loop.run_until_complete(soak(loop_name, seconds, interval, warmup))
    finally:
        loop.close()
    print(json.dumps(asdict(result)))


# -- the client (stock asyncio, one subprocess per server) --------------------------------


async def echo_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> None:
    writer.write(payload)
    if await reader.readexactly(len(payload)) != payload:
        raise RuntimeError("echo mismatch")


async def persistent(port: int, deadline: float, counts: Counter[str]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = 0
    while time.monotonic() < deadline:
        payload = PAYLOADS[i % len(PAYLOADS)]
        await echo_once(reader, writer, payload)
        counts["round_trips"] += 1
        counts["bytes"] += len(payload)
        i += 1
    writer.close()
    await writer.wait_closed()


async def short_lived(ports: list[int], deadline: float, counts: Counter[str]) -> None:
    i = 0
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection(HOST, ports[i % len(ports)])
        await echo_once(reader, writer, PAYLOADS[0])
        writer.close()
        await writer.wait_closed()
        counts["short_conns"] += 1
        i += 1


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(data)


async def udp_pingpong(port: int, deadline: float, counts: Counter[str]) -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        UdpClient, remote_addr=(HOST, port), family=socket.AF_INET
    )
    while time.monotonic() < deadline:
        proto.reply = loop.create_future()
        transport.sendto(PAYLOADS[1])
        try:
            await asyncio.wait_for(proto.reply, UDP_REPLY_TIMEOUT_S)
            counts["udp_round_trips"] += 1
        except TimeoutError:
            counts["udp_lost"] += 1
    transport.close()


async def client(ports: list[int], seconds: float) -> dict[str, int]:
    stream_port, proto_port, udp_port = ports
    deadline = time.monotonic() + seconds
    counts: Counter[str] = Counter()
    jobs = [
        persistent(port, deadline, counts)
        for port in (stream_port, proto_port)
        for _ in range(PERSISTENT)
    ]
    jobs += [short_lived([stream_port, proto_port], deadline, counts) for _ in range(SHORT_WORKERS)]
    jobs += [udp_pingpong(udp_port, deadline, counts) for _ in range(UDP_WORKERS)]
    await asyncio.gather(*jobs)
    return dict(counts)


# -- the driver ---------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over t (t in seconds), per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (y - mean_y) for t, y in points)
    return 60.0 * cov / var if var else 0.0


@dataclass
class Verdict:
    rss_slope_kib: float
    objects_slope: float
    problems: list[str] = field(default_factory=list)


def judge(r: WorkerResult, seconds: float, max_slope: float) -> Verdict:
    steady = [s for s in r.samples if s.t >= r.warmup]
    v = Verdict(
        slope_per_minute([(s.t, s.rss / 1024) for s in steady]),
        slope_per_minute([(s.t, s.objects) for s in steady]),
    )
    if len(steady) < 5:
        v.problems.append(f"only {len(steady)} samples after the warm-up")
    if v.rss_slope_kib > max_slope:
        v.problems.append(f"RSS grows {v.rss_slope_kib:.0f} KiB/min > {max_slope:.0f}")
    for what in ("fds", "tasks"):
        base, end = getattr(r.baseline, what), getattr(r.final, what)
        if base != end:
            v.problems.append(f"{what}: {end} at the end, {base} at the baseline")
    if r.server.get("errors"):
        v.problems.append(f"{r.server['errors']} errors reached the exception handler")
    work = {**r.server, **{f"client_{k}": n for k, n in r.client.items()}}
    for key in WORK_KEYS:
        if work.get(key, 0) < seconds:
            v.problems.append(f"too little work: {key} = {work.get(key, 0)}")
    return v


WORK_KEYS = (
    "stream_conns",
    "proto_conns",
    "stream_bytes",
    "proto_bytes",
    "udp_datagrams",
    "timers",
    "threadsafe",
    "client_round_trips",
    "client_short_conns",
    "client_udp_round_trips",
)


def run_worker(loop_name: str, args: argparse.Namespace) -> WorkerResult:
    cmd = [sys.executable, __file__, "--worker", loop_name]
    cmd += [str(args.seconds), str(args.interval), str(args.warmup)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    raw = json.loads(out.splitlines()[-1])
    samples = [Sample(**s) for s in raw.pop("samples")]
    baseline, final = Sample(**raw.pop("baseline")), Sample(**raw.pop("final"))
    return WorkerResult(samples=samples, baseline=baseline, final=final, **raw)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def table_row(r: WorkerResult, v: Verdict, seconds: float) -> str:
    c, s = r.client, r.server
    cells = [
        r.loop,
        f"{c.get('round_trips', 0) / seconds:,.0f}",
        f"{c.get('short_conns', 0) / seconds:,.0f}",
        f"{c.get('udp_round_trips', 0) / seconds:,.0f}",
        f"{(s.get('stream_bytes', 0) + s.get('proto_bytes', 0)) / seconds / 2**20:.1f}",
        f"{s.get('timers', 0):,} / {s.get('threadsafe', 0):,}",
        f"{mib(r.baseline.rss)} → {mib(max(x.rss for x in r.samples))} → {mib(r.final.rss)}",
        f"{v.rss_slope_kib:+.0f}",
        f"{r.baseline.objects:,} → {r.final.objects:,} ({v.objects_slope:+.0f}/min)",
        f"{r.baseline.fds} / {max(x.fds for x in r.samples)} / {r.final.fds}",
        f"{r.baseline.tasks} / {max(x.tasks for x in r.samples)} / {r.final.tasks}",
        "ok" if not v.problems else "FAIL: " + "; ".join(v.problems),
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = (
    "| loop | TCP echoes/s | short conns/s | UDP echoes/s | MiB/s echoed | timers / threadsafe "
    "| RSS MiB base → max → end | RSS slope KiB/min | gc objects base → end (slope) "
    "| fds base / max / end | tasks base / max / end | verdict |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def print_header(args: argparse.Namespace, loops: list[str]) -> None:
    versions = loop_versions({name: LOOPS[name] for name in loops})
    print(f"# soak run, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Linux {platform.release()}")
    print("loops: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"{args.seconds:g} s per loop, sample every {args.interval:g} s, slope after "
        f"{args.warmup:g} s, limit {args.max_slope:g} KiB/min\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, help="seconds before the slope (default: 1/4)")
    ap.add_argument("--max-slope", type=float, default=MAX_SLOPE_KIB_MIN, help="KiB/min")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, *numbers = args.worker
        worker(name, *map(float, numbers))
        return 0
    if args.client:
        ports = [int(p) for p in args.client[0].split(",")]
        print(json.dumps(asyncio.run(client(ports, float(args.client[1])))))
        return 0
    return drive(args)


def drive(args: argparse.Namespace) -> int:
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    unknown = set(loops) - set(LOOPS)
    if unknown:
        raise SystemExit(f"unknown loops: {', '.join(sorted(unknown))}")
    if args.warmup is None:
        args.warmup = args.seconds / 4
    print_header(args, loops)
    rows, failed = [], []
    for name in loops:
        try:
            result = run_worker(name, args)
        except subprocess.CalledProcessError as exc:
            rows.append(f"| {name} |" + " |" * 10 + f" FAIL: worker exited with {exc.returncode} |")
            failed.append(name)
            continue
        verdict = judge(result, args.seconds, args.max_slope)
        rows.append(table_row(result, verdict, args.seconds))
        if verdict.problems:
            failed.append(name)
    print(TABLE_HEAD)
    print("\n".join(rows))
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
