"""Side-by-side UDP echo benchmark of asyncio event loops (GUIDE §5, issue 3: datagrams).

An echo server (`create_datagram_endpoint` + a `DatagramProtocol` that sends every datagram
back with `transport.sendto(data, addr)`) runs on stock asyncio, uvloop and ferroloop in
turn, in a subprocess pinned to core 0; this process is the client, pinned to core 1: one
connected UDP socket keeping WINDOW datagrams in flight, checking every echoed byte. The
figure is the server's **CPU µs per datagram** (run time of all its threads from
/proc/<pid>/task/*/schedstat over the measured window; minimum over the rounds), beside
datagrams/s and ferroloop's ratios.

A second table times `transport.sendto(64 B, addr)` alone in one process per loop, with a
destination tuple the loop did not receive from (so no per-peer caching helps), to a
socket that never reads (the kernel drops what does not fit): CPU ns per call.

    .venv/bin/python bench/udp.py                       # 64 B and 1 KiB, about 30 s
    .venv/bin/python bench/udp.py --count 200000 --rounds 5 --markdown
    .venv/bin/python bench/udp.py --loops ferroloop,uvloop --sizes 64

Internal entry points: `udp.py --serve LOOP` (prints the port, echoes until killed) and
`udp.py --sendto LOOP N`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

HOST = "127.0.0.1"
SERVER_CORE, CLIENT_CORE = 0, 1
WINDOW = 16  # datagrams in flight: enough to keep the server busy, little risk of loss
LOOPS: dict[str, tuple[str, str]] = {
    "asyncio": ("asyncio", "new_event_loop"),
    "uvloop": ("uvloop", "new_event_loop"),
    "ferroloop": ("ferroloop", "new_event_loop"),
}


class BenchError(RuntimeError):
    """An echo was lost, late or wrong: the figure would measure nothing."""


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    module, factory = LOOPS[name]
    return getattr(importlib.import_module(module), factory)()  # type: ignore[no-any-return]


# -- server and sendto worker (subprocesses) ----------------------------------------------


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


def serve(loop_name: str) -> int:
    loop = new_loop(loop_name)
    transport, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(Echo, local_addr=(HOST, 0))
    )
    print(transport.get_extra_info("sockname")[1], flush=True)
    loop.run_forever()
    return 0


def sendto_worker(loop_name: str, n: int) -> int:
    os.sched_setaffinity(0, {SERVER_CORE})
    loop = new_loop(loop_name)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((HOST, 0))
    port = sink.getsockname()[1]
    payload = b"x" * 64

    def timed(sendto: Any) -> float:
        best = float("inf")
        for _ in range(5):
            addr = (HOST, port)  # a fresh tuple: not the object of a received address
            t0 = time.process_time_ns()
            for _ in range(n):
                sendto(payload, addr)
            best = min(best, (time.process_time_ns() - t0) / n)
        return best

    async def main() -> tuple[float, float]:
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(HOST, 0)
        )
        ns = timed(transport.sendto)
        if transport.get_write_buffer_size():
            raise BenchError("sendto queued datagrams: the kernel refused some")
        # The floor: the socket module's own sendto on a plain non-blocking socket.
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        plain.setblocking(False)
        floor = timed(plain.sendto)
        plain.close()
        transport.close()
        await asyncio.sleep(0)
        return ns, floor

    ns, floor = loop.run_until_complete(main())
    print(f"{ns:.1f} {floor:.1f}")
    loop.close()
    return 0


# -- driver -------------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """Run time of all the process's threads in ns (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


CLK_TCK = os.sysconf("SC_CLK_TCK")


def user_ns(pid: int) -> int:
    """User-mode CPU time of the process (utime in /proc/<pid>/stat, clock ticks), in ns:
    the loop's own work, without the kernel's UDP path."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[11]) * 1_000_000_000 // CLK_TCK


def payload(seq: int, size: int) -> bytes:
    return seq.to_bytes(8, "big") + bytes([seq % 251]) * (size - 8)


def echo_round(sock: socket.socket, size: int, first: int, count: int) -> None:
    """Sends datagrams first..first+count, WINDOW in flight, checking every echo."""
    end = first + count
    sent = first
    for _ in range(min(WINDOW, count)):
        sock.send(payload(sent, size))
        sent += 1
    for expected in range(first, end):
        try:
            data = sock.recv(size + 1)
        except TimeoutError as exc:
            raise BenchError(f"echo of datagram {expected} lost") from exc
        if data != payload(expected, size):
            raise BenchError(f"echo of datagram {expected} wrong or out of order")
        if sent < end:
            sock.send(payload(sent, size))
            sent += 1


def measure(loop_name: str, sizes: Sequence[int], count: int, rounds: int) -> dict[int, Any]:
    """(server µs per datagram, of which user mode, datagrams/s) of the round with the least
    CPU per datagram, for each size."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", loop_name],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CORE}),
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((HOST, port))
        sock.settimeout(2.0)
        results: dict[int, Any] = {}
        seq = 0
        for size in sizes:
            echo_round(sock, size, seq, count // 10)  # warm up
            seq += count // 10
            best: tuple[float, float, float] | None = None
            for _ in range(rounds):
                user0, cpu0, t0 = user_ns(server.pid), cpu_ns(server.pid), time.perf_counter()
                echo_round(sock, size, seq, count)
                wall, cpu = time.perf_counter() - t0, cpu_ns(server.pid) - cpu0
                user = user_ns(server.pid) - user0
                seq += count
                cell = (cpu / 1000 / count, user / 1000 / count, count / wall)
                if best is None or cell[0] < best[0]:
                    best = cell
            results[size] = best
        sock.close()
        return results
    finally:
        server.kill()
        server.wait()


def installed(name: str) -> bool:
    try:
        importlib.import_module(LOOPS[name][0])
    except ImportError:
        return False
    return True


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def render(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--serve"]:
        return serve(argv[1])
    if argv[:1] == ["--sendto"]:
        return sendto_worker(argv[1], int(argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--sizes", default="64,1024")
    parser.add_argument("--count", type=int, default=100_000, help="datagrams per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    loops = [n for n in args.loops.split(",") if n]
    sizes = [int(s) for s in args.sizes.split(",")]
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("needs 2 cores (server and client pinned apart)", file=sys.stderr)
        return 1
    os.sched_setaffinity(0, {CLIENT_CORE})

    echo: dict[str, dict[int, Any]] = {}
    per_call: dict[str, float] = {}
    floors: dict[str, float] = {}  # socket.sendto measured in each worker
    for name in loops:
        if not installed(name):
            print(f"{name}: not installed", file=sys.stderr)
            continue
        echo[name] = measure(name, sizes, args.count, args.rounds)
        out = subprocess.run(
            [sys.executable, __file__, "--sendto", name, str(args.count)],
            capture_output=True,
            text=True,
            check=True,
        )
        per_call[name], floors[name] = (float(x) for x in out.stdout.split())

    print(
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} | "
        f"{os.cpu_count()} CPUs | CPython {platform.python_version()} | "
        f"{args.count} datagrams per round, best of {args.rounds}, window {WINDOW}"
    )
    print("\nUDP echo: server CPU µs per datagram [of which user mode] (datagrams/s)\n")
    headers = ["size", *loops, "ferroloop/uvloop", "ferroloop/asyncio"]
    rows = []
    for size in sizes:
        cell = {n: echo.get(n, {}).get(size) for n in loops}
        us = {n: c[0] if c else None for n, c in cell.items()}
        rows.append(
            [
                f"{size} B",
                *(f"{c[0]:.2f} [{c[1]:.2f}] ({c[2]:,.0f}/s)" if c else "-" for c in cell.values()),
                ratio(us.get("ferroloop"), us.get("uvloop")),
                ratio(us.get("ferroloop"), us.get("asyncio")),
            ]
        )
    print(render(headers, rows, args.markdown))
    print(
        "\ntransport.sendto(64 B, (host, port)) alone: CPU ns per call "
        "(floor: a plain socket's sendto, best over the workers)\n"
    )
    row = [f"{per_call[n]:,.0f}" if n in per_call else "-" for n in loops]
    pc = {n: per_call.get(n) for n in loops}
    floor = min(floors.values()) if floors else None
    print(
        render(
            ["case", "floor", *loops, "ferroloop/uvloop", "ferroloop/floor"],
            [
                [
                    "sendto",
                    f"{floor:,.0f}" if floor else "-",
                    *row,
                    ratio(pc.get("ferroloop"), pc.get("uvloop")),
                    ratio(pc.get("ferroloop"), floor),
                ]
            ],
            args.markdown,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
