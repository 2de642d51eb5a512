"""Transport ping-pong: two `asyncio.Protocol` transports over a socketpair in one process,
a 1 KiB message bounced N times; prints µs per round trip. A quick check of the transport
read and write paths (issue 11's before/after runs), not one of the side-by-side benchmarks.

    taskset -c 1 .venv/bin/python bench/pingpong.py [N] [LOOP]   # LOOP: ferroloop (default),
                                                                # uvloop or asyncio
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from typing import Any

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
LOOP = sys.argv[2] if len(sys.argv) > 2 else "ferroloop"
MESSAGE = b"x" * 1024


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Client(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done, self.count, self.pending = done, 0, 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(MESSAGE)

    def data_received(self, data: bytes) -> None:
        self.pending += len(data)
        while self.pending >= len(MESSAGE):
            self.pending -= len(MESSAGE)
            self.count += 1
            if self.count == N:
                self.done.set_result(None)
                return
            self.transport.write(MESSAGE)


async def main() -> float:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    done: asyncio.Future[None] = loop.create_future()
    server, _ = await loop.create_connection(Echo, sock=a)
    started = time.perf_counter()
    client, _ = await loop.create_connection(lambda: Client(done), sock=b)
    await done
    elapsed = time.perf_counter() - started
    client.close()
    server.close()
    return elapsed


def new_loop() -> asyncio.AbstractEventLoop:
    if LOOP == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if LOOP == "asyncio":
        return asyncio.new_event_loop()
    import ferroloop

    return ferroloop.new_event_loop()


if __name__ == "__main__":
    loop = new_loop()
    try:
        seconds = loop.run_until_complete(main())
    finally:
        loop.close()
    print(f"{LOOP}: {seconds / N * 1e6:.2f} µs per round trip ({N} round trips of 1 KiB)")
