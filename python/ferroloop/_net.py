"""Networking, pipes, subprocesses and signals for `ferroloop.Loop`: asyncio's own
orchestration over ferroloop's native transports.

`create_connection`, `create_server`, `create_unix_*`, `create_datagram_endpoint`,
`connect_accepted_socket`, `start_tls`, `sendfile`, `sock_sendfile`, `connect_*_pipe`,
`subprocess_*` and the signal methods are CPython's own implementations (from `base_events`,
`selector_events` and `unix_events` of the running interpreter), bound to our loop: their
logic (happy eyeballs, servers, SSL wiring through `sslproto`, sendfile's fallback, argument
checks) runs once per connection and is intricate, so it stays asyncio's (GUIDE §2.1). The
transports they make come from the `_make_*_transport` hooks below, which return ferroloop's
native transports (`_transports.py`, `_datagram.py`), and this module adds the small surface
asyncio's code expects from a selector loop (`_transports`, a `_selector` view, the
watcher methods). Child watching is `_process.py`'s. The borrowed names are CPython 3.11's;
`tests/conformance` runs CPython's networking tests against this layer.
"""

from __future__ import annotations

import contextvars
import os
import selectors
import socket
import sys
import warnings
import weakref
from asyncio import base_events, constants, log, selector_events, sslproto, unix_events
from typing import Any, NamedTuple

from ._datagram import DatagramTransport
from ._ferroloop import _accept_connection as _accept_native
from ._ferroloop import _unlink_if_inode
from ._transports import ReadPipeTransport, SocketTransport, WritePipeTransport

# Names taken, in this order (later sources override earlier ones), from asyncio's loops.
_BORROWED: tuple[tuple[type, tuple[str, ...]], ...] = (
    (
        base_events.BaseEventLoop,
        (
            "subprocess_exec",
            "subprocess_shell",
            "_log_subprocess",
            "connect_read_pipe",
            "connect_write_pipe",
            "_ensure_resolved",
            "create_connection",
            "_connect_sock",
            "_create_connection_transport",
            "create_server",
            "_create_server_getaddrinfo",
            "connect_accepted_socket",
            "create_datagram_endpoint",
            "start_tls",
            "sendfile",
            "_sendfile_native",
            "_sendfile_fallback",
            "sock_sendfile",
            "_sock_sendfile_native",
            "_sock_sendfile_fallback",
            "_check_sendfile_params",
        ),
    ),
    (
        selector_events.BaseSelectorEventLoop,
        (
            "_start_serving",
            "_accept_connection2",
            "_stop_serving",
            "_ensure_fd_no_transport",
            "_sendfile_native",
            "_make_self_pipe",
            "_read_from_self",
            "_write_to_self",
            "_close_self_pipe",
        ),
    ),
    (
        unix_events._UnixSelectorEventLoop,
        (
            "create_unix_connection",
            "create_unix_server",
            "_sock_sendfile_native",
            "_sock_sendfile_native_impl",
            "_sock_sendfile_update_filepos",
            "_sock_add_cancellation_callback",
            "remove_signal_handler",
            "_handle_signal",
            "_check_signal",
            "_process_self_data",
            "_child_watcher_callback",
        ),
    ),
)

_unix_add_signal_handler = unix_events._UnixSelectorEventLoop.add_signal_handler
_selector_accept_connection = selector_events.BaseSelectorEventLoop._accept_connection
_selector_stop_serving = selector_events.BaseSelectorEventLoop._stop_serving

BORROWED_NAMES = frozenset(name for _, names in _BORROWED for name in names)


def _make_socket_transport(
    self: Any,
    sock: Any,
    protocol: Any,
    waiter: Any = None,
    *,
    extra: Any = None,
    server: Any = None,
) -> SocketTransport:
    return SocketTransport(self, sock, protocol, waiter, extra, server)


def _make_datagram_transport(
    self: Any,
    sock: Any,
    protocol: Any,
    address: Any = None,
    waiter: Any = None,
    extra: Any = None,
) -> DatagramTransport:
    return DatagramTransport(self, sock, protocol, address, waiter, extra)


def _make_ssl_transport(
    self: Any,
    rawsock: Any,
    protocol: Any,
    sslcontext: Any,
    waiter: Any = None,
    *,
    server_side: bool = False,
    server_hostname: Any = None,
    extra: Any = None,
    server: Any = None,
    ssl_handshake_timeout: Any = constants.SSL_HANDSHAKE_TIMEOUT,
    ssl_shutdown_timeout: Any = constants.SSL_SHUTDOWN_TIMEOUT,
) -> Any:
    """asyncio's SSL wiring (an `SSLProtocol` over a plain socket transport), over ours."""
    ssl_protocol = sslproto.SSLProtocol(
        self,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
    SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
    return ssl_protocol._app_transport


def _make_read_pipe_transport(
    self: Any, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
) -> ReadPipeTransport:
    return ReadPipeTransport(self, pipe, protocol, waiter, extra)


def _make_write_pipe_transport(
    self: Any, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
) -> WritePipeTransport:
    return WritePipeTransport(self, pipe, protocol, waiter, extra)


def _plain_stream(sock: Any) -> tuple[int, int, int] | None:
    """(family, type, proto) of a listening socket whose connections are accepted natively:
    a plain `socket.socket` (a subclass may override `accept`) of a family converted
    natively. None for the others."""
    if type(sock) is not socket.socket:
        return None
    family = sock.family
    if family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    kind = sock.type
    if kind != socket.SOCK_STREAM:
        return None
    spec = (family, kind, sock.proto)
    # One tuple per kind of listener, shared by every transport that keeps it.
    return _SPECS.setdefault(spec, spec)


_SPECS: dict[tuple[int, int, int], tuple[int, int, int]] = {}


def _serve_accepted(
    loop: Any, protocol_factory: Any, conn: tuple[int, Any], spec: Any, server: Any
) -> None:
    """asyncio's `_accept_connection2` for a plain connection `conn` (fd, the peer's address
    in the kernel's form):
    makes the protocol and the transport. A failure drops the connection, as asyncio's
    does outside debug mode (debug mode takes asyncio's path), but closes it at once: the
    peer sees the connection end instead of waiting."""
    fd, peer = conn
    try:
        protocol = protocol_factory()
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        return
    try:
        # Owns the fd from here on; closes it if setup fails.
        SocketTransport._accepted(loop, fd, spec, peer, protocol, server)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        pass


class _Key(NamedTuple):
    fd: int
    events: int


class _SelectorView:
    """What asyncio's transports read from `loop._selector` (their reprs ask whether the fd
    is being polled): a read-only view of the native fd watchers."""

    def __init__(self, loop: Any) -> None:
        self._loop = weakref.ref(loop)

    def get_key(self, fileobj: Any) -> _Key:
        fd = selectors._fileobj_to_fd(fileobj)
        loop = self._loop()
        events = None if loop is None or loop.is_closed() else loop._fd_events(fd)
        if not events:
            raise KeyError(fd)
        return _Key(fd, events)


class NetworkingMixin:
    """asyncio's networking methods, plus what its selector transports expect of a loop."""

    _fd_events: Any
    get_debug: Any
    _add_reader: Any
    _add_writer: Any
    _remove_reader: Any
    _remove_writer: Any
    _ensure_fd_no_transport: Any
    _make_self_pipe: Any
    _close_self_pipe: Any
    _write_to_self: Any
    remove_signal_handler: Any
    is_closed: Any
    call_soon: Any

    def _init_networking(self) -> None:
        # fd -> transport, as in BaseSelectorEventLoop (weak: a lost transport is forgotten).
        self._transports: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._selector = _SelectorView(self)
        # Signals: handlers by signal number, and the self-pipe `signal.set_wakeup_fd` writes
        # to. The pipe is made on the first add_signal_handler(), not here: a registered fd
        # would make every busy iteration pay an epoll_wait(0).
        self._signal_handlers: dict[int, Any] = {}
        self._ssock: Any = None
        self._csock: Any = None
        self._internal_fds = 0
        # 3.13: listening Unix sockets to unlink when their server closes, by inode
        # (create_unix_server(cleanup_socket=True); read by 3.13's create_unix_server).
        self._unix_server_sockets: dict[Any, int] = {}

    def _close_networking(self) -> None:
        """Part of close(): restore signal dispositions, close the self-pipe."""
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, skipping signal "
                "handlers removal",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
            self._signal_handlers.clear()
        if self._ssock is not None:
            self._close_self_pipe()
        self._selector = None  # as asyncio: transports' reprs then say "open"/"closed"

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        """asyncio's Unix add_signal_handler (main thread only; the handler runs as an
        ordinary callback in the loop)."""
        if self._ssock is None and not self.is_closed():
            self._make_self_pipe()
        _unix_add_signal_handler(self, sig, callback, *args)

    def _add_callback(self, handle: Any) -> None:
        """Schedule an `asyncio.Handle` (made by asyncio's own code, e.g. for a signal)."""
        if not handle._cancelled:
            self.call_soon(handle._run)

    def _add_callback_signalsafe(self, handle: Any) -> None:
        self._add_callback(handle)
        self._write_to_self()

    if sys.version_info >= (3, 13):

        def _stop_serving(self, sock: Any) -> None:
            """3.13's `_UnixSelectorEventLoop._stop_serving`: stop accepting, then unlink a
            listening Unix socket's path if create_unix_server(cleanup_socket=True) made it and
            the path still names the same inode. (Its `super()` call cannot be borrowed.)"""
            path = sock.getsockname() if sock in self._unix_server_sockets else None
            _selector_stop_serving(self, sock)
            if path is None:
                return
            inode = self._unix_server_sockets.pop(sock)
            try:
                # os.stat + os.unlink, natively: see `_unlink_if_inode`.
                _unlink_if_inode(path, inode)
            except FileNotFoundError:
                pass
            except OSError as err:
                log.logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    def _accept_connection(
        self,
        protocol_factory: Any,
        sock: Any,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: Any = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: Any = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        """asyncio's `_accept_connection` (selector_events, the same in 3.11-3.13): accepts
        up to `backlog` waiting connections of the listening socket `sock`.

        A plain TCP or Unix server outside debug mode takes each connection natively
        (`_accept_connection` of the native module: accept4, non-blocking, TCP_NODELAY) and
        makes its transport at once, without the `socket.socket` and the task per
        connection asyncio makes (`_serve_accepted`). SSL servers, debug mode (which logs
        each connection with its socket object), socket subclasses and other families take
        asyncio's own path, as does any accept error but "nothing waits": asyncio's code
        then accepts again and reports or pauses exactly as asyncio does.
        """

        def asyncio_path(count: int) -> None:
            _selector_accept_connection(
                self,
                protocol_factory,
                sock,
                sslcontext,
                server,
                count,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
            )

        spec = None if sslcontext is not None or self._debug else _plain_stream(sock)
        if spec is None:
            return asyncio_path(backlog)
        family, _, proto = spec
        # asyncio's `_set_nodelay`: TCP sockets only, by the accepted socket's protocol.
        nodelay = family != socket.AF_UNIX and proto == socket.IPPROTO_TCP
        listen_fd = sock.fileno()
        for attempt in range(backlog):
            if sock.fileno() != listen_fd:
                # A protocol factory closed the server: its fd number may already name
                # another file.
                return None
            try:
                conn = _accept_native(listen_fd, nodelay)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return None
            except OSError:
                remaining = backlog - attempt
                break  # asyncio's code meets the error again, outside this handler
            if conn is not None:
                # asyncio sets each connection up in a task, which runs in a copy of this
                # callback's context; so does this.
                contextvars.copy_context().run(
                    _serve_accepted, self, protocol_factory, conn, spec, server
                )
        else:
            return None
        return asyncio_path(remaining)

    @property
    def _debug(self) -> bool:
        return bool(self.get_debug())

    # Public watchers refuse an fd owned by a live transport, as asyncio's selector loop.
    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def add_writer(self, fd: Any, callback: Any, *args: Any) -> None:
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return bool(self._remove_reader(fd))

    def remove_writer(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return bool(self._remove_writer(fd))


for _source, _names in _BORROWED:
    for _name in _names:
        if _name == "_stop_serving" and "_stop_serving" in NetworkingMixin.__dict__:
            continue  # 3.13's own, above
        if _name not in _source.__dict__ and sys.version_info >= (3, 14):
            # 3.14 (not run here) removed child watchers; a name it no longer has is not
            # borrowed. On 3.11-3.13 every name must exist (a KeyError at import says so).
            continue
        setattr(NetworkingMixin, _name, _source.__dict__[_name])
del _source, _names, _name
NetworkingMixin._make_socket_transport = _make_socket_transport  # type: ignore[attr-defined]
NetworkingMixin._make_read_pipe_transport = _make_read_pipe_transport  # type: ignore[attr-defined]
NetworkingMixin._make_write_pipe_transport = _make_write_pipe_transport  # type: ignore[attr-defined]
NetworkingMixin._make_ssl_transport = _make_ssl_transport  # type: ignore[attr-defined]
NetworkingMixin._make_datagram_transport = _make_datagram_transport  # type: ignore[attr-defined]

assert selectors.EVENT_READ == 1 and selectors.EVENT_WRITE == 2  # _fd_events encoding
