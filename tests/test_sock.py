"""The low-level socket API (`sock_*`) and name resolution, on ferroloop and stock asyncio.

Loopback only. Every test runs on both loops unless marked otherwise."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import tempfile

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
