"""The Python side of ferroloop's native stream transports.

Each class here subclasses the asyncio transport interface it implements (so
`isinstance(t, asyncio.Transport)` holds) and owns one native core (`src/transports/`: a
`NativeTransport` subclass), which does the per-read and per-write work and what asyncio's
transports share: closing, aborting, flow control, `_fatal_error`. A native class cannot also
derive from `asyncio.BaseTransport` (its `__slots__` give it a layout of its own), hence the
two objects. The core's hot methods are C method descriptors on these classes that forward
to the core (`_install_core_methods`), so `transport.write(data)` calls native code with no
Python frame in between and no per-transport cost.

What stays here runs once per connection: extra info, `_call_connection_lost`, `__repr__`,
`__del__`. Semantics are each CPython version's `selector_events._SelectorSocketTransport`
and `unix_events._UnixReadPipeTransport` / `_UnixWritePipeTransport`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import stat
import sys
import warnings
from asyncio import base_events, constants, futures, protocols, transports, trsock
from typing import Any

from ._ferroloop import StreamTransport, _install_core_methods, _socket_address, _socket_name

logger = logging.getLogger("asyncio")

# asyncio's `Server` counts its connections. 3.11 and 3.12: `_attach()`/`_detach()` keep a
# count; 3.13 keeps the transports themselves (`_attach(transport)`) for `close_clients()` and
# `abort_clients()` (base_events.Server of each version).
if sys.version_info >= (3, 13):

    def _server_attach(server: Any, transport: Any) -> None:
        server._attach(transport)

    def _server_detach(server: Any, transport: Any) -> None:
        server._detach(transport)

else:

    def _server_attach(server: Any, transport: Any) -> None:
        server._attach()

    def _server_detach(server: Any, transport: Any) -> None:
        server._detach()


# Socket methods asyncio's socket transport calls for its I/O. A socket whose class (or
# instance) replaces one of them gets its I/O through those methods, as with asyncio; plain
# sockets are read and written natively.
_SOCKET_IO = ("recv", "recv_into", "send", "sendmsg")
# asyncio 3.12+ flushes queued data with `sock.sendmsg(buffers)`; 3.11 with `sock.send`.
_FLUSH_WITH_SENDMSG = sys.version_info >= (3, 12) and hasattr(socket.socket, "sendmsg")


def _overrides_io(sock: Any, names: tuple[str, ...] = _SOCKET_IO) -> bool:
    """Whether any of `sock`'s methods `names` is not `socket.socket`'s own."""
    cls = type(sock)
    if cls is socket.socket:
        return False
    base = socket.socket
    if any(getattr(cls, name, None) is not getattr(base, name) for name in names):
        return True
    instance_dict = getattr(sock, "__dict__", None)
    return bool(instance_dict) and any(name in instance_dict for name in names)


# Methods each class forwards to its core's method of the same name: C method descriptors
# (`_install_core_methods`, src/transports/owner_methods.rs), so `transport.write(data)`
# makes no Python frame and no bound method, and a transport costs nothing per method.
_COMMON = ("is_closing", "is_reading", "pause_reading", "resume_reading", "_force_close")
_BUFFERED = ("get_write_buffer_size", "abort")
_WRITING = ("write", "write_eof", "can_write_eof")
# `writelines`: asyncio's pipe transports (every version) and its socket transport on 3.11
# inherit `WriteTransport.writelines`, which joins the data and calls `self.write` (so an
# overridden or mocked `write` sees it); ours do the same, by not defining it. The socket
# transport of 3.12+ has its own, forwarded to the core like the others (below).


class _NativeTransport:
    """What every native transport's owner shares: the core, the protocol, error paths."""

    _core: Any = None
    _loop: Any
    _extra: dict[str, Any]

    def _attach(self, loop: Any, core: Any, protocol: Any) -> None:
        """Takes ownership of `core`."""
        self._loop = loop
        self._core = core
        self.set_protocol(protocol)

    def _start(
        self, loop: Any, fd: int, kind: str, protocol: Any, family: int | None = None
    ) -> None:
        self._attach(loop, StreamTransport(loop, self, fd, kind, family), protocol)

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol, isinstance(protocol, protocols.BufferedProtocol))

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    @property
    def _protocol(self) -> Any:
        return self._core.get_protocol()

    @property
    def _closing(self) -> bool:
        return bool(self._core._closing)

    @property
    def _conn_lost(self) -> int:
        return int(self._core._conn_lost)

    @property
    def _paused(self) -> bool:
        return bool(self._core._paused)

    @property
    def _protocol_paused(self) -> bool:
        return bool(self._core._protocol_paused)

    def close(self) -> None:
        self._core.close()

    # is_closing, is_reading, pause_reading, resume_reading, _force_close: see _COMMON.

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        self._core._fatal_error(exc, message)

    def _debug_log(self, message: str) -> None:
        logger.debug("%r %s", self, message)

    def _fd_for_repr(self) -> int | None:
        return None  # each kind of transport says which fd it watches

    def _is_closed_for_repr(self) -> bool:
        return self._core is None

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        core = self._core
        if self._is_closed_for_repr():
            info.append("closed")
        elif core is not None and core._closing:
            info.append("closing")
        fd = self._fd_for_repr()
        info.append(f"fd={fd}")
        loop = getattr(self, "_loop", None)  # unset if __init__ failed early
        if loop is not None and not loop.is_closed() and fd is not None and core is not None:
            events = loop._fd_events(fd) or 0
            info.append("read=polling" if events & 1 else "read=idle")
            state = "polling" if events & 2 else "idle"
            info.append(f"write=<{state}, bufsize={self._core.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))


class _Buffered(_NativeTransport):
    """Transports with a write buffer (the methods of _BUFFERED, and the water marks)."""

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        """asyncio's `set_write_buffer_limits` (`transports._FlowControlMixin`).

        `high` and `low` are byte counts: any numbers asyncio takes (ints of any size,
        floats), kept as given for `get_write_buffer_limits`. Raises ValueError unless
        high >= low >= 0, TypeError for what asyncio's arithmetic refuses. Then pauses the
        protocol if the buffer is above the new high-water mark, as asyncio does.
        """
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        # asyncio's slot names (`_FlowControlMixin.__slots__`, a base of every buffered
        # transport here), so the marks cost an idle transport nothing.
        self._high_water = high
        self._low_water = low
        self._core.set_write_buffer_limits(_water_mark(high), _water_mark(low))

    def get_write_buffer_limits(self) -> tuple[Any, Any]:
        """asyncio's: the (low, high) water marks as last set (bytes; 16 KiB and 64 KiB
        until `set_write_buffer_limits` is called)."""
        return (getattr(self, "_low_water", 16 * 1024), getattr(self, "_high_water", 64 * 1024))


# The largest water mark the core stores (its marks are native integers).
_MAX_WATER_MARK = (1 << 63) - 1


def _water_mark(value: Any) -> int:
    """The byte count `value` acts as: `size <= value` holds exactly when
    `size <= _water_mark(value)` for every whole `size` (value is >= 0 here)."""
    try:
        return min(math.floor(value), _MAX_WATER_MARK)
    except OverflowError:  # float("inf")
        return _MAX_WATER_MARK


class _WritingStream(_Buffered):
    """Stream transports that write (the methods of _WRITING; `writelines` is
    `WriteTransport`'s, which calls `write`)."""


_install_core_methods(_NativeTransport, list(_COMMON))
_install_core_methods(_Buffered, list(_BUFFERED))
_install_core_methods(_WritingStream, list(_WRITING))


# Extra info a socket transport makes on first use (see `_SocketBased._take_socket`).
_LAZY_EXTRA = frozenset(("socket", "sockname"))
# What asyncio's accept path puts in a connection's extra info.
_ACCEPTED_EXTRA = frozenset(("peername", "socket", "sockname"))


class _NotMade:
    """`_SocketBased._sock_obj` of a natively accepted connection whose socket object has
    not been asked for yet."""

    def __repr__(self) -> str:
        return "<socket not made>"


_NOT_MADE: Any = _NotMade()

# `BaseTransport.__slots__`' `_extra`, where `_SocketBased._extra` keeps its value.
_EXTRA_SLOT: Any = transports.BaseTransport.__dict__["_extra"]


class _SocketBased(_NativeTransport):
    """Owners of a socket: extra info, repr state, the unclosed warning.

    A connection a server accepted natively (`_net._accept_connection`) comes as an fd and
    the (family, type, proto) of its listening socket: `_sock` makes its `socket.socket`
    when something first asks (asyncio code, `get_extra_info("socket")`), as asyncio's
    accept would have made it. An idle connection nobody asks saves the object.
    """

    @property
    def _extra(self) -> dict[str, Any]:
        """asyncio's `_extra` dict. A natively accepted connection holds its peer's address
        in the kernel's form (bytes) until this is first read: an idle connection nobody
        asks about saves the dict and the address tuple."""
        extra = _EXTRA_SLOT.__get__(self, None)
        if type(extra) is bytes:
            extra = {"peername": _socket_address(extra)}
            _EXTRA_SLOT.__set__(self, extra)
        return extra  # type: ignore[no-any-return]

    @_extra.setter
    def _extra(self, extra: Any) -> None:
        _EXTRA_SLOT.__set__(self, extra)

    # The socket object; `_NOT_MADE` until a natively accepted connection's is asked for;
    # None once closed (or before a failed `__init__` took one).
    _sock_obj: Any = None
    # (family, type, proto) of a natively accepted connection, kept after close.
    _sock_spec: tuple[int, int, int] | None = None
    _sock_fd: int | None = None

    @property
    def _sock(self) -> Any:
        """asyncio's `_sock`: the socket object, or None once closed."""
        sock = self._sock_obj
        if sock is _NOT_MADE:
            sock = self._sock_obj = _socket_for(self._sock_spec, self._sock_fd)
        return sock

    @_sock.setter
    def _sock(self, sock: Any) -> None:
        self._sock_obj = sock

    def _take_socket(self, sock: socket.socket) -> None:
        # "socket" and "sockname" are made when first asked for (or when the socket is
        # closed, so they keep asyncio's values afterwards): an idle connection that nobody
        # asks saves the wrapper, the address tuple and its strings. "peername" stays eager:
        # the peer's address is gone once it disconnects.
        if "peername" not in self._extra:
            self._extra["peername"] = _address_or_none(sock.getpeername)
        self._sock_obj = sock
        self._sock_fd = sock.fileno()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """asyncio's `get_extra_info`; "socket" and "sockname" are made on first use."""
        if name not in _ACCEPTED_EXTRA and type(_EXTRA_SLOT.__get__(self, None)) is bytes:
            # A natively accepted connection, whose extra info holds nothing else (asking
            # for "sslcontext", as asyncio's streams do, makes no dict).
            return default
        if name in _LAZY_EXTRA and name not in self._extra:
            self._fill_extra()
        return self._extra.get(name, default)

    def _fill_extra(self) -> None:
        """Makes the lazy extra info asyncio makes when the transport is created."""
        sock = self._sock
        if sock is None:
            if self._sock_spec is not None and "socket" not in self._extra:
                # Closed before anything asked for the socket object: asyncio's would be
                # a closed socket of the same family, type and protocol.
                closed = _closed_socket(self._sock_spec)
                if closed is not None:
                    self._extra["socket"] = trsock.TransportSocket(closed)
            return
        if "socket" not in self._extra:
            self._extra["socket"] = trsock.TransportSocket(sock)
        if "sockname" not in self._extra:
            self._extra["sockname"] = _address_or_none(sock.getsockname)

    def _close_socket(self) -> None:
        """Closes the socket once connection_lost has run, keeping the extra info."""
        sock = self._sock_obj
        if sock is _NOT_MADE:
            # Nothing asked for the socket object: keep the name asyncio keeps, close the
            # fd, and leave "socket" to `_fill_extra` in case it is asked for later.
            if "sockname" not in self._extra:
                self._extra["sockname"] = _address_or_none(_socket_name, self._sock_fd)
            self._sock_obj = None
            os.close(self._sock_fd)  # type: ignore[arg-type]
            return
        self._fill_extra()
        sock.close()
        self._sock_obj = None

    def _fd_for_repr(self) -> int | None:
        return self._sock_fd

    def _is_closed_for_repr(self) -> bool:
        return self._sock_obj is None

    def _drop_socket(self) -> None:
        """Closes the socket (or the fd of one never made) without keeping extra info."""
        sock, self._sock_obj = self._sock_obj, None
        if sock is _NOT_MADE:
            os.close(self._sock_fd)  # type: ignore[arg-type]
        elif sock is not None:
            sock.close()

    def _abandon(self) -> None:
        """Closes the socket and drops the core of a transport whose setup failed."""
        if self._core is not None:
            self._core._release()
        self._drop_socket()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._sock_obj is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._drop_socket()


def _socket_for(spec: Any, fd: Any) -> socket.socket:
    """The socket object `sock.accept()` and asyncio's `conn.setblocking(False)` would have
    made for the accepted connection `fd`."""
    family, kind, proto = spec
    sock = socket.socket(family, kind, proto, fileno=fd)
    sock.setblocking(False)
    return sock


def _address_or_none(get: Any, *args: Any) -> Any:
    """`get(*args)`, or None where it raises OSError (asyncio's extra info for an address
    the kernel no longer gives)."""
    try:
        return get(*args)
    except OSError:
        return None


def _closed_socket(spec: tuple[int, int, int]) -> socket.socket | None:
    """A closed socket object of `spec`'s family, type and protocol (None if the system
    refuses a new socket now)."""
    try:
        sock = socket.socket(*spec)
    except OSError:
        return None
    sock.close()
    return sock


# `_FlowControlMixin` as a base: asyncio's sendfile fallback refuses any other transport
# (its methods are all overridden by the native ones; only its slots remain).
class SocketTransport(
    _WritingStream, _SocketBased, transports._FlowControlMixin, transports.Transport
):
    """A TCP or Unix stream socket (asyncio's `_SelectorSocketTransport`)."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        extra: Any = None,
        server: Any = None,
    ) -> None:
        transports.BaseTransport.__init__(self, extra)
        self._take_socket(sock)
        self._serve(loop, protocol, waiter, server, sock)

    @classmethod
    def _accepted(
        cls,
        loop: Any,
        fd: int,
        spec: tuple[int, int, int],
        peer: bytes,
        protocol: Any,
        server: Any,
    ) -> SocketTransport:
        """The transport of a connection a server accepted natively (`_net`): `fd` with
        TCP_NODELAY set where asyncio sets it, `spec` the listening socket's (family, type,
        proto), `peer` the peer's address in the kernel's form. Owns `fd` from the call on:
        closes it if setup fails."""
        self = cls.__new__(cls)
        self._extra = peer  # made into asyncio's {"peername": ...} when first read
        self._sock_obj = _NOT_MADE
        self._sock_spec = spec
        self._sock_fd = fd
        self._serve(loop, protocol, None, server, None)
        return self

    def _serve(self, loop: Any, protocol: Any, waiter: Any, server: Any, sock: Any) -> None:
        """The rest of asyncio's `__init__`, once the socket is taken. `sock` is None for a
        natively accepted connection (a plain socket whose TCP_NODELAY is set)."""
        fd = self._sock_fd
        try:
            spec = self._sock_spec  # a natively accepted connection's: its family is known
            family = None if spec is None else spec[0]
            self._start(loop, fd, "socket", protocol, family)  # type: ignore[arg-type]
            if sock is not None and _overrides_io(sock):
                self._core._use_socket_methods(sock, _FLUSH_WITH_SENDMSG)
        except BaseException:
            # The socket is closed now rather than when the cycle collector finds the
            # half-made transport: an accepted peer must not wait on a connection that
            # will never be served.
            self._abandon()
            raise
        self._server = server
        if server is not None:
            _server_attach(server, self)
        loop._transports[fd] = self
        if sock is not None:
            # Small writes leave at once, without waiting for the peer's ACK (as asyncio).
            base_events._set_nodelay(sock)
        loop.call_soon(self._core.get_protocol().connection_made, self)
        # Reading starts once connection_made() has run.
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _make_empty_waiter(self) -> Any:
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self) -> None:
        self._core._reset_empty_waiter()

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._sock_obj is None:
            return
        core = self._core
        try:
            if core._protocol_connected:
                core.get_protocol().connection_lost(exc)
        finally:
            waiter = core._take_empty_waiter()
            core._release()
            self._close_socket()
            self._loop = None
            server = self._server
            if server is not None:
                _server_detach(server, self)
                self._server = None
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))


if sys.version_info >= (3, 12):
    _install_core_methods(SocketTransport, ["writelines"])


def _check_pipe(pipe: Any, allowed: tuple[Any, ...], message: str) -> int:
    fileno = pipe.fileno()
    mode = os.fstat(fileno).st_mode
    if not any(test(mode) for test in allowed):
        raise ValueError(message)
    os.set_blocking(fileno, False)
    return int(fileno)


class _PipeStream(_NativeTransport):
    """What both pipe transports share (asyncio's `_UnixReadPipeTransport` and
    `_UnixWritePipeTransport`)."""

    _pipe: Any = None
    _fileno: int | None = None

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._pipe is None:
            return
        core = self._core
        try:
            core.get_protocol().connection_lost(exc)
        finally:
            core._release()
            self._pipe.close()
            self._pipe = None
            self._loop = None

    def _fd_for_repr(self) -> int | None:
        return self._fileno

    def _is_closed_for_repr(self) -> bool:
        return self._pipe is None

    def _debug_log(self, message: str) -> None:
        logger.info("%r %s", self, message)

    def __repr__(self) -> str:
        # asyncio's pipe reprs: polling state of the one direction this end uses.
        info = [self.__class__.__name__]
        core = self._core
        if self._pipe is None:
            info.append("closed")
        elif core is not None and core._closing:
            info.append("closing")
        info.append(f"fd={self._fileno}")
        loop = getattr(self, "_loop", None)  # unset if __init__ failed early
        selector = getattr(loop, "_selector", None)
        if self._pipe is not None and selector is not None and core is not None:
            events = loop._fd_events(self._fileno) or 0
            info.append("polling" if events & self._repr_event else "idle")
            if self._repr_event == 2:
                info.append(f"bufsize={core.get_write_buffer_size()}")
        elif self._pipe is not None:
            info.append("open")
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()


class ReadPipeTransport(_PipeStream, transports.ReadTransport):
    """The read end of a pipe, a socket or a character device."""

    _repr_event = 1  # selectors.EVENT_READ

    def __init__(
        self, loop: Any, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
    ) -> None:
        transports.BaseTransport.__init__(self, extra)
        self._extra["pipe"] = pipe
        self._fileno = _check_pipe(
            pipe,
            (stat.S_ISFIFO, stat.S_ISSOCK, stat.S_ISCHR),
            "Pipe transport is for pipes/sockets only.",
        )
        self._pipe = pipe
        self._start(loop, self._fileno, "read_pipe", protocol)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)


class WritePipeTransport(
    _WritingStream, _PipeStream, transports._FlowControlMixin, transports.WriteTransport
):
    """The write end of a pipe, a socket or a character device."""

    _repr_event = 2  # selectors.EVENT_WRITE

    # A write pipe has no reading to pause: asyncio's write pipe transport inherits these
    # from `ReadTransport`, which raises NotImplementedError.
    is_reading = transports.ReadTransport.is_reading
    pause_reading = transports.ReadTransport.pause_reading
    resume_reading = transports.ReadTransport.resume_reading

    def __init__(
        self, loop: Any, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
    ) -> None:
        transports.BaseTransport.__init__(self, extra)
        self._extra["pipe"] = pipe
        mode = os.fstat(pipe.fileno()).st_mode
        self._fileno = _check_pipe(
            pipe,
            (stat.S_ISFIFO, stat.S_ISSOCK, stat.S_ISCHR),
            "Pipe transport is only for pipes, sockets and character devices",
        )
        self._pipe = pipe
        self._start(loop, self._fileno, "write_pipe", protocol)
        loop.call_soon(protocol.connection_made, self)
        # A reader on the write end reports the other end going away (pipes and sockets).
        if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
            loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)
