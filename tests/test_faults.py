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
* ENOBUFS on a datagram send, any OSError from a datagram receive (ECONNREFUSED):
  `protocol.error_received(exc)`, the endpoint stays open;
* an error in a `sock_*` operation (EMFILE or ECONNABORTED on `sock_accept`, ECONNRESET
  on `sock_recv`, EPIPE on `sock_sendall`, ENOBUFS on `sock_sendto`...): the OSError is
  raised from the awaited call;
* EPIPE on a write pipe: `connection_lost(BrokenPipeError)` (`unix_events.py`).

`epoll_wait` (src/event_loop/poller.rs) takes the same plans: EINTR there runs Python's
signal handlers, and the loop goes on.

Covered: native stream transports, the `sock_*` operations, datagram transports (UDP and
Unix), read and write pipe transports, and TLS over a native TCP transport. Where a
scenario can be had without a plan (a kernel error, or a socket method that raises), it
also runs on asyncio's SelectorEventLoop (`anyloop`), and both loops must agree; the one
place they differ is shown by `test_sock_sendall_eagain_twice_on_a_ready_socket`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

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


@contextlib.contextmanager
def checked_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop], kind: str
) -> Iterator[asyncio.AbstractEventLoop]:
    """A new loop, checked for fd leaks, with every planned fault cleared after; the
    contexts it gives the exception handler are in `loop.handler_calls`."""
    before = set(os.listdir("/proc/self/fd"))
    loop = new_loop()
    handler_calls: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: handler_calls.append(ctx))
    loop.handler_calls = handler_calls  # type: ignore[attr-defined]
    loop.kind = kind  # type: ignore[attr-defined]
    try:
        yield loop
    finally:
        _ferroloop._clear_faults()
        loop.close()
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not leaked, f"fds left open: {sorted(leaked)}"


@pytest.fixture
def floop():
    """A ferroloop loop (see checked_loop)."""
    with checked_loop(ferroloop.new_event_loop, "ferroloop") as loop:
        yield loop


@pytest.fixture(params=["asyncio", "ferroloop"])
def anyloop(request):
    """Stock asyncio's SelectorEventLoop (the reference, no plans) or ferroloop, for the
    same scenario on both (see checked_loop)."""
    new_loop = asyncio.SelectorEventLoop if request.param == "asyncio" else ferroloop.new_event_loop
    with checked_loop(new_loop, request.param) as loop:
        yield loop


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


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Polls `condition` every millisecond; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


async def short_writes_left() -> int:
    """How much of a fresh 10 kB transport write a leftover short-write plan for `write`
    would cut (0 when every planned short write was taken): shows that a test's plans
    reached the code under test."""
    transport, _, peer = await pair()
    transport.write(bytes(10_000))
    left = transport.get_write_buffer_size()
    transport.close()
    peer.close()
    await asyncio.sleep(0)
    return left


def test_short_writes_of_every_length_lose_nothing(floop):
    """Every short write from 1 to 64 bytes, then short vectored flushes: the peer gets
    exactly the bytes written, in order, once. Each write starts on an empty buffer, so
    that it goes to write() (a write behind queued data only queues), and every planned
    short write is taken."""

    async def main() -> tuple[bytes, bytes, int]:
        transport, _, peer = await pair()
        sent = bytearray()
        got = bytearray()
        for k in range(1, 65):
            data = payload(64 + k)[: 64 + k]
            _ferroloop._inject_faults("write", partial=k)
            _ferroloop._inject_faults("write_vectored", partial=max(1, k // 2), count=3)
            transport.write(data)
            sent += data
            got += await drain_peer(peer, len(data))
            await wait_until(lambda: transport.get_write_buffer_size() == 0)
        transport.close()
        peer.close()
        return bytes(sent), bytes(got), await short_writes_left()

    sent, got, left = floop.run_until_complete(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
    assert left == 0


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


# --- the native sock_* operations (src/sock_ops.rs) ------------------------------------
#
# asyncio's sock_* methods (selector_events.py, 3.11.7 lines 357-720) try the socket method
# first, treat BlockingIOError/InterruptedError as "wait for the fd" and raise any other
# OSError from the awaited call. ferroloop's native operations go through src/sys.rs, so the
# same plans reach them. One difference in mechanism, not in what asyncio promises: a
# native operation waits on an edge-triggered registration (src/event_loop/fds.rs), which
# is reported when it is first registered and then on each new readiness event from the
# kernel. The kernel only fails with EAGAIN, or writes short on a stream socket, when the
# buffer is empty or full (epoll(7)), so the event that ends the wait always comes; a plan
# that fails a call on a socket that stays ready does not model that, so the tests below
# give each repeated fault a real event to follow (the peer reads or sends), as the kernel
# would.

SOCK_OPS = {
    # the operation: the syscall of src/sys.rs it makes
    "sock_recv": "read",
    "sock_recv_into": "read",
    "sock_recvfrom": "recvfrom",
    "sock_recvfrom_into": "recvfrom",
    "sock_sendall": "write",
    "sock_sendto": "sendto",
    "sock_accept": "accept",
}


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class SockCase:
    """One sock_* call on fresh sockets, with what it needs ready before it starts (data to
    read, a connection to accept, room to send): `call()` is the coroutine, `check(result)`
    returns what the call did as plain data, and `expected` what it should be."""

    def __init__(self, loop: asyncio.AbstractEventLoop, op: str) -> None:
        self.op = op
        self.loop = loop
        self.socks: list[socket.socket] = []
        data = payload(len(op) * 97)[:1000]
        self.data = data
        if op in ("sock_recv", "sock_recv_into", "sock_sendall"):
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            self.socks += [a, b]
            self.sock, self.peer = a, b
            if op != "sock_sendall":
                b.send(data)
        elif op in ("sock_recvfrom", "sock_recvfrom_into", "sock_sendto"):
            self.sock, self.peer = udp_socket(), udp_socket()
            self.socks += [self.sock, self.peer]
            if op != "sock_sendto":
                self.peer.sendto(data, self.sock.getsockname())
        else:
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.sock.setblocking(False)
            self.peer = socket.create_connection(self.sock.getsockname())
            self.socks += [self.sock, self.peer]

    def call(self) -> Awaitable[object]:
        loop, sock, op = self.loop, self.sock, self.op
        if op == "sock_recv":
            return loop.sock_recv(sock, 4096)
        if op == "sock_recv_into":
            self.buf = bytearray(4096)
            return loop.sock_recv_into(sock, self.buf)
        if op == "sock_recvfrom":
            return loop.sock_recvfrom(sock, 4096)
        if op == "sock_recvfrom_into":
            self.buf = bytearray(4096)
            return loop.sock_recvfrom_into(sock, self.buf)
        if op == "sock_sendall":
            return loop.sock_sendall(sock, self.data)
        if op == "sock_sendto":
            return loop.sock_sendto(sock, self.data, self.peer.getsockname())
        return loop.sock_accept(sock)

    @property
    def expected(self) -> object:
        if self.op in ("sock_recvfrom", "sock_recvfrom_into"):
            return (self.data, self.peer.getsockname())
        if self.op == "sock_accept":
            return self.peer.getsockname()
        return self.data

    async def check(self, result: object) -> object:
        op = self.op
        if op == "sock_recv":
            return result
        if op == "sock_recv_into":
            return bytes(self.buf[:result])  # type: ignore[misc]
        if op == "sock_recvfrom":
            return result
        if op == "sock_recvfrom_into":
            n, addr = result  # type: ignore[misc]
            return (bytes(self.buf[:n]), addr)
        if op == "sock_sendall":
            return await drain_peer(self.peer, len(self.data))
        if op == "sock_sendto":
            assert result == len(self.data)
            data, _ = await asyncio.wait_for(self.loop.sock_recvfrom(self.peer, 4096), 10)
            return data
        conn, addr = result  # type: ignore[misc]
        self.socks.append(conn)
        assert conn.getblocking() is False
        return addr

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@pytest.mark.parametrize("op", [*SOCK_OPS, "sock_connect"])
def test_sock_op_eintr_storm_is_invisible(floop, op):
    """1000 EINTRs on the operation's syscall are retried (PEP 475; asyncio's socket
    methods retry them in the socket module): the awaited call returns what it would have,
    once, and nothing reaches the exception handler. sock_connect's syscalls
    (`socket.connect`, then `getsockopt(SO_ERROR)`) have no plan of their own: it runs under
    an EINTR storm in epoll_wait while it waits for the connection."""

    async def connect() -> tuple[object, object]:
        loop = asyncio.get_running_loop()
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.socket()
        client.setblocking(False)
        _ferroloop._inject_faults("epoll_wait", errno=errno.EINTR, count=200)
        try:
            result = await asyncio.wait_for(loop.sock_connect(client, server.getsockname()), 10)
            conn, _ = server.accept()
            peer = conn.getpeername()
            conn.close()
            return (result, peer), (None, client.getsockname())
        finally:
            client.close()
            server.close()

    async def main() -> tuple[object, object]:
        if op == "sock_connect":
            return await connect()
        case = SockCase(asyncio.get_running_loop(), op)
        try:
            _ferroloop._inject_faults(SOCK_OPS[op], errno=errno.EINTR, count=1000)
            result = await asyncio.wait_for(case.call(), 10)
            return await case.check(result), case.expected
        finally:
            case.close()

    got, expected = floop.run_until_complete(main())
    assert got == expected
    assert floop.handler_calls == []


@pytest.mark.parametrize("op", SOCK_OPS)
def test_sock_op_eagain_waits_then_completes(floop, op):
    """EAGAIN from the first attempt although the socket is ready: the call does not
    finish in the step that started it (asyncio's `except (BlockingIOError,
    InterruptedError): pass`, then `_add_reader`/`_add_writer` and `await fut`), it waits
    for the fd and then completes with the result the first attempt would have had."""

    async def main() -> tuple[bool, object, object]:
        case = SockCase(asyncio.get_running_loop(), op)
        try:
            _ferroloop._inject_faults(SOCK_OPS[op], errno=errno.EAGAIN)
            task = asyncio.ensure_future(case.call())
            await asyncio.sleep(0)  # the task's first step ran, and waits
            waited = not task.done()
            result = await asyncio.wait_for(task, 10)
            return waited, await case.check(result), case.expected
        finally:
            case.close()

    waited, got, expected = floop.run_until_complete(main())
    assert waited
    assert got == expected
    assert floop.handler_calls == []


def test_sock_recv_eagain_on_a_socket_that_waited_before(floop):
    """The same after an earlier sock_recv on the socket waited (its edge-triggered
    registration is reused, src/event_loop/fds.rs): the call waits for the next arrival and
    returns everything received, once."""

    async def main() -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            first = asyncio.ensure_future(loop.sock_recv(a, 4096))
            await asyncio.sleep(0.01)
            b.send(b"first")
            assert await asyncio.wait_for(first, 10) == b"first"
            _ferroloop._inject_faults("read", errno=errno.EAGAIN, count=3)
            task = asyncio.ensure_future(loop.sock_recv(a, 4096))
            got = bytearray()
            waited = False
            for chunk in (b"one", b"two", b"three", b"four"):
                await asyncio.sleep(0.01)
                waited = waited or not task.done()
                b.send(chunk)
                if task.done():
                    break
            got += await asyncio.wait_for(task, 10)
            while len(got) < len(b"onetwothreefour"):
                got += await asyncio.wait_for(loop.sock_recv(a, 4096), 10)
            return waited, bytes(got)
        finally:
            a.close()
            b.close()

    waited, got = floop.run_until_complete(main())
    assert waited
    assert got == b"onetwothreefour"
    assert floop.handler_calls == []


def test_sock_sendall_short_writes_of_every_length(floop):
    """sock_sendall with every short write from 1 to 64 bytes, three in a row per call:
    the call finishes only once everything is sent (asyncio's `_sock_sendall` keeps
    `pos`), and the peer gets each call's data exactly once, in order. The peer reads as
    the data comes, which gives each wait its writability event (see the comment above
    SOCK_OPS)."""

    async def main() -> tuple[bytes, bytes, int]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        sent = bytearray()

        async def send() -> None:
            for k in range(1, 65):
                data = payload(3 * k + 100)[: 3 * k + 100]
                _ferroloop._inject_faults("write", partial=k, count=3)
                await asyncio.wait_for(loop.sock_sendall(a, data), 10)
                sent.extend(data)

        try:
            sender = asyncio.ensure_future(send())
            total = sum(3 * k + 100 for k in range(1, 65))
            got = await drain_peer(b, total)
            await sender
            return bytes(sent), got, await short_writes_left()
        finally:
            a.close()
            b.close()

    sent, got, left = floop.run_until_complete(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
    assert left == 0
    assert floop.handler_calls == []


SOCK_ERRORS = [
    # (operation, errno, the exception asyncio's awaited call raises)
    ("sock_recv", errno.ECONNRESET, ConnectionResetError),
    ("sock_recv_into", errno.ECONNRESET, ConnectionResetError),
    ("sock_recvfrom", errno.ECONNREFUSED, ConnectionRefusedError),
    ("sock_recvfrom_into", errno.ECONNREFUSED, ConnectionRefusedError),
    ("sock_sendall", errno.EPIPE, BrokenPipeError),
    ("sock_sendto", errno.ENOBUFS, OSError),
    ("sock_accept", errno.ECONNABORTED, ConnectionAbortedError),
]


# The socket method asyncio calls for each operation (selector_events.py).
ASYNCIO_METHOD = {
    "sock_recv": "recv",
    "sock_recv_into": "recv_into",
    "sock_recvfrom": "recvfrom",
    "sock_recvfrom_into": "recvfrom_into",
    "sock_sendall": "send",
    "sock_sendto": "sendto",
    "sock_accept": "accept",
}


class FaultySocket(socket.socket):
    """For the asyncio reference runs: each planned (method, exception) in `faults` makes
    one call of that method raise, as the kernel's error would reach asyncio's code
    through the socket module."""

    faults: list[tuple[str, OSError]]


def _failing(name: str) -> Callable[..., object]:
    def method(self: FaultySocket, *args: object) -> object:
        faults = getattr(self, "faults", [])
        if faults and faults[0][0] == name:
            raise faults.pop(0)[1]
        return getattr(super(FaultySocket, self), name)(*args)

    method.__name__ = name
    return method


for _name in ASYNCIO_METHOD.values():
    setattr(FaultySocket, _name, _failing(_name))


def faulty_socket(sock: socket.socket) -> FaultySocket:
    """`sock` as a FaultySocket (the same fd)."""
    return FaultySocket(sock.family, sock.type, sock.proto, sock.detach())


@pytest.mark.parametrize(("op", "code", "exc_type"), SOCK_ERRORS)
def test_sock_op_error_is_raised_as_asyncio_raises_it(anyloop, op, code, exc_type):
    """An error from the operation's syscall is raised from the awaited call, as the
    OSError subclass of its errno (asyncio: `except BaseException as exc:
    fut.set_exception(exc)`, or the first attempt's exception itself, selector_events.py
    3.11.7 lines 357-720; sock_sendto is `return sock.sendto(data, address)`, line 585, so
    ENOBUFS is raised too). Same scenario on both loops: on asyncio the socket method
    raises it (FaultySocket), on ferroloop the syscall fails (a plan). The fault is taken
    and forgotten: the same call again succeeds, no watcher is left behind."""

    async def main() -> tuple[BaseException | None, object, object]:
        loop = asyncio.get_running_loop()
        case = SockCase(loop, op)
        try:
            if anyloop.kind == "asyncio":
                faulty = faulty_socket(case.sock)
                faulty.faults = [(ASYNCIO_METHOD[op], OSError(code, os.strerror(code)))]
                case.socks[case.socks.index(case.sock)] = case.sock = faulty
            else:
                _ferroloop._inject_faults(SOCK_OPS[op], errno=code)
            raised = None
            try:
                await asyncio.wait_for(case.call(), 10)
            except OSError as exc:
                raised = exc
            result = await asyncio.wait_for(case.call(), 10)
            return raised, await case.check(result), case.expected
        finally:
            case.close()

    raised, got, expected = anyloop.run_until_complete(main())
    assert type(raised) is exc_type
    assert raised.errno == code
    assert got == expected
    assert anyloop.handler_calls == []


@pytest.mark.parametrize("case", ["reset-on-recv", "epipe-on-sendall", "refused-on-recvfrom"])
def test_sock_op_kernel_errors_match_asyncio(anyloop, case):
    """The same errors made by the kernel, no plan: a TCP peer that resets (SO_LINGER 0),
    a closed Unix peer, an ICMP port unreachable on a connected UDP socket. Both loops
    raise the same exception from the awaited call."""

    async def main() -> BaseException | None:
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        try:
            if case == "reset-on-recv":
                server = socket.create_server(("127.0.0.1", 0))
                client = socket.create_connection(server.getsockname())
                conn, _ = server.accept()
                socks += [server, client, conn]
                client.setblocking(False)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                conn.close()
                await asyncio.sleep(0.01)
                coro = loop.sock_recv(client, 100)
            elif case == "epipe-on-sendall":
                a, b = socket.socketpair()
                socks += [a, b]
                a.setblocking(False)
                b.close()
                coro = loop.sock_sendall(a, b"x" * 1000)
            else:
                closed = udp_socket()
                address = closed.getsockname()
                closed.close()
                sock = udp_socket()
                socks.append(sock)
                sock.connect(address)
                sock.send(b"ping")
                await asyncio.sleep(0.01)
                coro = loop.sock_recvfrom(sock, 100)
            try:
                await asyncio.wait_for(coro, 10)
            except OSError as exc:
                return exc
            return None
        finally:
            for sock in socks:
                sock.close()

    raised = anyloop.run_until_complete(main())
    expected = {
        "reset-on-recv": ConnectionResetError,
        "epipe-on-sendall": BrokenPipeError,
        "refused-on-recvfrom": ConnectionRefusedError,
    }[case]
    assert type(raised) is expected
    assert anyloop.handler_calls == []


def test_sock_sendall_eagain_twice_on_a_ready_socket(anyloop):
    """Where the loops differ, under a fault only a plan makes: sock_sendall refused twice
    with EAGAIN by a socket that stays writable. asyncio's `_sock_sendall` is a
    level-triggered writer (selector_events.py, 3.11.7 lines 550-570): it retries on the
    next iteration and finishes at once. ferroloop's native operation waits
    edge-triggered (src/event_loop/fds.rs): the registration reports the fd once when
    made, so after the second EAGAIN it waits for the kernel's next writability event,
    here the peer reading what was sent before. The kernel never fails a send with EAGAIN
    while it reports the socket writable (epoll(7): EAGAIN means the buffer is full, and
    its draining is that event), so programs cannot see the difference. On both loops the
    data arrives once."""

    async def main() -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        a.send(b"before" * 100)  # unread: the peer reading it frees room, an event
        if anyloop.kind == "asyncio":
            a = faulty_socket(a)
            a.faults = [("send", BlockingIOError(errno.EAGAIN, "again"))] * 2
        else:
            _ferroloop._inject_faults("write", errno=errno.EAGAIN, count=2)
        try:
            task = asyncio.ensure_future(loop.sock_sendall(a, b"data"))
            await asyncio.sleep(0.05)
            pending = not task.done()
            assert b.recv(600) == b"before" * 100
            await asyncio.wait_for(task, 10)
            got = await asyncio.wait_for(loop.sock_recv(b, 100), 10)
            return pending, got
        finally:
            a.close()
            b.close()

    pending, got = anyloop.run_until_complete(main())
    assert pending == (anyloop.kind == "ferroloop")
    assert got == b"data"
    assert anyloop.handler_calls == []


# --- datagram transports (src/transports/datagram.rs) ----------------------------------
#
# asyncio's `_SelectorDatagramTransport` (selector_events.py, 3.11.7): `_read_ready` (line
# 1155) passes on BlockingIOError/InterruptedError, hands any other OSError to
# `protocol.error_received` and reads on; `sendto` (line 1171) queues what the socket
# refuses with BlockingIOError/InterruptedError and `_sendto_ready` (line 1215) sends the
# queue in order when the socket is writable.


class DatagramSink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, object]] = []
        self.errors: list[Exception] = []
        self.lost: list[BaseException | None] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.append((data, addr))
        self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.arrived.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


class DatagramPair:
    """A native datagram endpoint and a raw peer socket: UDP (the endpoint sends with
    sendto to the peer's address) or Unix (the endpoint is connected to the peer's path)."""

    async def open(self, family: str) -> DatagramPair:
        loop = asyncio.get_running_loop()
        self.dir = None
        if family == "udp":
            self.peer = udp_socket()
            self.transport, self.proto = await loop.create_datagram_endpoint(
                DatagramSink, local_addr=("127.0.0.1", 0)
            )
            self.dest: object = self.peer.getsockname()
        else:
            self.dir = tempfile.mkdtemp(prefix="fl-", dir="/tmp")
            self.peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.peer.bind(os.path.join(self.dir, "peer"))
            self.peer.setblocking(False)
            self.transport, self.proto = await loop.create_datagram_endpoint(
                DatagramSink,
                family=socket.AF_UNIX,
                local_addr=os.path.join(self.dir, "ep"),
                remote_addr=os.path.join(self.dir, "peer"),
            )
            self.dest = None
        self.address = self.transport.get_extra_info("sockname")
        return self

    def send(self, data: bytes) -> None:
        """The endpoint sends one datagram to the peer."""
        self.transport.sendto(data, self.dest)

    async def wait_received(self, n: int) -> None:
        while len(self.proto.received) < n:
            self.proto.arrived.clear()
            await asyncio.wait_for(self.proto.arrived.wait(), 10)

    async def peer_receive(self, n: int) -> list[bytes]:
        loop = asyncio.get_running_loop()
        got = []
        for _ in range(n):
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.peer, 1 << 16), 10)
            got.append(data)
        return got

    async def close(self) -> None:
        self.transport.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.peer.close()
        if self.dir is not None:
            for name in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, name))
            os.rmdir(self.dir)


def datagrams(n: int) -> list[bytes]:
    return [payload(i)[: 50 + i * 7] for i in range(n)]


@pytest.mark.parametrize("family", ["udp", "unix"])
@pytest.mark.parametrize(
    "plan",
    [
        ("recvfrom", errno.EINTR, 1000),
        ("recvfrom", errno.EAGAIN, 50),
        ("sendto", errno.EINTR, 1000),
    ],
    ids=["eintr-recvfrom", "eagain-recvfrom", "eintr-sendto"],
)
def test_datagram_eintr_and_eagain_are_invisible(floop, family, plan):
    """EINTR storms on recvfrom and sendto, and 50 EAGAINs on recvfrom (one per
    `_read_ready`; the reader is level-triggered, so it runs again): every datagram
    arrives once, whole and in order, both ways, and the protocol sees no error."""

    async def main() -> tuple[list, list, list, list, list]:
        pair = await DatagramPair().open(family)
        try:
            op, code, count = plan
            _ferroloop._inject_faults(op, errno=code, count=count)
            incoming = datagrams(40)
            for data in incoming:
                pair.peer.sendto(data, pair.address)
            await pair.wait_received(len(incoming))
            outgoing = datagrams(30)[::-1]
            for data in outgoing:
                pair.send(data)
            got = await pair.peer_receive(len(outgoing))
            received = [data for data, _ in pair.proto.received]
            senders = {addr for _, addr in pair.proto.received}
            assert senders == {pair.peer.getsockname()}
            return incoming, received, outgoing, got, pair.proto.errors
        finally:
            await pair.close()

    incoming, received, outgoing, got, errors = floop.run_until_complete(main())
    assert received == incoming
    assert got == outgoing
    assert errors == []
    assert floop.handler_calls == []


@pytest.mark.parametrize("family", ["udp", "unix"])
def test_datagram_econnrefused_on_recvfrom_goes_to_error_received(floop, family):
    """ECONNREFUSED from recvfrom (a connected UDP socket's ICMP port unreachable):
    `protocol.error_received(ConnectionRefusedError)`, the endpoint stays open and reads
    on; the datagram that was waiting arrives next, nothing is lost."""

    async def main() -> tuple[list, list, bool, list]:
        pair = await DatagramPair().open(family)
        try:
            _ferroloop._inject_faults("recvfrom", errno=errno.ECONNREFUSED)
            pair.peer.sendto(b"one", pair.address)
            await pair.wait_received(1)
            pair.peer.sendto(b"two", pair.address)
            await pair.wait_received(2)
            pair.send(b"still open")
            got = await pair.peer_receive(1)
            closing = pair.transport.is_closing()
            received = [data for data, _ in pair.proto.received]
            return pair.proto.errors, received, closing, got + pair.proto.lost
        finally:
            await pair.close()

    errors, received, closing, rest = floop.run_until_complete(main())
    assert len(errors) == 1 and type(errors[0]) is ConnectionRefusedError
    assert errors[0].errno == errno.ECONNREFUSED
    assert received == [b"one", b"two"]
    assert not closing
    assert rest == [b"still open"]
    assert floop.handler_calls == []


def test_udp_kernel_econnrefused_matches_asyncio(anyloop):
    """The same without a plan, on both loops: a connected UDP endpoint sends to a closed
    port, the kernel's ICMP port unreachable fails the next recvfrom with ECONNREFUSED, and
    the protocol's error_received gets a ConnectionRefusedError; the endpoint stays
    open."""

    async def main() -> tuple[list, bool, list]:
        loop = asyncio.get_running_loop()
        closed = udp_socket()
        address = closed.getsockname()
        closed.close()
        transport, proto = await loop.create_datagram_endpoint(DatagramSink, remote_addr=address)
        try:
            transport.sendto(b"ping")
            await asyncio.wait_for(proto.arrived.wait(), 10)
            return proto.errors, transport.is_closing(), list(proto.lost)
        finally:
            transport.close()
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    errors, closing, lost = anyloop.run_until_complete(main())
    assert len(errors) == 1 and type(errors[0]) is ConnectionRefusedError
    assert not closing
    assert lost == []
    assert anyloop.handler_calls == []


@pytest.mark.parametrize("family", ["udp", "unix"])
def test_datagram_eagain_on_sendto_queues_in_order(floop, family):
    """EAGAIN on the first sendto and on the first two flushes: the refused datagram and
    every one sent after it are queued (get_write_buffer_size counts them, with 8 bytes of
    header each from 3.13, gh-113812) and reach the peer once, in the order sent."""

    async def main() -> tuple[int, int, list, list, list, int]:
        pair = await DatagramPair().open(family)
        try:
            _ferroloop._inject_faults("sendto", errno=errno.EAGAIN, count=3)
            outgoing = datagrams(20)
            for data in outgoing:
                pair.send(data)
            queued = pair.transport.get_write_buffer_size()
            header = 8 if sys.version_info >= (3, 13) else 0
            expected = sum(len(d) + header for d in outgoing)
            got = await pair.peer_receive(len(outgoing))
            left = pair.transport.get_write_buffer_size()
            return queued, expected, outgoing, got, pair.proto.errors, left
        finally:
            await pair.close()

    queued, expected, outgoing, got, errors, left = floop.run_until_complete(main())
    assert queued == expected
    assert got == outgoing
    assert errors == []
    assert left == 0
    assert floop.handler_calls == []


# --- pipes (src/transports/stream.rs, Kind::ReadPipe / Kind::WritePipe) ---------------
#
# asyncio's `_UnixWritePipeTransport.write` (unix_events.py, 3.11.7 line 678) tries
# `os.write` first and buffers what the pipe does not take, BlockingIOError and
# InterruptedError meaning "nothing taken"; any other error is `_fatal_error` (line 775:
# an OSError is not reported to the exception handler) and `connection_lost(exc)`.
# `_UnixReadPipeTransport._read_ready` (line 519) passes on BlockingIOError and
# InterruptedError.


class PipeSink(Sink):
    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(None)
        return False


async def pipe_transports() -> tuple[asyncio.WriteTransport, Sink, asyncio.ReadTransport, Sink]:
    """A write pipe transport feeding a read pipe transport through one os.pipe()."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    rtransport, rsink = await loop.connect_read_pipe(PipeSink, os.fdopen(r, "rb", 0))
    wtransport, wsink = await loop.connect_write_pipe(Sink, os.fdopen(w, "wb", 0))
    return wtransport, wsink, rtransport, rsink


def plan_short_writes() -> None:
    for k in range(1, 65):
        _ferroloop._inject_faults("write", partial=k)
        _ferroloop._inject_faults("write_vectored", partial=max(1, k // 2), count=3)


PIPE_PLANS = {
    "short-writes": plan_short_writes,
    "eagain-write": lambda: (
        _ferroloop._inject_faults("write", errno=errno.EAGAIN, count=20),
        _ferroloop._inject_faults("write_vectored", errno=errno.EAGAIN, count=50),
    ),
    "eintr-write": lambda: _ferroloop._inject_faults("write", errno=errno.EINTR, count=1000),
    "eintr-write_vectored": lambda: _ferroloop._inject_faults(
        "write_vectored", errno=errno.EINTR, count=1000
    ),
    "eintr-read": lambda: _ferroloop._inject_faults("read", errno=errno.EINTR, count=1000),
    "eagain-read": lambda: _ferroloop._inject_faults("read", errno=errno.EAGAIN, count=50),
}


@pytest.mark.parametrize("plan", PIPE_PLANS)
def test_pipe_faults_lose_nothing(floop, plan):
    """Short writes of every length (1-64 bytes, and short writevs), EAGAIN on the writes
    and flushes, EINTR storms on write, writev and read, EAGAIN on read: the read pipe gets
    every byte written to the write pipe once, in order; closing the write pipe ends the
    read pipe with EOF, and both transports end with connection_lost(None)."""

    async def main() -> tuple[bytes, bytes, list, list, int]:
        wtransport, wsink, rtransport, rsink = await pipe_transports()
        PIPE_PLANS[plan]()
        sent = bytearray()
        for k in range(1, 65):
            # Each write on an empty buffer, so that it goes to write() first.
            await wait_until(lambda: wtransport.get_write_buffer_size() == 0)
            data = payload(64 + k)[: 64 + k]
            wtransport.write(data)
            sent += data
        big = payload(300_000)
        wtransport.write(big)
        sent += big
        await wait_until(lambda: len(rsink.data) >= len(sent))
        wtransport.close()
        await asyncio.wait_for(rsink.done, 10)
        await asyncio.wait_for(wsink.done, 10)
        rtransport.close()
        await asyncio.sleep(0)
        return bytes(sent), bytes(rsink.data), wsink.lost, rsink.lost, await short_writes_left()

    sent, got, wlost, rlost, left = floop.run_until_complete(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
    assert left == 0
    assert wlost == [None]
    assert rlost == [None]
    assert floop.handler_calls == []


def test_write_pipe_eagain_queues_the_write(floop):
    """EAGAIN on the first write and 50 flushes: the whole write is queued (counted by
    get_write_buffer_size) and arrives once the pipe takes it."""

    async def main() -> tuple[int, bytes, bytes]:
        wtransport, _, rtransport, rsink = await pipe_transports()
        _ferroloop._inject_faults("write", errno=errno.EAGAIN)
        _ferroloop._inject_faults("write_vectored", errno=errno.EAGAIN, count=50)
        data = payload(100_000)
        wtransport.write(data)
        queued = wtransport.get_write_buffer_size()
        await wait_until(lambda: len(rsink.data) >= len(data))
        wtransport.close()
        await asyncio.wait_for(rsink.done, 10)
        rtransport.close()
        await asyncio.sleep(0)
        return queued, data, bytes(rsink.data)

    queued, data, got = floop.run_until_complete(main())
    assert queued == len(data)
    assert got == data


def test_write_pipe_epipe_is_connection_lost(floop):
    """EPIPE from a pipe write: connection_lost(BrokenPipeError) once, not reported to the
    exception handler (an OSError, unix_events.py line 775), the transport closing; a later
    write is dropped."""

    async def main() -> tuple[list, bool, int]:
        wtransport, wsink, rtransport, rsink = await pipe_transports()
        _ferroloop._inject_faults("write", errno=errno.EPIPE)
        wtransport.write(b"lost")
        await asyncio.wait_for(wsink.done, 10)
        wtransport.write(b"after")
        rtransport.close()
        await asyncio.sleep(0)
        return wsink.lost, wtransport.is_closing(), wtransport.get_write_buffer_size()

    lost, closing, size = floop.run_until_complete(main())
    assert len(lost) == 1 and type(lost[0]) is BrokenPipeError
    assert closing
    assert size == 0
    assert floop.handler_calls == []


def test_write_pipe_kernel_epipe_matches_asyncio(anyloop):
    """The same without a plan, on both loops: the read end is closed and the next write
    fails with EPIPE (SIGPIPE is ignored by Python): connection_lost(BrokenPipeError),
    nothing for the exception handler."""

    async def main() -> list:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        wtransport, wsink = await loop.connect_write_pipe(Sink, os.fdopen(w, "wb", 0))
        os.close(r)
        wtransport.write(b"x" * 1000)  # before the loop polls the closed pipe
        await asyncio.wait_for(wsink.done, 10)
        return wsink.lost

    lost = anyloop.run_until_complete(main())
    assert len(lost) == 1 and type(lost[0]) is BrokenPipeError
    assert anyloop.handler_calls == []


# --- SSL over a native TCP transport ----------------------------------------------------
#
# asyncio wires `sslproto.SSLProtocol` over the loop's socket transport (GUIDE §2.7), so
# every TLS record goes through the native write and read paths and their faults.


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for localhost/127.0.0.1 and its key: made with the
    `cryptography` package when the venv has it, else with `openssl req`."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl to make a certificate")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
             "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert, key


def plan_tls_short_writes() -> None:
    for k in range(1, 65):
        _ferroloop._inject_faults("write", partial=k, count=2)
        _ferroloop._inject_faults("write_vectored", partial=k * 3, count=2)


def plan_tls_eintr() -> None:
    for op in ("read", "write", "write_vectored"):
        _ferroloop._inject_faults(op, errno=errno.EINTR, count=1000)


@pytest.mark.parametrize("plan", [plan_tls_short_writes, plan_tls_eintr], ids=["short", "eintr"])
def test_ssl_stream_intact_under_faults(floop, tls_cert, plan):
    """TLS between asyncio.open_connection and asyncio.start_server on the loop, the
    handshake and the data under short writes of every length (and short writevs) or EINTR
    storms on read, write and writev: the server gets the client's bytes and the client
    gets them back, intact (checksums both ways), and both ends close cleanly."""
    cert, key = tls_cert
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)

    async def main() -> tuple[bytes, bytes, bytes, str | None, int]:
        size = 200_000
        server_got: list[bytes] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.readexactly(size)
            server_got.append(hashlib.sha256(data).digest())
            for i in range(0, size, 7000):
                writer.write(data[i : i + 7000])
            await writer.drain()
            await reader.read()  # until the client closes
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        plan()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"),
            10,
        )
        version = writer.get_extra_info("ssl_object").version()
        out = payload(size)[:size]
        for i in range(0, size, 5000):
            writer.write(out[i : i + 5000])
        await writer.drain()
        back = await asyncio.wait_for(reader.readexactly(size), 20)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        for _ in range(3):
            await asyncio.sleep(0)
        left = await short_writes_left()
        digests = hashlib.sha256(out).digest(), server_got[0], hashlib.sha256(back).digest()
        return (*digests, version, left)

    sent, server_got, client_got, version, left = floop.run_until_complete(main())
    assert version is not None
    assert left == 0
    assert server_got == sent
    assert client_got == sent
    assert floop.handler_calls == []
