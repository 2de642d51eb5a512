"""Fault injection: ferroloop's own system calls fail on demand, and each fault gives
asyncio's observable behaviour with nothing lost, duplicated or leaked.

The faults come from the syscall layer (`src/sys.rs`) of a test build made with the
`fault-injection` cargo feature (`scripts/faults.sh`, run by `scripts/test.sh`); release
builds have no such hook, and these tests skip there. Every errno is one the kernel can
return for that call; what asyncio does with it is `selector_events.py`'s code:

* EINTR: retried (PEP 475), invisible to the program;
* EAGAIN and short writes: what the kernel did not take is queued and sent when writable;
* ECONNRESET on a read, EPIPE on a write: `_fatal_error` with an OSError, which asyncio
  does not report to the exception handler, then `connection_lost(exc)`;
* ENOBUFS on a datagram send: `protocol.error_received(exc)`, the endpoint stays open;
* EMFILE on `sock_accept`: the OSError is raised from the awaited call.

`epoll_wait` (src/event_loop/poller.rs) takes the same plans: EINTR there runs Python's
signal handlers, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket

import ferroloop
import pytest
from ferroloop import _ferroloop

pytestmark = [
    pytest.mark.ferroloop_only,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not hasattr(_ferroloop, "_inject_faults"),
        reason="built without the fault-injection feature (scripts/faults.sh runs these)",
    ),
]


@pytest.fixture
def floop():
    """A ferroloop loop, checked for fd leaks, with every planned fault cleared after."""
    before = set(os.listdir("/proc/self/fd"))
    loop = ferroloop.new_event_loop()
    handler_calls: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: handler_calls.append(ctx))
    loop.handler_calls = handler_calls  # type: ignore[attr-defined]
    try:
        yield loop
    finally:
        _ferroloop._clear_faults()
        loop.close()
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not leaked, f"fds left open: {sorted(leaked)}"


class Sink(asyncio.Protocol):
    """Collects what arrives and how the connection ended."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[BaseException | None] = []
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        if not self.done.done():
            self.done.set_result(None)


async def pair() -> tuple[asyncio.Transport, Sink, socket.socket]:
    """A native stream transport on one end of a socketpair; the other end, raw."""
    a, b = socket.socketpair()
    b.setblocking(False)
    transport, sink = await asyncio.get_running_loop().connect_accepted_socket(Sink, a)
    return transport, sink, b


async def drain_peer(peer: socket.socket, total: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < total:
        chunk = await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), 10)
        assert chunk, "peer saw EOF before all the data"
        got += chunk
    return bytes(got)


def payload(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (n // 32 + 1)


def test_short_writes_of_every_length_lose_nothing(floop):
    """Every short write from 1 to 64 bytes, then short vectored flushes: the peer gets
    exactly the bytes written, in order, once."""

    async def main() -> tuple[bytes, bytes]:
        transport, _, peer = await pair()
        sent = bytearray()
        for k in range(1, 65):
            data = payload(k)[: 64 + k]
            _ferroloop._inject_faults("write", partial=k)
            _ferroloop._inject_faults("write_vectored", partial=max(1, k // 2), count=3)
            transport.write(data)
            sent += data
        got = await drain_peer(peer, len(sent))
        assert transport.get_write_buffer_size() == 0
        transport.close()
        peer.close()
        return bytes(sent), got

    sent, got = floop.run_until_complete(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()


def test_eagain_storm_on_flush_delivers_everything(floop):
    """The kernel refuses the first write and 50 flushes in a row (EAGAIN): the data stays
    queued, counted by get_write_buffer_size, and arrives whole once sends succeed."""

    async def main() -> tuple[int, bytes, bytes]:
        transport, _, peer = await pair()
        data = payload(100_000)
        _ferroloop._inject_faults("write", errno=errno.EAGAIN)
        _ferroloop._inject_faults("write_vectored", errno=errno.EAGAIN, count=50)
        transport.write(data)
        queued = transport.get_write_buffer_size()
        got = await drain_peer(peer, len(data))
        transport.close()
        peer.close()
        return queued, data, got

    queued, data, got = floop.run_until_complete(main())
    assert queued == len(data)
    assert got == data


@pytest.mark.parametrize("op", ["read", "write", "write_vectored"])
def test_eintr_storm_is_invisible(floop, op):
    """1000 EINTRs on a call are retried (PEP 475): the stream is intact both ways and
    nothing reaches the protocol or the exception handler."""

    async def main() -> tuple[bytes, bytes, bytes, list]:
        transport, sink, peer = await pair()
        _ferroloop._inject_faults(op, errno=errno.EINTR, count=1000)
        out = payload(200_000)
        transport.write(out)
        back = payload(50_000)
        await asyncio.get_running_loop().sock_sendall(peer, back)
        got = await drain_peer(peer, len(out))
        while len(sink.data) < len(back):
            await asyncio.sleep(0.001)
        transport.close()
        await sink.done
        peer.close()
        return out + back, got + bytes(sink.data), bytes(sink.data), sink.lost

    expected, got, _, lost = floop.run_until_complete(main())
    assert got == expected
    assert lost == [None]
    assert floop.handler_calls == []


def test_connection_reset_on_read(floop):
    """ECONNRESET from a read: connection_lost(ConnectionResetError), not reported to the
    exception handler (asyncio only logs an OSError in debug mode), transport closed."""

    async def main() -> tuple[list, bool]:
        transport, sink, peer = await pair()
        _ferroloop._inject_faults("read", errno=errno.ECONNRESET)
        await asyncio.get_running_loop().sock_sendall(peer, b"x")
        await asyncio.wait_for(sink.done, 10)
        peer.close()
        return sink.lost, transport.is_closing()

    lost, closing = floop.run_until_complete(main())
    assert len(lost) == 1 and isinstance(lost[0], ConnectionResetError)
    assert lost[0].errno == errno.ECONNRESET
    assert closing
    assert floop.handler_calls == []


def test_broken_pipe_on_write(floop):
    """EPIPE from a write: connection_lost(BrokenPipeError); later writes are dropped and
    counted, as asyncio's are."""

    async def main() -> tuple[list, int]:
        transport, sink, peer = await pair()
        _ferroloop._inject_faults("write", errno=errno.EPIPE)
        transport.write(b"lost")
        await asyncio.wait_for(sink.done, 10)
        transport.write(b"after")
        peer.close()
        return sink.lost, transport.get_write_buffer_size()

    lost, size = floop.run_until_complete(main())
    assert len(lost) == 1 and isinstance(lost[0], BrokenPipeError)
    assert size == 0
    assert floop.handler_calls == []


def test_enobufs_on_sendto_goes_to_error_received(floop):
    """ENOBUFS from a datagram send: protocol.error_received(OSError); the endpoint stays
    open and the next datagram is delivered."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)

    class Proto(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.errors: list[BaseException] = []

        def error_received(self, exc: Exception) -> None:
            self.errors.append(exc)

    async def main() -> tuple[list, bool, bytes]:
        transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
            Proto, local_addr=("127.0.0.1", 0)
        )
        _ferroloop._inject_faults("sendto", errno=errno.ENOBUFS)
        transport.sendto(b"dropped", peer.getsockname())
        transport.sendto(b"second", peer.getsockname())
        data, _ = peer.recvfrom(100)
        closing = transport.is_closing()
        transport.close()
        await asyncio.sleep(0)
        return proto.errors, closing, data

    errors, closing, data = floop.run_until_complete(main())
    peer.close()
    assert len(errors) == 1 and errors[0].errno == errno.ENOBUFS
    assert not closing
    assert data == b"second"


def test_emfile_on_sock_accept(floop):
    """EMFILE from accept: `await loop.sock_accept(sock)` raises it; the next accept of the
    same pending connection succeeds."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    client = socket.create_connection(server.getsockname())

    async def main() -> tuple[BaseException | None, bool]:
        loop = asyncio.get_running_loop()
        _ferroloop._inject_faults("accept", errno=errno.EMFILE)
        raised = None
        try:
            await loop.sock_accept(server)
        except OSError as exc:
            raised = exc
        conn, _ = await asyncio.wait_for(loop.sock_accept(server), 10)
        ok = conn.fileno() >= 0
        conn.close()
        return raised, ok

    raised, ok = floop.run_until_complete(main())
    client.close()
    server.close()
    assert isinstance(raised, OSError) and raised.errno == errno.EMFILE
    assert ok


def test_eintr_storm_in_epoll_wait(floop):
    """EINTR from epoll_wait, 2000 times while timers, a stream and callbacks run: each one
    runs Python's signal handlers and the loop goes on; every timer fires once, the stream
    is intact."""

    async def main() -> tuple[list[int], bytes, bytes]:
        loop = asyncio.get_running_loop()
        transport, sink, peer = await pair()
        _ferroloop._inject_faults("epoll_wait", errno=errno.EINTR, count=2000)
        fired: list[int] = []
        for i in range(50):
            loop.call_later(0.001 * (i % 10), fired.append, i)
        out = payload(100_000)
        transport.write(out)
        got = await drain_peer(peer, len(out))
        await asyncio.sleep(0.05)
        transport.close()
        peer.close()
        return fired, out, got

    fired, out, got = floop.run_until_complete(main())
    assert sorted(fired) == list(range(50))
    assert got == out
