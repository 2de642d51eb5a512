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

Counted mode (the issue's spec: "10⁶ connections (a third aborted by the client with a reset)
and 10⁸ callbacks on one loop: RSS growth ≤ 5 MB, no fd left, no byte lost"), selected by
`--connections N` or `--callbacks M` (defaults 1,000,000 and 100,000,000 in that mode): the
same streams and `Protocol` echo servers, a fresh process per loop, and a client
(`soak.py --counted-client ...`, stock asyncio) that opens N connections in all,
`--concurrency` (200) at a time, alternating servers. Each sends one payload (64 B, 1,500 B or
16 KiB, its connection number in the first 8 bytes) and reads the echo back; once the whole
echo is back and equal, connection i closes normally (FIN) or, for every i % 3 == 2, sets
SO_LINGER to on with a 0 s timeout and closes, which sends a RST. Meanwhile the server's loop
runs M callbacks as `call_soon` chains started in batches on every iteration (`Pump`). A
warm-up (2% of both counts, at least 20,000 connections) runs first; the server then samples
RSS, fds and tasks ("before"), runs the counted phase, waits for every connection to be
closed on its side, and samples again ("after"), the idle client still attached both times.
A loop FAILS unless: the client completed N connections with N // 3 resets and no connect
error, timeout or short or wrong echo; the server accepted N connections and saw N // 3
ECONNRESETs (`connection_lost(ConnectionResetError)`, or the stream reader raising it) and no
other connection error; every byte the client sent was echoed back to it, and the server
received exactly as many bytes as the client sent (an aborting client resets only after its
echo is complete, so nothing it sent can be in flight); the M callbacks all ran; no error
reached the exception handler; RSS grew by at most `--max-growth` MB (5, MB = 2**20 bytes);
and the fds and tasks after equal those before.

    .venv/bin/python bench/soak.py                          # 60 s per loop, ~3.5 min
    .venv/bin/python bench/soak.py --seconds 120 --loops ferroloop
    .venv/bin/python bench/soak.py --connections 1000000 --callbacks 100000000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import gc
import importlib
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
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
# the counted soak
CONNECTIONS = 1_000_000
CALLBACKS = 100_000_000
CONCURRENCY = 200  # client connections at a time
BACKLOG = 1024  # the servers' listen backlog (a SYN dropped on overflow costs a 1 s retry)
CHAINS_PER_STEP = 100
CHAIN_LENGTH = 10
MAX_GROWTH_MB = 5.0  # MB = 2**20 bytes
CONNECTION_TIMEOUT_S = 30.0
WARM_CONNECTIONS = 20_000
PROGRESS_S = 30.0


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
        if isinstance(exc, ConnectionResetError):
            self.counts["proto_resets"] += 1
        elif exc is not None:
            self.counts["proto_conn_errors"] += 1
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
        except ConnectionResetError:
            counts["stream_resets"] += 1
        except ConnectionError:
            counts["stream_conn_errors"] += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()  # the transport's connection_lost has run
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


async def start_servers(counts: Counter[str], backlog: int = 100) -> tuple[list[Any], list[int]]:
    """The streams, protocol and UDP servers: (what to close, their ports)."""
    loop = asyncio.get_running_loop()
    streams = await asyncio.start_server(stream_handler(counts), HOST, 0, backlog=backlog)
    proto = await loop.create_server(lambda: EchoProtocol(counts), HOST, 0, backlog=backlog)
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


def run_on(loop_name: str, main: Coroutine[Any, Any, Any]) -> None:
    """Runs `main` on a new loop of `loop_name` and prints its result (a dataclass) as JSON."""
    loop = importlib.import_module(LOOPS[loop_name][0]).new_event_loop()
    try:
        result = loop.run_until_complete(main)
    finally:
        loop.close()
    print(json.dumps(asdict(result)))


# -- the counted soak (--connections / --callbacks): the server ---------------------------


class Pump:
    """`call_soon` chains in batches: `step` reschedules itself on every loop iteration and
    starts up to CHAINS_PER_STEP chains of CHAIN_LENGTH callbacks (each link schedules the
    next with `call_soon`), so about a thousand callbacks are ready on every iteration and
    the iteration's I/O runs between them, until `run(total)`'s callbacks have all run."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ran = self.left = self.target = 0
        self.done: asyncio.Future[None] = loop.create_future()

    def run(self, total: int) -> asyncio.Future[None]:
        self.target, self.left = self.ran + total, total
        self.done = self.loop.create_future()
        if total:
            self.loop.call_soon(self.step)
        else:
            self.done.set_result(None)
        return self.done

    def step(self) -> None:
        for _ in range(CHAINS_PER_STEP):
            n = min(CHAIN_LENGTH, self.left)
            if not n:
                return
            self.left -= n
            self.loop.call_soon(self.link, n)
        self.loop.call_soon(self.step)

    def link(self, rest: int) -> None:
        self.ran += 1
        if rest > 1:
            self.loop.call_soon(self.link, rest - 1)
        elif self.ran == self.target:  # the last callback to run always ends a chain
            self.done.set_result(None)


@dataclass
class CountedResult:
    loop: str
    before: Sample
    after: Sample
    server: dict[str, int]
    client: dict[str, int]
    warm_client: dict[str, int]
    callbacks: int
    traffic_s: float
    wall_s: float


def warm_counts(connections: int, callbacks: int) -> tuple[int, int]:
    """The warm-up before the RSS baseline: 2% of the callbacks and of the connections, and
    at least WARM_CONNECTIONS connections (stock asyncio's RSS rises 5-6 MB over its first
    10,000 connections and then stays: that is its working set, not growth)."""
    return min(connections, max(WARM_CONNECTIONS, connections // 50)), callbacks // 50


async def counted(loop_name: str, connections: int, callbacks: int, concurrency: int) -> Any:
    loop = asyncio.get_running_loop()
    counts: Counter[str] = Counter()
    loop.set_exception_handler(count_errors(counts))
    servers, ports = await start_servers(counts, backlog=BACKLOG)
    warm_n, warm_m = warm_counts(connections, callbacks)
    args = [",".join(map(str, ports[:2])), str(warm_n), str(connections), str(concurrency)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--counted-client",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    pump = Pump(loop)
    _, line = await asyncio.gather(pump.run(warm_m), proc.stdout.readline())
    warm_client = json.loads(line)
    await drain(counts)
    t0 = time.monotonic()
    before, at_start = sample(t0), Counter(counts)
    proc.stdin.write(b"go\n")
    start = time.monotonic()
    pumped = pump.run(callbacks)
    client_counts = json.loads(await proc.stdout.readline())
    traffic_s = time.monotonic() - start
    await pumped
    wall_s = time.monotonic() - start
    await drain(counts)
    after = sample(t0)  # the client is still there, idle, as at `before`
    proc.stdin.write(b"exit\n")
    if await proc.wait() != 0:
        raise RuntimeError(f"client exited with {proc.returncode}")
    for server in servers:
        server.close()
    server_counts = {k: n - at_start[k] for k, n in counts.items() if k != "open"}
    return CountedResult(
        loop_name,
        before,
        after,
        server_counts,
        client_counts,
        warm_client,
        pump.ran - warm_m,
        traffic_s,
        wall_s,
    )


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


# -- the counted soak: the client (stock asyncio) -----------------------------------------


def counted_payload(phase: int, i: int) -> bytes:
    """Connection i's payload: its phase and number, then a pattern, 64 B to 16 KiB."""
    size = len(PAYLOADS[(i // 3) % len(PAYLOADS)])  # resets (i % 3 == 2) get every size
    return phase.to_bytes(1, "little") + i.to_bytes(7, "little") + PATTERN[: size - 8]


PATTERN = bytes(range(256)) * 64


class EchoClient(asyncio.Protocol):
    """Sends its payload, and once the whole echo is back closes (FIN) or resets (RST)."""

    def __init__(self, payload: bytes, reset: bool) -> None:
        self.payload, self.reset = payload, reset
        self.chunks: list[bytes] = []
        self.received = 0
        self.echoed = self.timed_out = False
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[Exception | None] = loop.create_future()
        self.timer = loop.call_later(CONNECTION_TIMEOUT_S, self.expire)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        if self.received < len(self.payload):
            return
        self.echoed = b"".join(self.chunks) == self.payload
        if self.reset:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()  # the socket's close sends a RST, not a FIN
        else:
            self.transport.close()

    def expire(self) -> None:
        self.timed_out = True
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.closed.set_result(exc)


async def connect_some(
    ports: list[int], phase: int, numbers: Iterator[int], counts: Counter[str]
) -> None:
    """Takes connection numbers from `numbers` (shared with the other tasks) until none left."""
    loop = asyncio.get_running_loop()
    for i in numbers:
        payload, reset = counted_payload(phase, i), i % 3 == 2
        try:
            _, proto = await loop.create_connection(
                functools.partial(EchoClient, payload, reset), HOST, ports[i % 2]
            )
        except OSError:
            counts["connect_errors"] += 1
            continue
        exc = await proto.closed
        counts["connections"] += 1
        counts["bytes_sent"] += len(payload)
        if proto.echoed and exc is None and not proto.timed_out:
            counts["bytes_echoed"] += len(payload)
            counts["resets_sent" if reset else "closed"] += 1
        else:
            counts["lost"] += 1
            counts["timed_out"] += proto.timed_out


async def connect_all(ports: list[int], phase: int, n: int, concurrency: int) -> dict[str, int]:
    counts: Counter[str] = Counter()
    numbers = iter(range(n))
    start = time.monotonic()
    tasks = [connect_some(ports, phase, numbers, counts) for _ in range(min(concurrency, n))]
    progress = asyncio.ensure_future(report_progress(counts, n, start))
    await asyncio.gather(*tasks)
    progress.cancel()
    return dict(counts)


async def report_progress(counts: Counter[str], n: int, start: float) -> None:
    while True:
        await asyncio.sleep(PROGRESS_S)
        done = counts["connections"]
        print(
            f"  client: {done:,}/{n:,} connections, {time.monotonic() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )


async def counted_client(ports: list[int], warm_n: int, n: int, concurrency: int) -> None:
    print(json.dumps(await connect_all(ports, 0, warm_n, concurrency)), flush=True)
    sys.stdin.readline()  # "go": the server has sampled its baseline
    print(json.dumps(await connect_all(ports, 1, n, concurrency)), flush=True)
    sys.stdin.readline()  # "exit": the server has sampled its end


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


def spawn_worker(*argv: object) -> dict[str, Any]:
    """Runs `soak.py *argv` (a server process) and returns the JSON of its last line."""
    cmd = [sys.executable, __file__, *map(str, argv)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(out.splitlines()[-1]))


def run_worker(loop_name: str, args: argparse.Namespace) -> WorkerResult:
    raw = spawn_worker("--worker", loop_name, args.seconds, args.interval, args.warmup)
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


def print_header(loops: list[str], mode: str) -> None:
    versions = loop_versions({name: LOOPS[name] for name in loops})
    print(f"# soak run, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Linux {platform.release()}")
    print("loops: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(mode)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, help="seconds before the slope (default: 1/4)")
    ap.add_argument("--max-slope", type=float, default=MAX_SLOPE_KIB_MIN, help="KiB/min")
    counted_mode = ap.add_argument_group("counted soak (either option selects it)")
    counted_mode.add_argument(
        "--connections", type=int, help=f"connections in all (default {CONNECTIONS:,})"
    )
    counted_mode.add_argument(
        "--callbacks", type=int, help=f"callbacks in all (default {CALLBACKS:,})"
    )
    counted_mode.add_argument("--concurrency", type=int, default=CONCURRENCY)
    counted_mode.add_argument("--max-growth", type=float, default=MAX_GROWTH_MB, help="MB")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--counted-worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--counted-client", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker or args.counted_worker:  # a server process
        name, *numbers = args.worker or args.counted_worker
        if args.worker:
            run_on(name, soak(name, *map(float, numbers)))
        else:
            run_on(name, counted(name, *map(int, numbers)))
        return 0
    if args.client or args.counted_client:  # a client process
        ports_arg, *numbers = args.client or args.counted_client
        ports = [int(p) for p in ports_arg.split(",")]
        if args.client:
            print(json.dumps(asyncio.run(client(ports, float(numbers[0])))))
        else:
            asyncio.run(counted_client(ports, *map(int, numbers)))
        return 0
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    unknown = set(loops) - set(LOOPS)
    if unknown:
        raise SystemExit(f"unknown loops: {', '.join(sorted(unknown))}")
    if args.connections is not None or args.callbacks is not None:
        return drive_counted(args, loops)
    return drive(args, loops)


def drive(args: argparse.Namespace, loops: list[str]) -> int:
    if args.warmup is None:
        args.warmup = args.seconds / 4
    print_header(
        loops,
        f"{args.seconds:g} s per loop, sample every {args.interval:g} s, slope after "
        f"{args.warmup:g} s, limit {args.max_slope:g} KiB/min\n",
    )

    def one(name: str) -> tuple[str, list[str]]:
        result = run_worker(name, args)
        verdict = judge(result, args.seconds, args.max_slope)
        return table_row(result, verdict, args.seconds), verdict.problems

    return run_loops(loops, TABLE_HEAD, one)


def run_loops(loops: list[str], head: str, one: Callable[[str], tuple[str, list[str]]]) -> int:
    """`one(loop)` (its table row and what failed) for each loop in turn, then the table; the
    exit status (1 if any loop failed)."""
    rows, failed = [], []
    columns = head.splitlines()[0].count("|") - 1
    for name in loops:
        start = time.monotonic()
        try:
            row, problems = one(name)
        except subprocess.CalledProcessError as exc:
            problems = [f"worker exited with {exc.returncode}"]
            row = f"| {name} |" + " |" * (columns - 2) + f" FAIL: {problems[0]} |"
        print(f"{name}: {time.monotonic() - start:.0f} s {row}", file=sys.stderr, flush=True)
        rows.append(row)
        if problems:
            failed.append(name)
    print(head)
    print("\n".join(rows))
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


# -- the counted soak: the driver ---------------------------------------------------------


def judge_counted(r: CountedResult, args: argparse.Namespace) -> list[str]:
    """What failed (nothing: the loop passed); see bench/README.md, "Counted soak"."""
    n, c, s = args.connections, r.client, r.server
    resets = n // 3
    accepted = s.get("stream_conns", 0) + s.get("proto_conns", 0)
    seen = s.get("stream_resets", 0) + s.get("proto_resets", 0)
    received = s.get("stream_bytes", 0) + s.get("proto_bytes", 0)
    sent = c.get("bytes_sent", 0)
    problems = [
        f"{what}: {got:,}, expected {want:,}"
        for what, got, want in (
            ("client connections", c.get("connections", 0), n),
            ("client resets", c.get("resets_sent", 0), resets),
            ("client clean closes", c.get("closed", 0), n - resets),
            ("server accepted", accepted, n),
            ("server resets seen", seen, resets),
            ("bytes echoed to the client", c.get("bytes_echoed", 0), sent),
            ("bytes received by the server", received, sent),
            ("callbacks", r.callbacks, args.callbacks),
        )
        if got != want
    ]
    for what in ("connect_errors", "lost", "timed_out"):
        if c.get(what):
            problems.append(f"client {what}: {c[what]:,}")
    for what in ("stream_conn_errors", "proto_conn_errors", "errors"):
        if s.get(what):
            problems.append(f"server {what}: {s[what]:,}")
    growth = r.after.rss - r.before.rss
    if growth > args.max_growth * 2**20:
        problems.append(f"RSS grew {growth / 2**20:.2f} MB > {args.max_growth:g}")
    for what in ("fds", "tasks"):
        base, end = getattr(r.before, what), getattr(r.after, what)
        if base != end:
            problems.append(f"{what}: {end} at the end, {base} before")
    return problems


def counted_row(r: CountedResult, problems: list[str]) -> str:
    c, s, b, a = r.client, r.server, r.before, r.after
    cells = [
        r.loop,
        f"{c.get('connections', 0):,} / {s.get('stream_conns', 0) + s.get('proto_conns', 0):,}",
        f"{c.get('resets_sent', 0):,} / {s.get('stream_resets', 0) + s.get('proto_resets', 0):,}",
        f"{r.callbacks:,}",
        f"{c.get('bytes_sent', 0):,} / {c.get('bytes_echoed', 0):,} / "
        f"{s.get('stream_bytes', 0) + s.get('proto_bytes', 0):,}",
        f"{b.rss / 2**20:.2f} → {a.rss / 2**20:.2f} ({(a.rss - b.rss) / 2**20:+.2f})",
        f"{b.fds} → {a.fds}",
        f"{b.tasks} → {a.tasks}",
        f"{r.wall_s:,.1f} ({r.traffic_s:,.1f})",
        "ok" if not problems else "FAIL: " + "; ".join(problems),
    ]
    return "| " + " | ".join(cells) + " |"


COUNTED_HEAD = (
    "| loop | connections client / server | resets client / seen by server | callbacks "
    "| bytes sent / echoed / received by server | RSS MB before → after (growth) "
    "| fds before → after | tasks before → after | wall s (traffic s) | verdict |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def run_counted_worker(loop_name: str, args: argparse.Namespace) -> CountedResult:
    raw = spawn_worker(
        "--counted-worker", loop_name, args.connections, args.callbacks, args.concurrency
    )
    before, after = Sample(**raw.pop("before")), Sample(**raw.pop("after"))
    return CountedResult(before=before, after=after, **raw)


def drive_counted(args: argparse.Namespace, loops: list[str]) -> int:
    if args.connections is None:
        args.connections = CONNECTIONS
    if args.callbacks is None:
        args.callbacks = CALLBACKS
    print_header(
        loops,
        f"{args.connections:,} connections ({args.connections // 3:,} reset by the client), "
        f"{args.callbacks:,} callbacks, {args.concurrency} connections at a time; "
        f"warm-up {'{:,} connections and {:,} callbacks'.format(*warm_counts(args.connections, args.callbacks))}; "
        f"RSS growth limit {args.max_growth:g} MB (MB = 2^20 bytes)\n",
    )

    def one(name: str) -> tuple[str, list[str]]:
        result = run_counted_worker(name, args)
        problems = judge_counted(result, args)
        return counted_row(result, problems), problems

    return run_loops(loops, COUNTED_HEAD, one)


if __name__ == "__main__":
    sys.exit(main())
