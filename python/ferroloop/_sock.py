"""The low-level socket API (`sock_*`) and name resolution, for `ferroloop.Loop`.

Semantics are CPython 3.11's `selector_events.py` and `base_events.py`: try the operation at
once; if the socket would block, watch it with the loop's native fd watchers and finish the
operation from the watcher; cancelling the future removes the watcher, and data already
received is never consumed by a cancelled call (the read happens only when a call is waiting).

The waiting, polling and callbacks are native; so is the whole wait of `sock_recv` on a plain
socket (`SockRecv`, the hot case); the per-operation glue of the other calls is here.
"""

from __future__ import annotations

import functools
import socket
from asyncio import base_events
from collections.abc import Coroutine
from typing import Any

from ._ferroloop import SockRecv

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
    _sock_recv_bytes: Any
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
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0,
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
        """`sock.<op>(*args)`. A plain socket's recv() goes through the loop's reused buffer
        (`_sock_recv_bytes`); anything else is looked up at each call, as asyncio does (a
        socket wrapper or a mock may change its methods while a call waits)."""
        if op == "recv" and type(sock) is socket.socket:
            return self._sock_recv_bytes(sock, *args)
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

    # ----------------------------------------------------------------- reads

    async def _sock_read(self, sock: socket.socket, op: str, *args: Any) -> Any:
        """The shared body of the one-shot reads: try now, else wait for readability."""
        _check_socket(self, sock)
        try:
            return self._sock_call(sock, op, *args)
        except _BLOCKING:
            pass
        fut = self.create_future()
        if op == "recv" and type(sock) is socket.socket:
            # The common case waits natively (src/sock_ops.rs): same steps, no Python frames.
            fd = sock.fileno()
            self._ensure_fd_no_transport(fd)
            SockRecv.start(self, fut, fd, *args)
        else:
            self._wait_readable(fut, sock, self._sock_op_ready, op, *args)
        return await fut

    # Plain methods returning the coroutine (no extra coroutine frame per call).
    def sock_recv(self, sock: socket.socket, n: int) -> Coroutine[Any, Any, bytes]:
        return self._sock_read(sock, "recv", n)

    def sock_recv_into(self, sock: socket.socket, buf: Any) -> Coroutine[Any, Any, int]:
        return self._sock_read(sock, "recv_into", buf)

    def sock_recvfrom(
        self, sock: socket.socket, bufsize: int
    ) -> Coroutine[Any, Any, tuple[bytes, Any]]:
        return self._sock_read(sock, "recvfrom", bufsize)

    def sock_recvfrom_into(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> Coroutine[Any, Any, tuple[int, Any]]:
        return self._sock_read(sock, "recvfrom_into", buf, nbytes or len(buf))

    def _sock_op_ready(self, fut: Any, sock: socket.socket, op: str, *args: Any) -> None:
        """Watcher callback of the one-shot operations (recv*, sendto)."""
        if not fut.done():
            self._finish(fut, sock, op, *args)

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        _check_socket(self, sock)
        fut = self.create_future()
        if not self._finish(fut, sock, "accept"):
            self._wait_readable(fut, sock, self._sock_op_ready, "accept")
        return await fut

    # ---------------------------------------------------------------- writes

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
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
            sent = sock.send(view[pos[0]:])
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

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        _check_socket(self, sock)
        try:
            return sock.sendto(data, address)
        except _BLOCKING:
            pass
        fut = self.create_future()
        self._wait_writable(fut, sock, self._sock_op_ready, "sendto", data, 0, address)
        return await fut

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        _check_socket(self, sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio's own resolution: IP literals (with IPv6 flow info and scope id) as
            # they are, anything else through getaddrinfo().
            resolved = await base_events.BaseEventLoop._ensure_resolved(
                self, address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            address = resolved[0][4]
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
