"""The transport state matrix: every transport kind, in every state, under every method.

Each cell (kind, state, method) opens a transport, brings it into the state, calls the method
once, lets the loop run until nothing moves, closes what is still open, and records what a
user can observe: the call's return value (or its type, or the exception it raised), the
protocol callbacks in order, how many times `connection_lost` ran, whether the peer received
exactly the bytes the transport accepted (and the transport what the peer sent), what reached
the exception handler and asyncio's logger. The cell runs on stock asyncio
(`asyncio.SelectorEventLoop`, the specification) and then on ferroloop, in the same process,
and the two records must be equal.

- Kinds: TCP (`create_connection` to a `create_server` peer on 127.0.0.1), Unix stream (the
  same over a path in a temporary folder), SSL over TCP (both ends with `ssl=`, a self-signed
  certificate made at test time by `openssl req`), read and write pipes (`os.pipe()`), UDP
  (`create_datagram_endpoint` connected to a plain socket on 127.0.0.1) and Unix datagram
  (`socket.socketpair(AF_UNIX, SOCK_DGRAM)` passed as `sock=`; the peer end is bound to an
  abstract name, because with an unnamed peer the transport's `peername` is `''`, which
  asyncio's `sendto()` takes for "not connected": it calls `sock.sendto(data, None)` and
  fails with a fatal TypeError, ferroloop likewise).
- States: one `enter_*` function each (`STATES_ENTER`); the method is called right after it
  returns, in the same callback. The pairs no transport of that kind can be in are listed in
  `UNREACHABLE` with the reason.
- Methods: `METHODS`, the union of the stream and datagram transport interfaces, so every
  kind also meets the methods it does not support (asyncio raises `AttributeError`, or
  `NotImplementedError` where the class inherits the abstract `ReadTransport` /
  `WriteTransport` method).
- Where stock asyncio itself misbehaves in a cell, `ASYNCIO_BUGS` says what it does, what
  ferroloop must do instead and why; the test checks that asyncio still does what the table
  says and holds ferroloop to the corrected record.

The peer of a stream socket is the server side's transport on the same loop, driven by
`Peer`; the peer of a pipe or a datagram socket is the other raw file descriptor, read and
written by the test itself (`RawPeer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ferroloop
import pytest

pytestmark = pytest.mark.timeout(30)

KINDS = ("tcp", "unix", "ssl", "read_pipe", "write_pipe", "udp", "unix_dgram")
STREAMS = ("tcp", "unix", "ssl")
DATAGRAMS = ("udp", "unix_dgram")
STATES = (
    "open",
    "write_blocked",
    "read_paused",
    "closing_pending",
    "closed",
    "peer_reset",
    "aborted",
    "loop_closed",
)
METHODS = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "close",
    "abort",
    "is_closing",
    "pause_reading",
    "resume_reading",
    "is_reading",
    "set_write_buffer_limits",
    "get_write_buffer_limits",
    "get_write_buffer_size",
    "get_extra_info",
    "set_protocol",
    "get_protocol",
    "sendto",
)
UNREACHABLE = {
    ("read_pipe", "write_blocked"): "a read pipe does not write",
    ("write_pipe", "read_paused"): "a write pipe does not read (pause_reading() raises)",
    ("read_pipe", "aborted"): "a read pipe has no abort() (asyncio 3.11-3.13)",
    ("udp", "write_blocked"): "UDP on loopback never refuses a datagram (a full receiver "
    "drops it), so nothing is ever queued",
    ("udp", "closing_pending"): "nothing is ever queued on UDP (see write_blocked)",
}
CELLS = [
    (kind, state, method)
    for kind, state, method in itertools.product(KINDS, STATES, METHODS)
    if (kind, state) not in UNREACHABLE
]

SETTLE_LIMIT = 2.0  # seconds a cell may take to go quiet (a hang is a difference too)
MiB = 1 << 20
_PATTERN = bytes(range(251)) * (MiB // 251 + 2)
_counter = itertools.count()


# ---------------------------------------------------------------------------------------
# What a cell observes.


@dataclass
class Observed:
    """Everything the transport's protocol(s), the peer and the loop report during a cell."""

    events: list[tuple[str, ...]] = field(default_factory=list)
    inbound: list[bytes] = field(default_factory=list)  # what the transport received
    lost: int = 0
    handler: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


class Recorder(asyncio.Protocol, asyncio.DatagramProtocol):
    """The one protocol of every cell: records each callback (tagged with `tag` for the
    protocol that `set_protocol()` installs) and what it received."""

    def __init__(self, seen: Observed, tag: str = "") -> None:
        self.seen = seen
        self.tag = tag

    def _note(self, *event: str) -> None:
        self.seen.events.append((self.tag + event[0], *event[1:]))

    def connection_made(self, transport: Any) -> None:
        self._note("connection_made")

    def data_received(self, data: bytes) -> None:
        self._note("data_received")
        self.seen.inbound.append(data)

    def eof_received(self) -> None:
        self._note("eof_received")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._note("datagram_received")
        self.seen.inbound.append(data)

    def error_received(self, exc: Exception) -> None:
        self._note("error_received", type(exc).__name__)

    def pause_writing(self) -> None:
        self._note("pause_writing")

    def resume_writing(self) -> None:
        self._note("resume_writing")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._note("connection_lost", type(exc).__name__ if exc else "None")
        self.seen.lost += 1


class _LogCatcher(logging.Handler):
    def __init__(self, seen: Observed) -> None:
        super().__init__(logging.WARNING)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.logs.append(f"{record.levelname}: {record.msg}")


# ---------------------------------------------------------------------------------------
# Peers: the other end of the transport under test.


class PeerProtocol(asyncio.Protocol):
    """The server side of a stream connection: collects what arrives, notes EOF and loss."""

    def __init__(self, ready: asyncio.Future) -> None:
        self.ready = ready
        self.transport: Any = None
        self.received = bytearray()
        self.events: list[str] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if not self.ready.done():
            self.ready.set_result(self)

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(f"lost {type(exc).__name__}" if exc else "lost")


class Peer:
    """A stream peer: a `create_server` transport on the loop under test."""

    def __init__(self, server: Any, proto: PeerProtocol) -> None:
        self.server = server
        self.proto = proto
        self.paused = False

    @property
    def received(self) -> bytes:
        return bytes(self.proto.received)

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(self.proto.events)

    def alive(self) -> bool:
        return not self.proto.transport.is_closing()

    def pause(self) -> None:
        self.proto.transport.pause_reading()
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.alive():
            self.proto.transport.resume_reading()
        self.paused = False

    def send(self, data: bytes) -> bool:
        if not self.alive():
            return False
        self.proto.transport.write(data)
        return True

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel answers with an RST."""
        sock = self.proto.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.proto.transport.abort()

    def pump(self) -> None:
        pass  # the loop reads for it

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # on a closed loop
            if self.alive():
                self.proto.transport.close()
            self.server.close()


class RawPeer:
    """A pipe end or a datagram socket the test reads and writes itself, without the loop."""

    def __init__(
        self, fd: int | None = None, sock: socket.socket | None = None, reads: bool = True
    ) -> None:
        self.fd = fd
        self.sock = sock
        self.reads = reads  # False for the write end of a read pipe
        self.paused = False
        self.received: list[bytes] = []
        self.events: tuple[str, ...] = ()
        if sock is not None:
            sock.setblocking(False)
        elif fd is not None:
            os.set_blocking(fd, False)

    def alive(self) -> bool:
        return self.fd is not None or self.sock is not None

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def send(self, data: bytes) -> bool:
        try:
            if self.sock is not None:
                self.sock.send(data)
            elif self.fd is not None:
                os.write(self.fd, data)
            else:
                return False
        except OSError:
            return False
        return True

    def pump(self) -> None:
        while self.reads and not self.paused and self.alive():
            try:
                data = self.sock.recv(65536) if self.sock else os.read(self.fd, MiB)  # type: ignore[arg-type]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.events += (f"error {type(exc).__name__}",)
                return
            if not data and self.sock is None:
                self.events += ("eof",)
                self.close()
                return
            self.received.append(data)

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------------------
# One transport, its peer and what both saw.


@dataclass
class Conn:
    kind: str
    loop: asyncio.AbstractEventLoop
    transport: Any
    proto: Recorder
    peer: Any
    seen: Observed
    sent: list[bytes] = field(default_factory=list)  # written on the way into the state
    call_data: list[bytes] = field(default_factory=list)  # what the method was given
    sent_in: list[bytes] = field(default_factory=list)  # what the peer sent the transport

    @property
    def datagrams(self) -> bool:
        return self.kind in DATAGRAMS

    def send_out(self, data: bytes) -> None:
        """Writes through the transport (an exception leaves the state unreached)."""
        if self.datagrams:
            self.transport.sendto(data)
        else:
            self.transport.write(data)
        self.sent.append(data)

    def send_in(self, data: bytes) -> None:
        if self.kind != "write_pipe" and self.peer.send(data):
            self.sent_in.append(data)

    def buffered(self) -> int:
        try:
            return int(self.transport.get_write_buffer_size())
        except Exception:  # noqa: BLE001 - read pipes have none; a broken one counts as 0
            return 0

    def snapshot(self) -> tuple[Any, ...]:
        received = self.peer.received
        return (
            len(self.seen.events),
            sum(map(len, self.seen.inbound)),
            len(received) if isinstance(received, bytes) else sum(map(len, received)),
            self.peer.events,
            self.buffered(),
        )


def payload(n: int) -> bytes:
    """n bytes of a 251-periodic pattern that starts at a new offset each time."""
    start = next(_counter) % 251
    return _PATTERN[start : start + n]


async def quiesce(c: Conn, rounds: int = 4) -> None:
    """Runs the loop until nothing changes for `rounds` iterations and then for a 1 ms poll
    (loopback I/O is visible at once; the poll is the margin), or for SETTLE_LIMIT."""
    deadline = c.loop.time() + SETTLE_LIMIT
    last, same = None, 0
    while c.loop.time() < deadline:
        await asyncio.sleep(0.001 if same == rounds else 0)
        c.peer.pump()
        now = c.snapshot()
        if now != last:
            last, same = now, 0
        elif same == rounds:
            return
        else:
            same += 1


async def wait_lost(c: Conn) -> None:
    deadline = c.loop.time() + SETTLE_LIMIT
    while not c.seen.lost and c.loop.time() < deadline:
        await asyncio.sleep(0.001)
        c.peer.pump()
    await quiesce(c)


# ---------------------------------------------------------------------------------------
# Opening a transport of each kind.


@dataclass
class Env:
    """Per-module resources: TLS contexts and a folder for Unix socket paths."""

    tmp: str
    server_tls: ssl.SSLContext | None
    client_tls: ssl.SSLContext | None


async def _open_stream(loop: Any, seen: Observed, kind: str, env: Env) -> Conn:
    ready = loop.create_future()
    proto = Recorder(seen)
    if kind == "unix":
        path = os.path.join(env.tmp, f"s{next(_counter)}")
        server = await loop.create_unix_server(lambda: PeerProtocol(ready), path)
        transport, _ = await loop.create_unix_connection(lambda: proto, path)
    else:
        tls = kind == "ssl"
        server = await loop.create_server(
            lambda: PeerProtocol(ready), "127.0.0.1", 0, ssl=env.server_tls if tls else None
        )
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(
            lambda: proto,
            "127.0.0.1",
            port,
            ssl=env.client_tls if tls else None,
            server_hostname="localhost" if tls else None,
        )
    peer = Peer(server, await asyncio.wait_for(ready, 5))
    return Conn(kind, loop, transport, proto, peer, seen)


async def _open_pipe(loop: Any, seen: Observed, kind: str, env: Env) -> Conn:
    rfd, wfd = os.pipe()
    proto = Recorder(seen)
    if kind == "read_pipe":
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(rfd, "rb", 0))
        peer = RawPeer(fd=wfd, reads=False)
    else:
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(wfd, "wb", 0))
        peer = RawPeer(fd=rfd)
    return Conn(kind, loop, transport, proto, peer, seen)


async def _open_datagram(loop: Any, seen: Observed, kind: str, env: Env) -> Conn:
    proto = Recorder(seen)
    if kind == "udp":
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.1", 0))
        transport, _ = await loop.create_datagram_endpoint(
            lambda: proto, local_addr=("127.0.0.1", 0), remote_addr=other.getsockname()
        )
        other.connect(transport.get_extra_info("sockname"))
    else:
        mine, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        other.bind(f"\0ferroloop-states-{os.getpid()}-{next(_counter)}")
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, sock=mine)
    return Conn(kind, loop, transport, proto, RawPeer(sock=other), seen)


OPEN: dict[str, Callable[..., Awaitable[Conn]]] = {
    "tcp": _open_stream,
    "unix": _open_stream,
    "ssl": _open_stream,
    "read_pipe": _open_pipe,
    "write_pipe": _open_pipe,
    "udp": _open_datagram,
    "unix_dgram": _open_datagram,
}


# ---------------------------------------------------------------------------------------
# States: each function brings an open transport into its state; the method is called right
# after it returns, in the same callback.


async def enter_open(c: Conn) -> None:
    pass


async def enter_write_blocked(c: Conn) -> None:
    """The peer stops reading; write (1 MiB at a time, or 32 datagrams of 4 KiB) until the
    transport holds data it could not send and has called pause_writing()."""
    c.peer.pause()
    for _ in range(32):
        if c.datagrams:
            for _ in range(32):
                c.send_out(payload(4096))
        else:
            c.send_out(payload(MiB))
        await asyncio.sleep(0)
        if c.buffered() > 0 and ("pause_writing",) in c.seen.events:
            return
    raise AssertionError(f"{c.kind}: writing not blocked after {len(c.sent)} writes")


async def enter_read_paused(c: Conn) -> None:
    """pause_reading(), then the peer sends: nothing may arrive."""
    c.transport.pause_reading()
    c.send_in(b"sent while paused")
    await quiesce(c)


async def enter_closing_pending(c: Conn) -> None:
    """close() while data is buffered (for a read pipe: while unread data is in the pipe)."""
    if c.kind == "read_pipe":
        c.send_in(b"unread at close")
    else:
        await enter_write_blocked(c)
    c.transport.close()


async def enter_closed(c: Conn) -> None:
    """write() then close() (issue 11's sequence), and connection_lost has run."""
    if c.kind != "read_pipe":
        c.send_out(b"hello")
    c.transport.close()
    await wait_lost(c)


async def enter_peer_reset(c: Conn) -> None:
    """The other end goes away abruptly, and the transport has noticed.

    Stream sockets: the peer leaves data unread and closes with SO_LINGER 0 (an RST; a Unix
    peer closing with unread data resets too). Pipes: the other end is closed. Datagram
    sockets: the peer socket is closed and a datagram sent to it reports the refusal."""
    if c.kind in STREAMS:
        c.peer.pause()
        c.send_out(b"left unread")
        await quiesce(c)
    c.peer.reset()
    if c.datagrams:
        c.send_out(b"to nobody")
        await quiesce(c)
    else:
        await wait_lost(c)


async def enter_aborted(c: Conn) -> None:
    """abort(); connection_lost has not run yet when the method is called."""
    c.transport.abort()


async def enter_loop_closed(c: Conn) -> None:
    """Open; `record_cell` closes the loop before the call (the call runs outside it)."""


STATES_ENTER: dict[str, Callable[[Conn], Awaitable[None]]] = {
    "open": enter_open,
    "write_blocked": enter_write_blocked,
    "read_paused": enter_read_paused,
    "closing_pending": enter_closing_pending,
    "closed": enter_closed,
    "peer_reset": enter_peer_reset,
    "aborted": enter_aborted,
    "loop_closed": enter_loop_closed,
}
assert tuple(STATES_ENTER) == STATES


# ---------------------------------------------------------------------------------------
# The method call and its record.

EXTRA_KEYS = ("socket", "sockname", "peername", "pipe", "sslcontext", "ssl_object", "peercert")


def call_method(c: Conn, method: str) -> str:
    """Calls `method` as a user would; returns a description of its outcome."""
    t = c.transport
    try:
        if method == "write":
            c.call_data = [b"<write>"]
            value = t.write(b"<write>")
        elif method == "writelines":
            c.call_data = [b"<writelines-1><writelines-2>"]
            value = t.writelines([b"<writelines-1>", b"<writelines-2>"])
        elif method == "sendto":
            c.call_data = [b"<sendto>"]
            value = t.sendto(b"<sendto>")
        elif method == "set_write_buffer_limits":
            value = t.set_write_buffer_limits(high=4096, low=1024)
        elif method == "set_protocol":
            value = t.set_protocol(Recorder(c.seen, tag="new:"))
        elif method == "get_extra_info":
            kinds = {key: type(t.get_extra_info(key)).__name__ for key in EXTRA_KEYS}
            kinds["missing"] = t.get_extra_info("no such key", "default")
            return repr(kinds)
        else:
            value = getattr(t, method)()
    except Exception as exc:  # noqa: BLE001 - the exception is the observation
        return f"raises {type(exc).__name__}"
    return describe(c, method, value)


def describe(c: Conn, method: str, value: Any) -> str:
    if method == "get_write_buffer_size" and isinstance(value, int):
        return "0" if value == 0 else "> 0"  # how much the kernel took varies
    if value is c.proto:
        return "the protocol"
    if value is None or isinstance(value, (bool, int, tuple)):
        return repr(value)
    return f"a {type(value).__name__}"


def verdict(before: list[bytes], call: list[bytes], got: list[bytes], stream: bool) -> str:
    """How what arrived compares with what was written before the call and by the call
    (whether or not the call raised). Streams compare bytes, datagram sockets datagrams."""
    if stream:
        before, call, got = [b"".join(before)], [b"".join(call)], [b"".join(got)]
        whole = [before[0] + call[0]]
        is_prefix = whole[0].startswith(got[0])
    else:
        whole = before + call
        is_prefix = whole[: len(got)] == got
    if got == whole:
        return "all"
    if got == before:
        return "all but the call's"
    return "a prefix" if is_prefix else "CORRUPTED"


def collapse(events: list[tuple[str, ...]]) -> tuple[str, ...]:
    """Events as strings; consecutive data_received / datagram_received count as one (how
    the bytes are split into calls is the kernel's business)."""
    out: list[str] = []
    for event in events:
        text = " ".join(event)
        if text.endswith("_received") and out and out[-1] == text:
            continue
        out.append(text)
    return tuple(out)


async def settle(c: Conn) -> None:
    """After the call: the peer reads again until everything has drained, then sends
    something (two steps, so that their callbacks come in a fixed order)."""
    c.peer.resume()
    await quiesce(c)
    c.send_in(b"sent after the call")
    await quiesce(c)


async def finish(c: Conn) -> str:
    """Closes the transport if it is still open, and lets connection_lost run."""
    outcome = "already lost"
    if not c.seen.lost:
        try:
            c.transport.close()
            outcome = "closed"
        except Exception as exc:  # noqa: BLE001
            outcome = f"close() raises {type(exc).__name__}"
        await wait_lost(c)
    c.peer.close()
    await quiesce(c)
    return outcome


def handler_entry(context: dict[str, Any]) -> str:
    """What reached the exception handler, without reprs (class names differ by loop)."""
    message = re.sub(r" callback .*", " callback", context.get("message", ""))
    return f"{message}: {type(context.get('exception')).__name__}"


def record_cell(
    new_loop: Callable[[], Any], env: Env, kind: str, state: str, method: str
) -> dict[str, Any]:
    """Runs one cell on a new loop; returns its record (a dict of strings and tuples)."""
    seen = Observed()
    catcher = _LogCatcher(seen)
    logging.getLogger("asyncio").addHandler(catcher)
    loop = new_loop()
    loop.set_exception_handler(lambda _loop, ctx: seen.handler.append(handler_entry(ctx)))
    c: Conn | None = None
    mark = {"call": 0, "close": 0}  # how many events came before each phase
    record: dict[str, Any] = {}
    try:
        c = loop.run_until_complete(OPEN[kind](loop, seen, kind, env))

        async def enter_and_call() -> str:
            try:
                await STATES_ENTER[state](c)
            except Exception as exc:  # noqa: BLE001 - reaching the state is observed too
                return f"entering {state} raises {type(exc).__name__}"
            mark["call"] = len(seen.events)
            return "" if state == "loop_closed" else call_method(c, method)

        record["result"] = loop.run_until_complete(enter_and_call())
        if state == "loop_closed":
            loop.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                record["result"] = call_method(c, method)
            mark["close"] = len(seen.events)
        else:
            loop.run_until_complete(settle(c))
            mark["close"] = len(seen.events)
            record["final close()"] = loop.run_until_complete(finish(c))
            got = c.peer.received
            if kind != "read_pipe":
                record["peer received"] = verdict(
                    c.sent,
                    c.call_data,
                    [got] if isinstance(got, bytes) else got,
                    stream=not c.datagrams,
                )
            if c.sent_in:
                record["transport received"] = verdict(
                    c.sent_in, [], seen.inbound, stream=not c.datagrams
                )
        record["events before the call"] = collapse(seen.events[: mark["call"]])
        record["events after the call"] = collapse(seen.events[mark["call"] : mark["close"]])
        record["events after the final close()"] = collapse(seen.events[mark["close"] :])
        record["connection_lost calls"] = seen.lost
        record["peer saw"] = c.peer.events
        record["exception handler"] = tuple(seen.handler)
        record["asyncio log"] = tuple(seen.logs)
        return record
    finally:
        logging.getLogger("asyncio").removeHandler(catcher)
        if not loop.is_closed():
            loop.close()
        asyncio.events._set_running_loop(None)
        if c is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                c.peer.close()
                if state == "loop_closed":  # the transport's fds close when it is collected
                    del c
                    gc.collect()


# ---------------------------------------------------------------------------------------
# Where stock asyncio is wrong. Each row: the cells, the first Python version it applies to,
# the record fields asyncio produces there, the ones ferroloop must produce instead, and why.
# The expected ferroloop record is asyncio's with `ferroloop_does` applied; an asyncio that
# already behaves as `ferroloop_does` (a later patch release with the fix) is fine too.


@dataclass(frozen=True)
class AsyncioBug:
    cells: tuple[str, ...]
    asyncio_does: dict[str, Any]
    ferroloop_does: dict[str, Any]
    why: str
    since: tuple[int, int] = (3, 11)


ASYNCIO_BUGS = (
    AsyncioBug(
        cells=("write_pipe-closed-abort", "write_pipe-peer_reset-abort"),
        asyncio_does={"result": "raises AttributeError"},
        ferroloop_does={"result": "None"},
        why="abort() of a write pipe whose connection_lost has run calls _close() again, "
        "which uses the loop the transport has dropped ('NoneType' object has no attribute "
        "'_remove_reader'). A socket transport's abort() does nothing then (_force_close() "
        "returns once _conn_lost is set); a pipe's should not raise either.",
    ),
    AsyncioBug(
        cells=("write_pipe-aborted-abort",),
        asyncio_does={"exception handler": ("Exception in callback: AttributeError",)},
        ferroloop_does={"exception handler": ()},
        why="a second abort() before connection_lost has run schedules a second "
        "_call_connection_lost(), which fails on the protocol and pipe the first one dropped "
        "(the protocol still hears connection_lost once). Socket transports ignore the "
        "second abort(); so should a pipe.",
    ),
    AsyncioBug(
        cells=("unix_dgram-closed-sendto",),
        asyncio_does={"result": "raises AttributeError"},
        ferroloop_does={"result": "None"},
        why="sendto() after connection_lost drops the datagram only on endpoints made with "
        "remote_addr= (`if self._conn_lost and self._address`); on one made from a connected "
        "sock= it calls send() on the socket it has dropped, then _fatal_error() on the loop "
        "it has dropped ('NoneType' object has no attribute 'call_exception_handler'). The "
        "datagram should be dropped, as on a UDP endpoint made with remote_addr=.",
    ),
    AsyncioBug(
        cells=("tcp-closing_pending-writelines", "unix-closing_pending-writelines"),
        since=(3, 12),
        asyncio_does={"result": "raises TypeError", "peer received": "all"},
        ferroloop_does={"result": "None"},
        why="3.12's writelines() queues the data behind the pending bytes, then calls "
        "self._write_ready, which close() has set to None ('NoneType' object is not "
        "callable): the data is sent, yet the caller gets an exception. write() queues it "
        "and returns None, as 3.11's writelines() does.",
    ),
    AsyncioBug(
        cells=("tcp-closed-writelines", "unix-closed-writelines"),
        since=(3, 12),
        asyncio_does={"result": "raises TypeError", "peer received": "all but the call's"},
        ferroloop_does={"result": "None"},
        why="3.12's writelines() has no _conn_lost check (CPython gh-136234): after close() "
        "and connection_lost it reaches the None _write_ready. write() drops the data and "
        "returns None, as 3.11's writelines() does.",
    ),
    AsyncioBug(
        cells=("tcp-peer_reset-writelines", "unix-peer_reset-writelines"),
        since=(3, 12),
        asyncio_does={"result": "raises AttributeError", "peer received": "a prefix"},
        ferroloop_does={"result": "None"},
        why="the same missing _conn_lost check (gh-136234) after a reset: writelines() "
        "registers a writer on the loop the transport has dropped ('NoneType' object has no "
        "attribute '_add_writer'). write() drops the data and returns None.",
    ),
)


def expected_record(reference: dict[str, Any], cell: str) -> dict[str, Any]:
    """asyncio's record, corrected where ASYNCIO_BUGS says asyncio is wrong."""
    for bug in ASYNCIO_BUGS:
        if cell not in bug.cells or sys.version_info < bug.since:
            continue
        does = {key: reference.get(key) for key in bug.asyncio_does}
        fixed = {key: reference.get(key) for key in bug.ferroloop_does}
        assert does == bug.asyncio_does or fixed == bug.ferroloop_does, (
            f"ASYNCIO_BUGS is stale for {cell}: asyncio now gives {does}; {bug.why}"
        )
        return {**reference, **bug.ferroloop_does}
    return reference


def check_invariants(record: dict[str, Any], state: str) -> None:
    """What must hold on any loop: connection_lost exactly once (never, once the loop is
    closed), and no byte lost out of order or sent twice."""
    assert record["connection_lost calls"] == (0 if state == "loop_closed" else 1), record
    assert "CORRUPTED" not in record.values(), record


# ---------------------------------------------------------------------------------------
# The test.


def _make_tls(folder: str) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    if shutil.which("openssl") is None:
        return None
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    folder = str(tmp_path_factory.mktemp("states"))
    tls = _make_tls(folder)
    return Env(folder, *(tls or (None, None)))


@pytest.mark.parametrize(("kind", "state", "method"), CELLS)
def test_cell(env: Env, kind: str, state: str, method: str) -> None:
    if kind == "ssl" and env.server_tls is None:
        pytest.skip("no openssl binary to make a certificate with")
    cell = f"{kind}-{state}-{method}"
    expected = expected_record(record_cell(asyncio.SelectorEventLoop, env, *cell.split("-")), cell)
    check_invariants(expected, state)
    actual = record_cell(ferroloop.new_event_loop, env, kind, state, method)
    assert actual == expected, "; ".join(
        f"{key}: expected {expected.get(key)!r}, ferroloop {actual.get(key)!r}"
        for key in sorted(expected.keys() | actual.keys())
        if expected.get(key) != actual.get(key)
    )
