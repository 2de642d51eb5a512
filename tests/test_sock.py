"""The low-level socket API (`sock_*`) and name resolution, on ferroloop and stock asyncio.

Loopback only. Every test runs on both loops unless marked otherwise."""

from __future__ import annotations

import asyncio
import errno as errno_mod
import gc
import hashlib
import os
import socket
import ssl
import tempfile
import time

import pytest

pytestmark = pytest.mark.timeout(30)


def nonblocking(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    return sock


def listener(family: int = socket.AF_INET) -> socket.socket:
    srv = socket.socket(family)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    return nonblocking(srv)


async def echo_server(loop, srv: socket.socket) -> None:
    conn, _ = await loop.sock_accept(srv)
    with conn:
        while data := await loop.sock_recv(conn, 65536):
            await loop.sock_sendall(conn, data)


def test_tcp_echo_large_payload_every_byte(loop):
    payload = os.urandom(8 * 1024 * 1024)

    async def main() -> bytes:
        srv = listener()
        server = loop.create_task(echo_server(loop, srv))
        client = nonblocking(socket.socket())
        await loop.sock_connect(client, srv.getsockname())
        sender = loop.create_task(loop.sock_sendall(client, payload))
        got = bytearray()
        while len(got) < len(payload):
            chunk = await loop.sock_recv(client, 1 << 16)
            assert chunk, "connection closed early"
            got += chunk
        await sender
        client.close()
        await server
        srv.close()
        return bytes(got)

    got = loop.run_until_complete(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_sock_accept_returns_nonblocking_socket_and_address(loop):
    async def main():
        srv = listener()
        client = nonblocking(socket.socket())
        accept = loop.create_task(loop.sock_accept(srv))
        await loop.sock_connect(client, ("localhost", srv.getsockname()[1]))
        conn, address = await accept
        try:
            assert conn.gettimeout() == 0
            assert address == client.getsockname()
        finally:
            conn.close()
            client.close()
            srv.close()

    loop.run_until_complete(main())


def test_sock_recv_into_and_partial_reads(loop):
    async def main():
        a, b = map(nonblocking, socket.socketpair())
        with a, b:
            buf = bytearray(4)
            reader = loop.create_task(loop.sock_recv_into(a, buf))
            await asyncio.sleep(0)
            await loop.sock_sendall(b, b"abcdef")
            assert await reader == 4
            assert bytes(buf) == b"abcd"
            assert await loop.sock_recv(a, 100) == b"ef"

    loop.run_until_complete(main())


def test_udp_sendto_recvfrom_and_recvfrom_into(loop):
    async def main():
        a = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        b = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with a, b:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            pending = loop.create_task(loop.sock_recvfrom(a, 100))
            await asyncio.sleep(0)
            assert await loop.sock_sendto(b, b"ping", a.getsockname()) == 4
            assert await pending == (b"ping", b.getsockname())
            buf = bytearray(10)
            await loop.sock_sendto(b, b"pong!", a.getsockname())
            nbytes, addr = await loop.sock_recvfrom_into(a, buf)
            assert (bytes(buf[:nbytes]), addr) == (b"pong!", b.getsockname())

    loop.run_until_complete(main())


def test_unix_socket_connect(loop):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.sock")
            srv = nonblocking(socket.socket(socket.AF_UNIX))
            srv.bind(path)
            srv.listen()
            client = nonblocking(socket.socket(socket.AF_UNIX))
            server = loop.create_task(echo_server(loop, srv))
            await loop.sock_connect(client, path)
            await loop.sock_sendall(client, b"hello")
            assert await loop.sock_recv(client, 10) == b"hello"
            client.close()
            await server
            srv.close()

    loop.run_until_complete(main())


def test_cancelled_recv_loses_no_data_and_leaves_no_watcher(loop):
    async def main():
        a, b = map(nonblocking, socket.socketpair())
        with a, b:
            pending = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            # The watcher is gone: nothing is registered for the fd any more.
            assert loop.remove_reader(a.fileno()) is False
            b.send(b"kept")
            assert await loop.sock_recv(a, 100) == b"kept"

    loop.run_until_complete(main())


def test_connection_refused(loop):
    async def main():
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens on this port now
        client = nonblocking(socket.socket())
        with client, pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(client, ("127.0.0.1", port))

    loop.run_until_complete(main())


def test_blocking_socket_refused_in_debug_mode(loop):
    """Both loops refuse blocking sockets in debug mode (asyncio checks only then;
    ferroloop always, see the next test)."""
    loop.set_debug(True)

    async def main():
        a, b = socket.socketpair()
        with a, b:
            with pytest.raises(ValueError, match="non-blocking"):
                await loop.sock_recv(a, 1)
            with pytest.raises(ValueError, match="non-blocking"):
                await loop.sock_sendall(a, b"x")

    loop.run_until_complete(main())


@pytest.mark.ferroloop_only
def test_ferroloop_refuses_blocking_socket_always(ferroloop):
    loop = ferroloop.new_event_loop()
    try:

        async def main():
            a, b = socket.socketpair()
            with a, b:
                for call in (
                    lambda: loop.sock_recv(a, 1),
                    lambda: loop.sock_accept(a),
                    lambda: loop.sock_connect(a, ("127.0.0.1", 9)),
                ):
                    with pytest.raises(ValueError, match="non-blocking"):
                        await call()

        loop.run_until_complete(main())
    finally:
        loop.close()


def test_ssl_socket_refused(loop):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    raw = socket.socket()
    wrapped = ctx.wrap_socket(raw, do_handshake_on_connect=False)
    wrapped.setblocking(False)

    async def main():
        with pytest.raises(TypeError, match="SSLSocket"):
            await loop.sock_recv(wrapped, 1)

    try:
        loop.run_until_complete(main())
    finally:
        wrapped.close()


@pytest.mark.parametrize(
    ("host", "port", "kwargs"),
    [
        ("127.0.0.1", 80, {}),
        ("::1", "443", {"type": socket.SOCK_STREAM}),
        (None, 0, {"flags": socket.AI_PASSIVE, "type": socket.SOCK_STREAM}),
        ("localhost", 8080, {"family": socket.AF_INET}),
    ],
)
def test_getaddrinfo_matches_socket_module(loop, host, port, kwargs):
    result = loop.run_until_complete(loop.getaddrinfo(host, port, **kwargs))
    assert result == socket.getaddrinfo(host, port, **kwargs)


def test_getaddrinfo_failure_raises_gaierror(loop):
    with pytest.raises(socket.gaierror):
        loop.run_until_complete(loop.getaddrinfo("name.invalid", 80))


@pytest.mark.ferroloop_only
def test_numeric_getaddrinfo_needs_no_thread(ferroloop):
    loop = ferroloop.new_event_loop()
    try:
        loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80))
        loop.run_until_complete(loop.getaddrinfo("fe80::1%1", 80))
        assert loop._default_executor is None
    finally:
        loop.close()


def test_getnameinfo(loop):
    result = loop.run_until_complete(
        loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    )
    assert result == ("127.0.0.1", "80")


# ---------------------------------------------------------------------------------------
# Each operation: would block, then completes from the watcher; cancelled before the socket
# is ready, it leaves no watcher and consumes nothing; errors carry asyncio's types and errno.
# (On ferroloop these are the native paths of src/sock_ops.rs for plain sockets.)

WAIT = 5.0


def fill_send_buffer(sock: socket.socket) -> int:
    """Sends until the kernel refuses more; returns how much it took."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    total = 0
    for size in (65536, 8192, 1024, 64, 1):
        while True:
            try:
                total += sock.send(b"\0" * size)
            except BlockingIOError:
                break
    return total


def drain(sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with listener() as srv:
        client = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
    return nonblocking(client), nonblocking(server)


def registered(loop, fd: int) -> bool:
    """Whether any watcher (reader or writer) is registered for fd, without changing it."""
    if hasattr(loop, "_fd_events"):  # ferroloop
        return loop._fd_events(fd) is not None
    try:
        loop._selector.get_key(fd)
    except KeyError:
        return False
    return True


async def settle(loop, until, timeout: float = WAIT) -> None:
    """Lets the loop run until `until()` is true (done callbacks run an iteration later)."""
    deadline = loop.time() + timeout
    while not until():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0)


@pytest.mark.parametrize("op", ["recv", "recv_into", "recvfrom", "recvfrom_into"])
def test_stream_reads_wait_then_complete(loop, op):
    async def main():
        a, b = tcp_pair()
        with a, b:
            buf = bytearray(16)
            call = {
                "recv": lambda: loop.sock_recv(a, 16),
                "recv_into": lambda: loop.sock_recv_into(a, buf),
                "recvfrom": lambda: loop.sock_recvfrom(a, 16),
                "recvfrom_into": lambda: loop.sock_recvfrom_into(a, buf),
            }[op]
            task = loop.create_task(call())
            for _ in range(3):
                await asyncio.sleep(0)
            assert not task.done()
            assert registered(loop, a.fileno())
            b.send(b"hello")
            result = await asyncio.wait_for(task, WAIT)
            expected = {
                "recv": b"hello",
                "recv_into": 5,
                "recvfrom": (b"hello", None),
                "recvfrom_into": (5, None),
            }[op]
            assert result == expected
            if op.endswith("into"):
                assert bytes(buf[:5]) == b"hello"
            await settle(loop, lambda: not registered(loop, a.fileno()))

    loop.run_until_complete(main())


@pytest.mark.parametrize("op", ["recv", "recv_into", "recvfrom", "recvfrom_into"])
def test_cancelled_read_leaves_no_watcher_and_consumes_nothing(loop, op):
    async def main():
        a, b = tcp_pair()
        with a, b:
            buf = bytearray(16)
            call = {
                "recv": lambda: loop.sock_recv(a, 16),
                "recv_into": lambda: loop.sock_recv_into(a, buf),
                "recvfrom": lambda: loop.sock_recvfrom(a, 16),
                "recvfrom_into": lambda: loop.sock_recvfrom_into(a, buf),
            }[op]
            task = loop.create_task(call())
            await asyncio.sleep(0)
            task.cancel()
            # The data arrives while the cancellation is on its way: it must stay queued.
            b.send(b"kept")
            with pytest.raises(asyncio.CancelledError):
                await task
            assert bytes(buf) == bytes(16)
            await settle(loop, lambda: not registered(loop, a.fileno()))
            await asyncio.sleep(0.01)
            assert await loop.sock_recv(a, 100) == b"kept"
            # Cancelled in the iteration whose poll found the socket readable, by a callback
            # that runs before the watcher: the watcher must see the future done and not read.
            task = loop.create_task(call())
            await asyncio.sleep(0)
            b.send(b"still kept")
            loop.call_soon(task.cancel)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert bytes(buf) == bytes(16)
            assert await loop.sock_recv(a, 100) == b"still kept"

    loop.run_until_complete(main())


def test_recv_from_a_closed_peer_returns_eof_and_reset_raises_with_errno(loop):
    async def main():
        a, b = tcp_pair()
        with a:
            pending = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0)
            b.close()
            assert await asyncio.wait_for(pending, WAIT) == b""
        a, b = tcp_pair()
        with a:
            pending = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0)
            # SO_LINGER 0: close() sends a reset.
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            b.close()
            with pytest.raises(ConnectionResetError) as info:
                await asyncio.wait_for(pending, WAIT)
            assert info.value.errno == errno_mod.ECONNRESET

    loop.run_until_complete(main())


def test_recv_argument_errors_are_the_socket_modules(loop):
    async def main():
        a, b = tcp_pair()
        with a, b:
            with pytest.raises(ValueError, match="negative buffersize in recv"):
                await loop.sock_recv(a, -1)
            with pytest.raises(TypeError):
                await loop.sock_recv(a, "10")
            with pytest.raises(TypeError, match="read-write bytes-like"):
                await loop.sock_recv_into(a, b"readonly")
            with pytest.raises(ValueError, match="greater than the length"):
                await loop.sock_recvfrom_into(a, bytearray(4), 10)
            # Nothing was consumed by the failed calls.
            b.send(b"x")
            assert await loop.sock_recv(a, 10) == b"x"

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_sendall_waits_until_every_byte_is_out(loop, kind):
    payload = os.urandom(6 * 1024 * 1024 + 123)

    async def main():
        a, b = tcp_pair()
        with a, b:
            data = kind(payload) if kind is not memoryview else memoryview(bytearray(payload))
            sender = loop.create_task(loop.sock_sendall(a, data))
            await asyncio.sleep(0)
            # Several MiB do not fit in the socket buffers: the call waits for the reader.
            assert not sender.done()
            if kind is bytearray:
                # asyncio holds a view of the data while it waits: it cannot be resized.
                with pytest.raises(BufferError):
                    data.extend(b"x")
            got = bytearray()
            while len(got) < len(payload):
                chunk = await loop.sock_recv(b, 1 << 18)
                assert chunk
                got += chunk
            assert await asyncio.wait_for(sender, WAIT) is None
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            await settle(loop, lambda: not registered(loop, a.fileno()))

    loop.run_until_complete(main())


def test_cancelled_sendall_stops_sending(loop):
    async def main():
        a, b = tcp_pair()
        with a, b:
            filled = fill_send_buffer(a)
            task = loop.create_task(loop.sock_sendall(a, b"hello" * 1000))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await settle(loop, lambda: not registered(loop, a.fileno()))
            await loop.sock_sendall(a, b"world")
            a.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := await loop.sock_recv(b, 1 << 16):
                got += chunk
            assert b"hello" not in got
            assert got.endswith(b"world")
            assert len(got) == filled + 5

    loop.run_until_complete(main())


def test_sendall_to_a_reset_peer_raises_with_errno(loop):
    async def main():
        a, b = tcp_pair()
        with a:
            sender = loop.create_task(loop.sock_sendall(a, b"x" * (16 * 1024 * 1024)))
            await asyncio.sleep(0)
            assert not sender.done()  # waiting for the peer to read
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            b.close()
            with pytest.raises((ConnectionResetError, BrokenPipeError)) as info:
                await asyncio.wait_for(sender, WAIT)
            assert info.value.errno in (errno_mod.ECONNRESET, errno_mod.EPIPE)
            # At once, on a socket the peer has reset.
            with pytest.raises((ConnectionResetError, BrokenPipeError)) as info:
                for _ in range(3):
                    await loop.sock_sendall(a, b"more")
            assert info.value.errno in (errno_mod.ECONNRESET, errno_mod.EPIPE)

    loop.run_until_complete(main())


def test_sendall_argument_errors_are_the_socket_modules(loop):
    async def main():
        a, b = tcp_pair()
        with a, b:
            with pytest.raises(TypeError, match="bytes-like"):
                await loop.sock_sendall(a, 123)
            with pytest.raises(TypeError, match="bytes-like"):
                await loop.sock_sendall(a, "text")
            assert await loop.sock_sendall(a, b"") is None

    loop.run_until_complete(main())


def udp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    a = nonblocking(socket.socket(family, socket.SOCK_DGRAM))
    b = nonblocking(socket.socket(family, socket.SOCK_DGRAM))
    a.bind((host, 0))
    b.bind((host, 0))
    return a, b


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_udp_recvfrom_waits_and_sendto_returns_the_count(loop, family):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main():
        try:
            a, b = udp_pair(family)
        except OSError as exc:
            pytest.skip(f"no loopback for {family!r}: {exc}")
        with a, b:
            pending = loop.create_task(loop.sock_recvfrom(a, 100))
            await asyncio.sleep(0)
            assert not pending.done()
            assert await loop.sock_sendto(b, b"ping", a.getsockname()) == 4
            assert await asyncio.wait_for(pending, WAIT) == (b"ping", b.getsockname())
            buf = bytearray(8)
            pending = loop.create_task(loop.sock_recvfrom_into(a, buf, 3))
            await asyncio.sleep(0)
            await loop.sock_sendto(b, bytearray(b"abcdef"), a.getsockname())
            # nbytes=3 truncates the datagram, as socket.recvfrom_into does.
            assert await asyncio.wait_for(pending, WAIT) == (3, b.getsockname())
            assert bytes(buf) == b"abc" + bytes(5)
            # A host name goes through the socket module's own resolution.
            if family == socket.AF_INET:
                port = a.getsockname()[1]
                assert await loop.sock_sendto(b, memoryview(b"xyz"), ("localhost", port)) == 3
                assert await loop.sock_recvfrom(a, 100) == (b"xyz", b.getsockname())

    loop.run_until_complete(main())


def test_cancelled_recvfrom_consumes_no_datagram(loop):
    async def main():
        a, b = udp_pair()
        with a, b:
            pending = loop.create_task(loop.sock_recvfrom(a, 100))
            await asyncio.sleep(0)
            pending.cancel()
            b.sendto(b"kept", a.getsockname())
            with pytest.raises(asyncio.CancelledError):
                await pending
            await settle(loop, lambda: not registered(loop, a.fileno()))
            await asyncio.sleep(0.01)
            assert await loop.sock_recvfrom(a, 100) == (b"kept", b.getsockname())

    loop.run_until_complete(main())


def test_sendto_waits_when_the_receiver_queue_is_full(loop):
    """A Unix datagram sender gets EAGAIN while its peer's queue is full: sock_sendto
    waits, then sends once the peer reads."""

    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path_a = os.path.join(tmp, "a")
            a = nonblocking(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            b = nonblocking(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            with a, b:
                a.bind(path_a)
                b.bind(os.path.join(tmp, "b"))
                sent = 0
                with pytest.raises(BlockingIOError):
                    while True:
                        b.sendto(b"x" * 64, path_a)
                        sent += 1
                pending = loop.create_task(loop.sock_sendto(b, b"last", path_a))
                await asyncio.sleep(0.01)
                assert not pending.done()
                for _ in range(sent):
                    assert a.recv(100) == b"x" * 64
                assert await asyncio.wait_for(pending, WAIT) == 4
                assert await loop.sock_recv(a, 100) == b"last"

    loop.run_until_complete(main())


def test_accept_many_connections(loop):
    count = 200

    async def main():
        srv = listener()
        srv.listen(count)
        with srv:
            clients: list[socket.socket] = []
            accepted: list[tuple[socket.socket, object]] = []

            async def acceptor():
                while len(accepted) < count:
                    accepted.append(await loop.sock_accept(srv))

            task = loop.create_task(acceptor())
            await asyncio.sleep(0)
            assert not task.done()  # waiting for a connection
            for _ in range(count):
                c = nonblocking(socket.socket())
                await loop.sock_connect(c, srv.getsockname())
                clients.append(c)
            await asyncio.wait_for(task, WAIT)
            try:
                assert {addr for _, addr in accepted} == {c.getsockname() for c in clients}
                for conn, _ in accepted:
                    assert conn.gettimeout() == 0
                    assert type(conn) is socket.socket
                    assert conn.family == socket.AF_INET
                    assert conn.type == socket.SOCK_STREAM
                    assert not conn.get_inheritable()
                # Each accepted socket works.
                await loop.sock_sendall(clients[-1], b"hi")
                by_addr = {addr: conn for conn, addr in accepted}
                conn = by_addr[clients[-1].getsockname()]
                assert await loop.sock_recv(conn, 10) == b"hi"
            finally:
                for conn, _ in accepted:
                    conn.close()
                for c in clients:
                    c.close()
            await settle(loop, lambda: not registered(loop, srv.fileno()))

    loop.run_until_complete(main())


def test_cancelled_accept_loses_no_connection(loop):
    async def main():
        srv = listener()
        with srv:
            pending = loop.create_task(loop.sock_accept(srv))
            await asyncio.sleep(0)
            pending.cancel()
            client = socket.create_connection(srv.getsockname())
            with client:
                with pytest.raises(asyncio.CancelledError):
                    await pending
                await settle(loop, lambda: not registered(loop, srv.fileno()))
                await asyncio.sleep(0.01)
                conn, addr = await asyncio.wait_for(loop.sock_accept(srv), WAIT)
                with conn:
                    assert addr == client.getsockname()

    loop.run_until_complete(main())


@pytest.mark.ferroloop_only
def test_accept_cancelled_as_the_connection_arrives_loses_nothing(ferroloop):
    """Cancelled by a callback that runs before the watcher in the iteration whose poll
    found a connection: the watcher must not accept it. (asyncio's `_sock_accept` does not
    check the future there: it accepts, fails to set the result on the cancelled future and
    the connection is dropped; ferroloop checks, as asyncio's other `sock_*` callbacks do.)"""
    loop = ferroloop.new_event_loop()

    async def main():
        srv = listener()
        with srv:
            pending = loop.create_task(loop.sock_accept(srv))
            await asyncio.sleep(0)
            client = socket.create_connection(srv.getsockname())
            with client:
                loop.call_soon(pending.cancel)
                with pytest.raises(asyncio.CancelledError):
                    await pending
                conn, addr = await asyncio.wait_for(loop.sock_accept(srv), WAIT)
                with conn:
                    assert addr == client.getsockname()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_unix_accept_address_and_abstract_recvfrom(loop):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.sock")
            srv = nonblocking(socket.socket(socket.AF_UNIX))
            srv.bind(path)
            srv.listen()
            with srv:
                pending = loop.create_task(loop.sock_accept(srv))
                await asyncio.sleep(0)
                client = nonblocking(socket.socket(socket.AF_UNIX))
                await loop.sock_connect(client, path)
                conn, addr = await asyncio.wait_for(pending, WAIT)
                with conn, client:
                    assert addr == client.getsockname() == ""
                    assert conn.family == socket.AF_UNIX
        a = nonblocking(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        b = nonblocking(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        with a, b:
            a.bind(b"\0ferroloop-test-a-" + str(os.getpid()).encode())
            b.bind(b"\0ferroloop-test-b-" + str(os.getpid()).encode())
            pending = loop.create_task(loop.sock_recvfrom(a, 100))
            await asyncio.sleep(0)
            await loop.sock_sendto(b, b"abstract", a.getsockname())
            assert await asyncio.wait_for(pending, WAIT) == (b"abstract", b.getsockname())

    loop.run_until_complete(main())


def test_connect_waits_then_completes_and_cancel_removes_the_watcher(loop):
    async def main():
        srv = listener()
        with srv:
            client = nonblocking(socket.socket())
            with client:
                await asyncio.wait_for(loop.sock_connect(client, srv.getsockname()), WAIT)
                assert client.getpeername() == srv.getsockname()
                await settle(loop, lambda: not registered(loop, client.fileno()))
        # A connection that cannot complete (no SYN-ACK from a blackhole address) is cancelled.
        client = nonblocking(socket.socket())
        with client:
            task = loop.create_task(loop.sock_connect(client, ("192.0.2.1", 9)))
            for _ in range(3):
                await asyncio.sleep(0)
            if not registered(loop, client.fileno()):
                await asyncio.sleep(0.01)  # a network that answers (unreachable) at once
            if task.done():
                pytest.skip(f"connect to a blackhole address finished: {task.exception()!r}")
            assert registered(loop, client.fileno())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await settle(loop, lambda: not registered(loop, client.fileno()))

    loop.run_until_complete(main())


def test_connection_refused_errno_and_no_reference_cycle(loop):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    caught: list[BaseException] = []

    async def main():
        client = nonblocking(socket.socket())
        try:
            await loop.sock_connect(client, ("127.0.0.1", port))
        except OSError as exc:
            caught.append(exc)
        finally:
            client.close()

    loop.run_until_complete(main())
    exc = caught.pop()
    assert isinstance(exc, ConnectionRefusedError)
    assert exc.errno == errno_mod.ECONNREFUSED
    gc.collect()
    # asyncio breaks the cycle exception -> traceback -> frame -> future -> exception
    # (`fut = None` in sock_connect); anyio checks for it.
    assert gc.get_referrers(exc) == []


@pytest.mark.parametrize(
    "call",
    ["recv", "recv_into", "recvfrom", "recvfrom_into", "sendall", "sendto", "accept"],
)
def test_blocking_socket_refused_for_every_operation(loop, call):
    loop.set_debug(True)  # asyncio checks only in debug mode; ferroloop always

    async def main():
        a, b = socket.socketpair()
        with a, b:
            coro = {
                "recv": lambda: loop.sock_recv(a, 1),
                "recv_into": lambda: loop.sock_recv_into(a, bytearray(1)),
                "recvfrom": lambda: loop.sock_recvfrom(a, 1),
                "recvfrom_into": lambda: loop.sock_recvfrom_into(a, bytearray(1)),
                "sendall": lambda: loop.sock_sendall(a, b"x"),
                "sendto": lambda: loop.sock_sendto(a, b"x", None),
                "accept": lambda: loop.sock_accept(a),
            }[call]()
            with pytest.raises(ValueError, match="non-blocking"):
                await coro

    loop.run_until_complete(main())


def test_nothing_happens_until_the_call_is_awaited(loop):
    async def main():
        a, b = tcp_pair()
        with a, b:
            b.send(b"data")
            coro = loop.sock_recv(a, 100)
            assert asyncio.iscoroutine(coro)
            await asyncio.sleep(0.01)
            coro.close()  # never run: nothing read, nothing watched
            assert not registered(loop, a.fileno())
            assert await loop.sock_recv(a, 100) == b"data"
            # A started then closed call stops watching.
            coro = loop.sock_recv(a, 100)
            waiting = loop.create_task(coro)
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

    loop.run_until_complete(main())


def test_gather_and_wait_for_take_sock_calls(loop):
    async def main():
        a, b = tcp_pair()
        with a, b:
            results = await asyncio.gather(
                loop.sock_sendall(b, b"abc"), asyncio.wait_for(loop.sock_recv(a, 3), WAIT)
            )
            assert results == [None, b"abc"]
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_recv(a, 3), 0.05)
            b.send(b"after")
            assert await loop.sock_recv(a, 10) == b"after"

    loop.run_until_complete(main())


class CountingSocket(socket.socket):
    """Overrides the socket methods the loops call: both loops must go through them."""

    calls: list[str]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def recv(self, n, *args):
        self.calls.append("recv")
        return super().recv(n, *args).upper()

    def recv_into(self, buf, *args):
        self.calls.append("recv_into")
        return super().recv_into(buf, *args)

    def send(self, data, *args):
        self.calls.append("send")
        return super().send(data, *args)

    def recvfrom(self, n, *args):
        self.calls.append("recvfrom")
        return super().recvfrom(n, *args)

    def sendto(self, data, *args):
        self.calls.append("sendto")
        return super().sendto(data, *args)


def test_socket_subclass_overriding_methods_is_called(loop):
    async def main():
        srv = listener()
        with srv:
            a = nonblocking(CountingSocket())
            await loop.sock_connect(a, srv.getsockname())
            b, _ = srv.accept()
            b.setblocking(False)
            with a, b:
                pending = loop.create_task(loop.sock_recv(a, 100))
                await asyncio.sleep(0)
                b.send(b"shout")
                assert await asyncio.wait_for(pending, WAIT) == b"SHOUT"
                await loop.sock_sendall(a, b"x" * 10)
                assert drain(b) == b"x" * 10
                buf = bytearray(10)
                b.send(b"into")
                await asyncio.sleep(0.01)
                assert await loop.sock_recv_into(a, buf) == 4
                assert "recv" in a.calls and "send" in a.calls and "recv_into" in a.calls
        u1 = nonblocking(CountingSocket(socket.AF_INET, socket.SOCK_DGRAM))
        u2 = nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with u1, u2:
            u1.bind(("127.0.0.1", 0))
            u2.bind(("127.0.0.1", 0))
            await loop.sock_sendto(u1, b"dgram", u2.getsockname())
            u2_data = await loop.sock_recvfrom(u2, 100)
            assert u2_data == (b"dgram", u1.getsockname())
            u2.sendto(b"back", u1.getsockname())
            assert await loop.sock_recvfrom(u1, 100) == (b"back", u2.getsockname())
            assert u1.calls == ["sendto", "recvfrom"]

    loop.run_until_complete(main())


class PlainSubclass(socket.socket):
    __slots__ = ()


def test_socket_subclass_without_overrides_and_instance_override(loop):
    async def main():
        a = nonblocking(PlainSubclass())
        srv = listener()
        with srv, a:
            await loop.sock_connect(a, srv.getsockname())
            b, _ = srv.accept()
            with b:
                b.setblocking(False)
                b.send(b"plain")
                await asyncio.sleep(0.01)
                assert await loop.sock_recv(a, 100) == b"plain"
        # A subclass with an instance dict: a method replaced on the instance is called.
        c = nonblocking(CountingSocket())
        srv = listener()
        with srv, c:
            await loop.sock_connect(c, srv.getsockname())
            d, _ = srv.accept()
            with d:
                c.recv = lambda n: b"from the instance"  # type: ignore[method-assign]
                d.send(b"ignored")
                await asyncio.sleep(0.01)
                assert await loop.sock_recv(c, 100) == b"from the instance"

    loop.run_until_complete(main())


# ---------------------------------------------------------------------------------------
# A socket between operations. (ferroloop keeps a finished operation's fd registered
# edge-triggered for the next operation on the same socket object: these must hold anyway.)


def test_finished_socket_receiving_data_does_not_spin_the_loop(loop):
    async def main():
        a, b = tcp_pair()
        with a, b:
            pending = loop.create_task(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            b.send(b"first")
            assert await asyncio.wait_for(pending, WAIT) == b"first"
            # Nobody reads now; data keeps arriving while the loop idles.
            b.send(b"second")
            cpu0 = time.process_time()
            for _ in range(5):
                b.send(b"more")
                await asyncio.sleep(0.05)
            assert time.process_time() - cpu0 < 0.1, "the loop spun on an unwatched socket"
            assert await loop.sock_recv(a, 100) == b"second" + b"more" * 5

    loop.run_until_complete(main())


def reuse_fd(srv: socket.socket, closing: socket.socket) -> tuple[socket.socket, socket.socket]:
    """Closes `closing`, then connects a new socket that gets its fd number back (the lowest
    free one) to `srv`; returns (new socket, its accepted peer)."""
    fd = closing.fileno()
    closing.close()
    fillers = []  # take any lower free fd numbers
    try:
        for _ in range(10):
            new = socket.socket()
            if new.fileno() == fd:
                break
            fillers.append(new)
        else:
            pytest.skip("the fd number was not reused")
    finally:
        for f in fillers:
            f.close()
    new.connect(srv.getsockname())
    peer, _ = srv.accept()
    return nonblocking(new), nonblocking(peer)


def test_fd_number_reused_by_a_new_socket_is_watched(loop):
    async def main():
        srv = listener()
        a, b = tcp_pair()
        with srv, b:
            pending = loop.create_task(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            b.send(b"x")
            assert await asyncio.wait_for(pending, WAIT) == b"x"
            c, d = reuse_fd(srv, a)
            with c, d:
                pending = loop.create_task(loop.sock_recv(c, 10))
                await asyncio.sleep(0.01)
                assert not pending.done()
                d.send(b"new")
                assert await asyncio.wait_for(pending, WAIT) == b"new"

    loop.run_until_complete(main())


def test_closed_socket_whose_file_lives_on_in_a_dup(loop):
    """The file of a closed socket stays open through a dup; its fd number goes to a new
    socket. Data for the old file must not complete the new socket's call, nor spin the
    loop."""

    async def main():
        srv = listener()
        a, b = tcp_pair()
        with srv, b:
            pending = loop.create_task(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            b.send(b"x")
            assert await asyncio.wait_for(pending, WAIT) == b"x"
            dup = socket.socket(fileno=os.dup(a.fileno()))
            c, d = reuse_fd(srv, a)
            with dup, c, d:
                pending = loop.create_task(loop.sock_recv(c, 10))
                await asyncio.sleep(0.01)
                cpu0 = time.process_time()
                for _ in range(5):
                    b.send(b"old")  # readable on the dup's file, not on `c`
                    await asyncio.sleep(0.02)
                assert time.process_time() - cpu0 < 0.1, "the loop spun"
                assert not pending.done()
                d.send(b"new")
                assert await asyncio.wait_for(pending, WAIT) == b"new"
                dup.setblocking(True)
                assert dup.recv(100) == b"old" * 5

    loop.run_until_complete(main())


def test_reader_and_transport_after_sock_calls_are_level_triggered(loop):
    async def main():
        a, b = tcp_pair()
        with a, b:
            pending = loop.create_task(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            b.send(b"x")
            assert await asyncio.wait_for(pending, WAIT) == b"x"
            assert loop.remove_reader(a.fileno()) is False
            # add_reader's contract: called again while data is left.
            got = bytearray()
            done = loop.create_future()

            def on_readable():
                got.extend(a.recv(1))
                if len(got) == 3:
                    loop.remove_reader(a.fileno())
                    done.set_result(None)

            loop.add_reader(a.fileno(), on_readable)
            b.send(b"abc")
            await asyncio.wait_for(done, WAIT)
            assert got == b"abc"
            # sock_* again on the same socket, then a transport over it.
            pending = loop.create_task(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            b.send(b"y")
            assert await asyncio.wait_for(pending, WAIT) == b"y"
            received = loop.create_future()

            class Proto(asyncio.Protocol):
                def data_received(self, data):
                    if not received.done():
                        received.set_result(data)

            transport, _ = await loop.create_connection(Proto, sock=a)
            b.send(b"to the transport")
            assert await asyncio.wait_for(received, WAIT) == b"to the transport"
            transport.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


def test_fd_owned_by_a_transport_is_refused_when_the_call_would_wait(loop):
    async def main():
        a, b = tcp_pair()
        with b:
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            try:
                with pytest.raises(RuntimeError, match="is used by transport"):
                    await loop.sock_recv(a, 10)
                with pytest.raises(RuntimeError, match="is used by transport"):
                    await loop.sock_recv_into(a, bytearray(10))
            finally:
                transport.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


def test_two_waiting_calls_on_one_socket_the_second_replaces_the_first(loop):
    """asyncio's add_reader semantics: the second call's watcher replaces the first's, which
    then never completes (asyncio does the same); the second completes."""

    async def main():
        a, b = tcp_pair()
        with a, b:
            first = loop.create_task(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            second = loop.create_task(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            b.send(b"data")
            assert await asyncio.wait_for(second, WAIT) == b"data"
            await asyncio.sleep(0.01)
            assert not first.done()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert not registered(loop, a.fileno())

    loop.run_until_complete(main())
