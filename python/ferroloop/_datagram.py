"""The Python side of ferroloop's native datagram transport (UDP and Unix datagram sockets).

`DatagramTransport` subclasses `asyncio.DatagramTransport` (so `isinstance` holds, which
asyncio 3.11's own `_SelectorDatagramTransport` does not satisfy) and `_FlowControlMixin`
(and through it `asyncio.Transport`, as asyncio's class), and owns one native core
(`src/transports/datagram.rs`) that does the per-datagram work: `recvfrom` into the loop's
reused buffer, the sender's address built natively, `sendto` tried at once and queued only
on EAGAIN. The core's hot methods (`sendto`, `get_write_buffer_size`, `is_closing`…) are
bound into each transport's instance dict, so `transport.sendto(data, addr)` calls native
code directly; the class-level definitions below are the same methods for code that looks
them up on the class.

What stays here runs once per endpoint or per error, as in asyncio: extra info,
`_fatal_error`, `_call_connection_lost`, `__repr__`, `__del__`. Semantics are CPython
3.11's `selector_events._SelectorDatagramTransport`.
"""

from __future__ import annotations

import logging
import warnings
from asyncio import futures, transports, trsock
from typing import Any

from ._ferroloop import DatagramTransport as _Core

logger = logging.getLogger("asyncio")

# Core methods bound into every transport's instance dict.
_BOUND = (
    "sendto",
    "abort",
    "is_closing",
    "is_reading",
    "pause_reading",
    "resume_reading",
    "get_write_buffer_size",
    "set_write_buffer_limits",
    "get_write_buffer_limits",
    "_force_close",
)


# `_FlowControlMixin` is a base for the interface only (asyncio's class has it): its methods
# are all overridden by the core's, and its __init__ is not called (the core holds the water
# marks), so only its `_loop` slot is used.
class DatagramTransport(transports._FlowControlMixin, transports.DatagramTransport):
    """A UDP or Unix datagram socket (asyncio's `_SelectorDatagramTransport`)."""

    max_size = 256 * 1024  # largest datagram received (asyncio's recvfrom size)
    _sock: Any = None
    _core: Any = None

    def __init__(
        self,
        loop: Any,
        sock: Any,
        protocol: Any,
        address: Any = None,
        waiter: Any = None,
        extra: Any = None,
    ) -> None:
        transports.BaseTransport.__init__(self, extra)
        self._loop = loop
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._address = address
        core = _Core(
            loop,
            self,
            sock,
            self._sock_fd,
            int(sock.family),
            bool(self._extra["peername"]),
            address if address else None,
        )
        self._core = core
        for name in _BOUND:
            setattr(self, name, getattr(core, name))
        core.set_protocol(protocol)
        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        # Reading starts once connection_made() has run.
        loop.call_soon(core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    # -- state, as asyncio's attributes --------------------------------------------------

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
    def _buffer_size(self) -> int:
        return int(self._core.get_write_buffer_size())

    # -- the interface (the instance dict holds the core's bound methods) ---------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._core.sendto(data, addr)

    def abort(self) -> None:
        self._core.abort()

    def close(self) -> None:
        self._core.close()

    def is_closing(self) -> bool:
        return bool(self._core.is_closing())

    def is_reading(self) -> bool:
        return bool(self._core.is_reading())

    def pause_reading(self) -> None:
        self._core.pause_reading()

    def resume_reading(self) -> None:
        self._core.resume_reading()

    def get_write_buffer_size(self) -> int:
        return int(self._core.get_write_buffer_size())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return tuple(self._core.get_write_buffer_limits())  # type: ignore[return-value]

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    # -- once per endpoint or per error ---------------------------------------------------

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._core.get_protocol(),
                }
            )
        self._core._force_close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._sock is None:
            return
        core = self._core
        try:
            protocol = core.get_protocol()
            if protocol is not None:
                protocol.connection_lost(exc)
        finally:
            core._release()
            self._sock.close()
            self._sock = None
            self._loop = None

    def _debug_log(self, message: str) -> None:
        logger.debug("%r %s", self, message)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._core is not None and self._core._closing:
            info.append("closing")
        info.append(f"fd={getattr(self, '_sock_fd', None)}")
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._core is not None:
            events = loop._fd_events(self._sock_fd) or 0
            info.append("read=polling" if events & 1 else "read=idle")
            state = "polling" if events & 2 else "idle"
            info.append(f"write=<{state}, bufsize={self._core.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
