"""The Python side of ferroloop's native datagram transport (UDP and Unix datagram sockets).

`DatagramTransport` subclasses `asyncio.DatagramTransport` (so `isinstance` holds, which
asyncio 3.11's own `_SelectorDatagramTransport` does not satisfy) and `_FlowControlMixin`
(and through it `asyncio.Transport`, as asyncio's class), and owns one native core
(`src/transports/datagram.rs`) that does the per-datagram work: `recvfrom` into the loop's
reused buffer, the sender's address built natively, `sendto` tried at once and queued only
on EAGAIN. The core's hot methods (`sendto`, `get_write_buffer_size`, `is_closing`…) are
C method descriptors on the class that forward to the core (`_install_core_methods`), so
`transport.sendto(data, addr)` calls native code directly.

What stays here runs once per endpoint or per error, as in asyncio (extra info,
`_fatal_error`, `_call_connection_lost`, `__repr__`, `__del__`), shared with the stream
transports through `_transports`. Semantics are CPython 3.11's
`selector_events._SelectorDatagramTransport`.
"""

from __future__ import annotations

from asyncio import futures, transports
from typing import Any

from ._ferroloop import DatagramTransport as _Core
from ._ferroloop import _install_core_methods
from ._transports import _Buffered, _overrides_io, _SocketBased

# Socket methods asyncio's datagram transport calls for its I/O (see `_overrides_io`).
_DATAGRAM_IO = ("recvfrom", "send", "sendto")

# `_FlowControlMixin` is a base for the interface only (asyncio's class has it): its methods
# are all overridden by the core's, and its __init__ is not called (the core holds the water
# marks), so only its `_loop` slot is used.
class DatagramTransport(
    _Buffered, _SocketBased, transports._FlowControlMixin, transports.DatagramTransport
):
    """A UDP or Unix datagram socket (asyncio's `_SelectorDatagramTransport`)."""

    max_size = 256 * 1024  # largest datagram received (asyncio's recvfrom size)

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
        self._take_socket(sock)
        self._address = address
        core = _Core(
            loop,
            self,
            sock,
            self._sock_fd,
            int(sock.family),
            bool(self._extra["peername"]),
            address if address else None,
            _overrides_io(sock, _DATAGRAM_IO),
        )
        self._attach(loop, core, protocol)
        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        # Reading starts once connection_made() has run.
        loop.call_soon(core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    @property
    def _buffer_size(self) -> int:
        return int(self._core.get_write_buffer_size())

    # sendto: forwarded to the core (installed below).

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._sock_obj is None:
            return
        core = self._core
        try:
            protocol = core.get_protocol()
            if protocol is not None:
                protocol.connection_lost(exc)
        finally:
            core._release()
            self._close_socket()
            self._loop = None


_install_core_methods(DatagramTransport, ["sendto"])
