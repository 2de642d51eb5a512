"""What a server's accepted connection looks like, on ferroloop and stock asyncio.

ferroloop accepts a plain TCP or Unix server's connections natively and makes the socket
object only when asked (`_net._accept_connection`, `_transports._SocketBased._sock`); these
check that everything asyncio's accept path shows is the same: extra info before and after
close, the socket object's mode and options, contexts, failures of the protocol factory,
and servers that must keep asyncio's own path."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.timeout(60)


class Keep(asyncio.Protocol):
    """Keeps its transport; `lost` is set when the connection ends."""

    made: list[Keep] = []

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        Keep.made.append(self)

    def connection_lost(self, exc):  # type: ignore[override]
        self.lost.set_result(exc)


async def _serve_one(loop, family, protocol_factory=Keep):
    """A server of `family`, one client connected to it and the server's protocol."""
    Keep.made = []
    if family == socket.AF_UNIX:
        path = tempfile.mktemp(prefix="ferroloop-accept-", suffix=".sock")
        server = await loop.create_unix_server(protocol_factory, path)
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
    else:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        server = await loop.create_server(protocol_factory, host, 0)
        client = socket.create_connection(server.sockets[0].getsockname()[:2])
    for _ in range(100):
        if Keep.made:
            break
        await asyncio.sleep(0.01)
    return server, client, Keep.made[0]


def _families():
    families = [socket.AF_INET, socket.AF_UNIX]
    if socket.has_ipv6:
        try:
            socket.socket(socket.AF_INET6).close()
            families.append(socket.AF_INET6)
        except OSError:
            pass
    return families


@pytest.mark.parametrize("family", _families(), ids=lambda f: socket.AddressFamily(f).name)
def test_accepted_transport_shows_what_asyncio_shows(loop, family):
    async def main():
        server, client, proto = await _serve_one(loop, family)
        t = proto.transport
        listening = server.sockets[0]
        expected_peer = "" if family == socket.AF_UNIX else client.getsockname()
        assert t.get_extra_info("sslcontext") is None
        assert t.get_extra_info("nope", 5) == 5
        assert t.get_extra_info("peername") == expected_peer
        assert t.get_extra_info("sockname") == client.getpeername()
        wrapped = t.get_extra_info("socket")
        assert isinstance(wrapped, asyncio.trsock.TransportSocket)
        assert (wrapped.family, wrapped.type, wrapped.proto) == (
            listening.family,
            listening.type,
            listening.proto,
        )
        assert wrapped.fileno() == t._sock.fileno() >= 0
        assert t.get_extra_info("socket") is wrapped
        # The socket object: as asyncio's conn after `conn.setblocking(False)`.
        sock = t._sock
        assert type(sock) is socket.socket
        assert sock.gettimeout() == 0.0 and not sock.getblocking()
        assert not sock.get_inheritable()
        if family != socket.AF_UNIX:
            assert wrapped.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        t.write(b"hi")
        assert client.recv(2) == b"hi"
        t.close()
        assert await proto.lost is None
        # After close: the same values, and a closed socket object.
        assert t.get_extra_info("peername") == expected_peer
        assert t.get_extra_info("sockname") == client.getpeername()
        assert t.get_extra_info("socket") is wrapped
        assert wrapped.fileno() == -1
        assert t._sock is None
        assert "closed" in repr(t)
        assert set(t._extra) == {"peername", "socket", "sockname"}
        client.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


@pytest.mark.parametrize("family", _families(), ids=lambda f: socket.AddressFamily(f).name)
def test_extra_info_first_asked_after_close(loop, family):
    """Nothing asks for extra info while the connection is open: asyncio's values (both
    addresses, a closed socket of the listener's family, type and protocol) are there
    after the peer has gone."""

    async def main():
        server, client, proto = await _serve_one(loop, family)
        listening = server.sockets[0]
        expected_name = client.getpeername()
        expected_peer = "" if family == socket.AF_UNIX else client.getsockname()
        client.close()
        assert await proto.lost is None  # the peer's EOF closes the transport
        t = proto.transport
        assert t.get_extra_info("peername") == expected_peer
        assert t.get_extra_info("sockname") == expected_name
        wrapped = t.get_extra_info("socket")
        assert wrapped.fileno() == -1
        assert (wrapped.family, wrapped.type, wrapped.proto) == (
            listening.family,
            listening.type,
            listening.proto,
        )
        assert t._sock is None
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_each_connection_is_set_up_in_its_own_context(loop):
    """asyncio sets each accepted connection up in a task: the protocol factory runs in a
    copy of the server's context (nothing it sets reaches the next connection), and
    connection_made sees what the factory set."""
    var: contextvars.ContextVar[int] = contextvars.ContextVar("var", default=0)
    seen: list[tuple[str, int]] = []

    class Proto(asyncio.Protocol):
        def __init__(self) -> None:
            seen.append(("factory", var.get()))
            var.set(var.get() + 1)

        def connection_made(self, transport):  # type: ignore[override]
            seen.append(("made", var.get()))
            transport.close()

    async def main():
        server = await loop.create_server(Proto, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        clients = [socket.create_connection(address) for _ in range(3)]
        for _ in range(200):
            if len(seen) == 6:
                break
            await asyncio.sleep(0.01)
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert sorted(seen) == [("factory", 0)] * 3 + [("made", 1)] * 3
    assert var.get() == 0


def test_failing_protocol_factory_drops_the_connection_and_serving_goes_on(loop):
    """asyncio drops a connection whose protocol cannot be made (outside debug mode,
    silently); the peer sees it end, and the next connection is served."""
    calls = []

    def factory():
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError("no protocol for you")
        return Keep()

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        first = socket.create_connection(address)
        first.settimeout(5)
        ended = await loop.run_in_executor(None, first.recv, 1)
        assert ended == b""
        first.close()
        Keep.made = []
        second = socket.create_connection(address)
        for _ in range(200):
            if Keep.made:
                break
            await asyncio.sleep(0.01)
        assert len(Keep.made) == 1
        Keep.made[0].transport.close()
        second.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_listening_socket_subclass_accepts_through_its_own_method(loop):
    """asyncio calls the listening socket's `accept()`; a subclass that overrides it is
    still called (ferroloop then takes asyncio's own path)."""
    accepted = []

    class Counting(socket.socket):
        def accept(self):
            pair = super().accept()
            accepted.append(pair[1])
            return pair

    async def main():
        listener = Counting(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        server = await loop.create_server(Keep, sock=listener)
        Keep.made = []
        client = socket.create_connection(listener.getsockname())
        for _ in range(200):
            if Keep.made:
                break
            await asyncio.sleep(0.01)
        assert accepted == [client.getsockname()]
        Keep.made[0].transport.close()
        client.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_accepted_transport_of_a_server_that_closes_is_counted(loop):
    """The server counts natively accepted connections: `wait_closed()` (3.12+) waits for
    them, and 3.13's `close_clients()` closes them."""

    async def main():
        server, client, proto = await _serve_one(loop, socket.AF_INET)
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.05)
        if sys.version_info >= (3, 12):
            assert not waiter.done()
        if sys.version_info >= (3, 13):
            server.close_clients()
        else:
            proto.transport.close()
        await asyncio.wait_for(waiter, 5)
        assert await proto.lost is None
        client.close()

    loop.run_until_complete(main())


@pytest.mark.ferroloop_only
@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_UNIX], ids=["tcp", "unix"])
def test_plain_servers_make_no_socket_object_until_asked(debug, family):
    """The native path is taken for a plain server (and asyncio's in debug mode, which logs
    each connection's socket object); the transport is counted by its kind either way."""
    import ferroloop
    from ferroloop import _transports

    loop = ferroloop.new_event_loop()
    loop.set_debug(debug)

    async def main():
        server, client, proto = await _serve_one(loop, family)
        t = proto.transport
        kind = "unix" if family == socket.AF_UNIX else "tcp"
        assert loop.metrics().transports[kind] == 1
        if debug:
            assert type(t._sock_obj) is socket.socket
        else:
            assert t._sock_obj is _transports._NOT_MADE
            assert type(t._sock) is socket.socket
            assert t._sock_obj is t._sock
        t.close()
        await proto.lost
        client.close()
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


FACTORY_CLOSES_SERVER = r"""
import asyncio, socket, sys
if sys.argv[1] == "ferroloop":
    import ferroloop
    loop = ferroloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
reports = []
loop.set_exception_handler(lambda loop, context: reports.append(context["message"]))
others = []

async def main():
    server = None

    def factory():
        # Serve one connection, then stop listening; the listener's fd number is reused
        # at once by a blocking listening socket.
        old = server.sockets[0].fileno()
        server.close()
        other = socket.socket()
        other.bind(("127.0.0.1", 0))
        other.listen()
        others.append(other)
        print("reused", other.fileno() == old)
        return asyncio.Protocol()

    server = await loop.create_server(factory, "127.0.0.1", 0)
    client = socket.socket()
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname())
    await asyncio.sleep(0.3)
    client.close()

loop.run_until_complete(main())
loop.close()
for other in others:
    other.close()
print("reports", len(reports))
"""


def test_protocol_factory_that_closes_its_server(loop_kind):
    """A factory that closes its server (serve one connection, stop listening): the loop
    goes on, accepts nothing more on that fd number and reports nothing (asyncio runs the
    factory after its accept loop, so there it cannot matter)."""
    proc = subprocess.run(
        [sys.executable, "-c", FACTORY_CLOSES_SERVER, loop_kind],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reused True" in proc.stdout  # the case this is about happened
    assert proc.stdout.split()[-2:] == ["reports", "0"], proc.stdout
