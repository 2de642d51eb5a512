"""Property-based tests of the stream transport: random sequences of transport calls on a
real TCP connection, on ferroloop and on stock asyncio, checked against invariants that
asyncio's `_SelectorSocketTransport` guarantees:

- the peer receives a prefix of the bytes `write()` accepted, and, unless the transport was
  aborted or the peer reset the connection, at least every byte written before the first
  `close()`/`write_eof()`;
- `connection_lost` runs exactly once, `pause_writing`/`resume_writing` alternate, starting
  with a pause;
- `write()` after `write_eof()` raises RuntimeError; nothing reaches the exception handler
  on these paths; at the end the buffer is empty and the transport is closing.

The steps include `close()`, `abort()` and a peer reset (the peer closes with SO_LINGER 0,
an RST) in the middle of the sequence, so the calls after them meet a closing or closed
transport: writes then are queued behind pending data or dropped, never raise, and
`pause_reading`/`resume_reading` do nothing. Examples are derandomized: each run tries the
same sequences.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

OPS = st.one_of(
    st.tuples(st.just("write"), st.integers(min_value=0, max_value=300_000)),
    st.tuples(st.just("writelines"), st.lists(st.integers(0, 50_000), max_size=4)),
    st.tuples(st.just("pause_reading"), st.none()),
    st.tuples(st.just("resume_reading"), st.none()),
    st.tuples(st.just("limits"), st.integers(min_value=0, max_value=200_000)),
    st.tuples(st.just("yield"), st.none()),
    st.tuples(st.sampled_from(["close", "abort", "peer_reset"]), st.none()),
)
CLOSING_STEPS = ("close", "abort", "peer_reset")
WAIT = 10  # seconds for the transport and the peer to finish closing
ENDINGS = st.sampled_from(["close", "write_eof", "abort", "close_then_write"])


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.flow: list[str] = []
        self.lost: list[BaseException | None] = []
        self.done = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.flow.append("pause")

    def resume_writing(self) -> None:
        self.flow.append("resume")

    def connection_lost(self, exc):  # type: ignore[override]
        self.lost.append(exc)
        if not self.done.done():
            self.done.set_result(None)


class Sink(asyncio.Protocol):
    """The peer: collects everything, closes when the client is done."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends an RST instead of a FIN."""
        if self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc):  # type: ignore[override]
        if not self.done.done():
            self.done.set_result(None)


def payload(counter: list[int], n: int) -> bytes:
    """n bytes that differ from every earlier payload (so a lost or reordered chunk shows)."""
    start = counter[0]
    counter[0] += n
    return bytes((start + i) % 251 for i in range(n))


async def scenario(
    loop: asyncio.AbstractEventLoop, ops: list[tuple[str, object]], ending: str
) -> None:
    handler_calls: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: handler_calls.append(ctx))
    sinks: list[Sink] = []

    def make_sink() -> Sink:
        sinks.append(Sink())
        return sinks[-1]

    server = await loop.create_server(make_sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(Client, "127.0.0.1", port)
    counter = [0]
    accepted = bytearray()
    closing = False  # a close(), abort() or peer reset step has run
    lossy = False  # an abort() or a peer reset: bytes written before may never arrive
    before_close: int | None = None
    for op, arg in ops:
        if op == "write":
            data = payload(counter, int(arg))  # type: ignore[arg-type]
            transport.write(data)
            accepted += data
        elif op == "writelines":
            chunks = [payload(counter, n) for n in arg]  # type: ignore[union-attr]
            transport.writelines(chunks)
            accepted += b"".join(chunks)
        elif op == "pause_reading":
            transport.pause_reading()
            assert not transport.is_reading()
        elif op == "resume_reading":
            transport.resume_reading()
            assert transport.is_reading() is not transport.is_closing()
        elif op == "limits":
            transport.set_write_buffer_limits(high=int(arg))  # type: ignore[arg-type]
            assert transport.get_write_buffer_limits() == (int(arg) // 4, int(arg))  # type: ignore[arg-type]
        elif op in CLOSING_STEPS:
            if before_close is None:
                before_close = len(accepted)
            closing = True
            lossy = lossy or op != "close"
            if op == "close":
                transport.close()
            elif op == "abort":
                transport.abort()
            else:
                while not sinks:
                    await asyncio.sleep(0.001)
                sinks[0].reset()
            assert transport.is_closing() or op == "peer_reset"
        else:
            await asyncio.sleep(0)
    before_end = len(accepted) if before_close is None else before_close
    aborted = lossy or ending == "abort"
    if ending == "write_eof" and not closing:
        transport.write_eof()
        with pytest.raises(RuntimeError):
            transport.write(b"after eof")
        transport.close()
    elif ending == "abort":
        transport.abort()
    else:
        transport.close()
        if ending == "close_then_write":
            # asyncio queues it behind unsent data, or drops it if nothing is pending.
            pending = transport.get_write_buffer_size() > 0
            data = payload(counter, 10)
            transport.write(data)
            if pending:
                accepted += data
    assert transport.is_closing()
    await asyncio.wait_for(client.done, WAIT)
    while not sinks:
        await asyncio.sleep(0.001)
    await asyncio.wait_for(sinks[0].done, WAIT)
    await asyncio.sleep(0)
    server.close()
    await server.wait_closed()
    loop.set_exception_handler(None)

    received = bytes(sinks[0].data)
    assert accepted.startswith(received), "the peer got bytes that were never written"
    if not aborted:
        assert len(received) >= before_end, (len(received), before_end)
    assert len(client.lost) == 1
    assert transport.get_write_buffer_size() == 0
    assert client.flow[::2] == ["pause"] * len(client.flow[::2])
    assert client.flow[1::2] == ["resume"] * len(client.flow[1::2])
    assert handler_calls == []


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, max_size=12), ending=ENDINGS)
def test_random_transport_call_sequences_keep_asyncio_invariants(loop, ops, ending):
    if is_stock(loop):
        if sys.version_info >= (3, 12):
            # asyncio 3.12+'s sendmsg path never drains an empty chunk given to writelines(),
            # so its transport never finishes closing (CPython gh-155888).
            assume(not any(op == "writelines" and 0 in arg for op, arg in ops))
        # Stock asyncio can raise from its own internals on a write after a close(), abort()
        # or reset step: write() once connection_lost has run after a close() that had data
        # pending (AttributeError: 'NoneType' object has no attribute
        # 'call_exception_handler'), 3.12+'s writelines() on any closing transport
        # (TypeError or AttributeError, CPython gh-136234; see ASYNCIO_BUGS in
        # test_transport_states.py). ferroloop gets these sequences.
        assume(not writes_after_closing(ops, ending))
    loop.run_until_complete(scenario(loop, ops, ending))


def writes_after_closing(ops: list[tuple[str, object]], ending: str) -> bool:
    """Whether a write, writelines or close_then_write ending follows a close, abort or
    peer reset step."""
    seen = False
    for op, _ in ops:
        seen = seen or op in CLOSING_STEPS
        if seen and op in ("write", "writelines"):
            return True
    return seen and ending == "close_then_write"


def is_stock(loop: asyncio.AbstractEventLoop) -> bool:
    import ferroloop

    return not isinstance(loop, ferroloop.Loop)
