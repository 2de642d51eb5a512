"""The low-level socket API (`sock_*`) and name resolution, for `ferroloop.Loop`.

Semantics are `selector_events.py`'s and `base_events.py`'s (the `sock_*` methods are the same
in CPython 3.11, 3.12 and 3.13): try the operation at once; if the socket would block, watch it
with the loop's native fd watchers and finish the operation from the watcher; cancelling the
future removes the watcher, and data is never consumed by a cancelled call (the read happens
only while a call is waiting).

On a plain `socket.socket` every `sock_*` call is native (`src/sock_ops.rs`: the coroutine,
the attempt, the wait and the completion, with no Python frame). What is here is:

- `sock_connect`'s checks and address resolution (asyncio's `_ensure_resolved`, not hot),
  before its native connect step (`_sock_connect_resolved`);
- asyncio's own Python path (`_sock_*_py`), which the native methods hand over to for
  anything that is not a plain socket: a subclass overriding socket methods, an
  `SSLSocket` (refused with asyncio's TypeError), a mock;
- `getaddrinfo` and `getnameinfo`.
"""

from __future__ import annotations

import functools
import socket
from asyncio import base_events
from collections.abc import Coroutine
from typing import Any

_BLOCKING = (BlockingIOError, InterruptedError)


def _check_socket(loop: Any, sock: socket.socket) -> None:
    base_events._check_ssl_socket(sock)
    # asyncio checks this in debug mode only; a blocking socket would stall the whole loop,
    # so ferroloop always refuses it (the check is one C call).
    if sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


def _is_numeric_host(host: Any) -> bool:
    """True if resolving `host` needs no name service (None, '' or an IP literal)."""
    if host is None or host in ("", b""):
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("idna")
        except UnicodeError:
            return False
    if not isinstance(host, str):
        return False
    host = host.partition("%")[0]  # IPv6 scope id ("fe80::1%eth0")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            pass
    return False


def _is_numeric_port(port: Any) -> bool:
    if port is None or isinstance(port, int):
        return True
    if isinstance(port, (str, bytes)):
        return port.isdigit()
    return False


class SocketMixin:
    """`sock_*`, `getaddrinfo` and `getnameinfo`; mixed into `ferroloop.Loop`."""

    # Provided by LoopCore / Loop.
    _sock_connect_resolved: Any
    _add_reader: Any
    _add_writer: Any
    _ensure_fd_no_transport: Any
    remove_reader: Any
    remove_writer: Any
    create_future: Any
    run_in_executor: Any
    get_debug: Any

    # ----------------------------------------------------------- resolution

    async def getaddrinfo(
        self,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        """`socket.getaddrinfo` off the loop thread; IP literals (which need no name
        service) are resolved at once, without a thread hop, with the same result."""
        if _is_numeric_host(host) and _is_numeric_port(port):
            return socket.getaddrinfo(host, port, family, type, proto, flags)
        if self.get_debug():
            func = functools.partial(base_events.BaseEventLoop._getaddrinfo_debug, self)
        else:
            func = socket.getaddrinfo
        return await self.run_in_executor(None, func, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> tuple[str, str]:
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    # -------------------------------------------------------------- helpers

    def _wait_readable(self, fut: Any, sock: socket.socket, callback: Any, *args: Any) -> None:
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_reader(fd, callback, fut, sock, *args)
        fut.add_done_callback(functools.partial(self._stop_reading, fd, handle))

    def _wait_writable(self, fut: Any, sock: socket.socket, callback: Any, *args: Any) -> None:
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, callback, fut, sock, *args)
        fut.add_done_callback(functools.partial(self._stop_writing, fd, handle))

    def _stop_reading(self, fd: int, handle: Any, fut: Any) -> None:
        # A cancelled handle was replaced by a later operation's watcher: leave that one.
        if not handle.cancelled():
            self.remove_reader(fd)

    def _stop_writing(self, fd: int, handle: Any, fut: Any) -> None:
        if not handle.cancelled():
            self.remove_writer(fd)

    def _sock_call(self, sock: socket.socket, op: str, *args: Any) -> Any:
        """`sock.<op>(*args)`, looked up at each call, as asyncio does (a socket wrapper or a
        mock may change its methods while a call waits)."""
        if op == "accept":
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address
        return getattr(sock, op)(*args)

    def _finish(self, fut: Any, sock: socket.socket, op: str, *args: Any) -> bool:
        """Run a non-blocking socket call for a waiting future. False: it would block, try
        again on the next readiness event."""
        try:
            result = self._sock_call(sock, op, *args)
        except _BLOCKING:
            return False
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
        return True

    # --------------------------------------- asyncio's Python path (not plain sockets)

    async def _sock_read(self, sock: socket.socket, op: str, *args: Any) -> Any:
        """The shared body of the one-shot reads: try now, else wait for readability."""
        _check_socket(self, sock)
        try:
            return self._sock_call(sock, op, *args)
        except _BLOCKING:
            pass
        fut = self.create_future()
        self._wait_readable(fut, sock, self._sock_op_ready, op, *args)
        return await fut

    # Plain methods returning the coroutine (no extra coroutine frame per call).
    def _sock_recv_py(self, sock: socket.socket, n: int) -> Coroutine[Any, Any, bytes]:
        return self._sock_read(sock, "recv", n)

    def _sock_recv_into_py(self, sock: socket.socket, buf: Any) -> Coroutine[Any, Any, int]:
        return self._sock_read(sock, "recv_into", buf)

    def _sock_recvfrom_py(
        self, sock: socket.socket, bufsize: int
    ) -> Coroutine[Any, Any, tuple[bytes, Any]]:
        return self._sock_read(sock, "recvfrom", bufsize)

    async def _sock_recvfrom_into_py(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> tuple[int, Any]:
        _check_socket(self, sock)
        if not nbytes:
            nbytes = len(buf)
        return await self._sock_read(sock, "recvfrom_into", buf, nbytes)

    def _sock_op_ready(self, fut: Any, sock: socket.socket, op: str, *args: Any) -> None:
        """Watcher callback of the one-shot operations (recv*, sendto, accept)."""
        if not fut.done():
            self._finish(fut, sock, op, *args)

    async def _sock_accept_py(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        _check_socket(self, sock)
        fut = self.create_future()
        if not self._finish(fut, sock, "accept"):
            self._wait_readable(fut, sock, self._sock_op_ready, "accept")
        return await fut

    async def _sock_sendall_py(self, sock: socket.socket, data: Any) -> None:
        _check_socket(self, sock)
        try:
            sent = sock.send(data)
        except _BLOCKING:
            sent = 0
        view = memoryview(data).cast("B")
        if sent == len(view):
            return
        fut = self.create_future()
        self._wait_writable(fut, sock, self._sock_sendall_ready, view, [sent])
        return await fut

    def _sock_sendall_ready(
        self, fut: Any, sock: socket.socket, view: memoryview, pos: list[int]
    ) -> None:
        if fut.done():
            return
        try:
            sent = sock.send(view[pos[0] :])
        except _BLOCKING:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return
        pos[0] += sent
        if pos[0] == len(view):
            fut.set_result(None)

    async def _sock_sendto_py(self, sock: socket.socket, data: Any, address: Any) -> int:
        _check_socket(self, sock)
        try:
            return sock.sendto(data, address)
        except _BLOCKING:
            pass
        fut = self.create_future()
        self._wait_writable(fut, sock, self._sock_op_ready, "sendto", data, 0, address)
        return await fut

    async def _sock_connect_resolved_py(self, sock: socket.socket, address: Any) -> None:
        fut = self.create_future()
        try:
            sock.connect(address)
        except _BLOCKING:
            self._wait_writable(fut, sock, self._sock_connect_ready, address)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        try:
            return await fut
        finally:
            fut = None  # break the cycle through the exception's traceback

    def _sock_connect_ready(self, fut: Any, sock: socket.socket, address: Any) -> None:
        if fut.done():
            return
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err != 0:
                raise OSError(err, f"Connect call failed {address}")
        except _BLOCKING:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)

    # --------------------------------------------------------------- connect

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """asyncio's `sock_connect`: checks and name resolution here, the connect step
        native on a plain socket (`_sock_connect_resolved`)."""
        _check_socket(self, sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio's own resolution: IP literals (with IPv6 flow info and scope id) as
            # they are, anything else through getaddrinfo().
            resolved = await base_events.BaseEventLoop._ensure_resolved(
                self, address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            address = resolved[0][4]
        connecting = self._sock_connect_resolved(sock, address)
        try:
            return await connecting
        finally:
            connecting = None  # no cycle through the exception's traceback
