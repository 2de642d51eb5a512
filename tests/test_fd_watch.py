"""add_reader / remove_reader / add_writer / remove_writer."""

from __future__ import annotations

import os
import resource
import socket

import pytest

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


class FilenoOnly:
    """Any object with a fileno() method is accepted where an fd is."""

    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd


def run_until(loop, predicate, timeout=5.0):
    deadline = loop.time() + timeout

    def check():
        if predicate() or loop.time() > deadline:
            loop.stop()
        else:
            loop.call_later(0.001, check)

    loop.call_soon(check)
    loop.run_forever()
    assert predicate(), "condition not reached before the deadline"


# --- readers --------------------------------------------------------------------------


@pytest.mark.parametrize("as_", ["socket", "int", "fileno_object"])
def test_add_reader_socket(loop, sockpair, as_):
    a, b = sockpair
    target = {"socket": a, "int": a.fileno(), "fileno_object": FilenoOnly(a.fileno())}[as_]
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))

    loop.add_reader(target, on_readable, "tag")
    b.send(b"hello")
    run_until(loop, lambda: got)
    assert got == [("tag", b"hello")]
    assert loop.remove_reader(target) is True
    assert loop.remove_reader(target) is False


def test_add_reader_pipe(loop, pipe):
    r, w = pipe
    got = []
    loop.add_reader(r, lambda: got.append(os.read(r, 100)))
    os.write(w, b"data")
    run_until(loop, lambda: got)
    assert got == [b"data"]
    assert loop.remove_reader(r)


def test_pipe_reader_sees_eof_when_writer_closes(loop, pipe):
    """EPOLLHUP alone (no data) must still call the reader."""
    r, w = pipe
    got = []

    def on_readable():
        got.append(os.read(r, 100))
        loop.remove_reader(r)

    loop.add_reader(r, on_readable)
    os.close(w)
    run_until(loop, lambda: got)
    assert got == [b""]


def test_pipe_writer_called_when_reader_closes(loop, pipe):
    """An error condition (EPOLLERR) wakes the writer, which then sees EPIPE."""
    r, w = pipe
    while True:  # fill the pipe so that it is not writable any more
        try:
            os.write(w, b"x" * 65536)
        except BlockingIOError:
            break
    errors = []

    def on_writable():
        try:
            os.write(w, b"x")
        except OSError as exc:
            errors.append(type(exc))
        loop.remove_writer(w)

    loop.add_writer(w, on_writable)
    loop.call_later(0.02, os.close, r)
    run_until(loop, lambda: errors)
    assert errors == [BrokenPipeError]


def test_reader_not_called_without_data(loop, sockpair):
    a, _ = sockpair
    calls = []
    loop.add_reader(a, calls.append, 1)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == []
    assert loop.remove_reader(a)


def test_reader_level_triggered(loop, sockpair):
    """A reader that consumes only part of the data is called again."""
    a, b = sockpair
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(1)))
    b.send(b"abcde")
    run_until(loop, lambda: len(got) == 5)
    assert b"".join(got) == b"abcde"
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert len(got) == 5  # drained: no more calls
    loop.remove_reader(a)


def test_reader_sees_eof(loop, sockpair):
    a, b = sockpair
    got = []

    def on_readable():
        data = a.recv(100)
        got.append(data)
        if not data:
            loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.send(b"last")
    b.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: got and got[-1] == b"")
    assert got == [b"last", b""]


def test_replace_reader(loop, sockpair):
    a, b = sockpair
    calls = []
    loop.add_reader(a, lambda: calls.append("old"))
    loop.add_reader(a, lambda: (calls.append("new"), a.recv(100)))
    b.send(b"x")
    run_until(loop, lambda: calls)
    assert calls == ["new"]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_reader_removes_itself(loop, sockpair):
    a, b = sockpair
    calls = []

    def once():
        calls.append(1)
        assert loop.remove_reader(a) is True

    loop.add_reader(a, once)
    b.send(b"xx")  # data stays unread: a still-registered reader would be called again
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == [1]


def test_re_add_reader_after_remove(loop, sockpair):
    a, b = sockpair
    got = []
    for i in range(3):
        loop.add_reader(a, lambda: got.append(a.recv(10)))
        b.send(str(i).encode())
        run_until(loop, lambda i=i: len(got) == i + 1)
        assert loop.remove_reader(a) is True
    assert got == [b"0", b"1", b"2"]


def test_reader_removed_by_other_reader_in_same_iteration(loop):
    """Both fds are ready in one poll; the first callback removes the other watcher,
    which must then not be called (asyncio cancels its pending handle)."""
    pairs = [socket.socketpair() for _ in range(2)]
    calls = []
    try:
        (a1, b1), (a2, b2) = pairs

        def make_cb(mine, other):
            def cb():
                calls.append(mine)
                loop.remove_reader(mine)
                loop.remove_reader(other)

            return cb

        loop.add_reader(a1, make_cb(a1, a2))
        loop.add_reader(a2, make_cb(a2, a1))
        b1.send(b"x")
        b2.send(b"x")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        assert len(calls) == 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_reader_replaced_by_other_reader_in_same_iteration(loop):
    pairs = [socket.socketpair() for _ in range(2)]
    calls = []
    try:
        (a1, b1), (a2, b2) = pairs

        def make_cb(mine, other):
            def cb():
                calls.append(("old", mine))
                loop.remove_reader(mine)
                loop.add_reader(
                    other,
                    lambda: (calls.append(("new", other)), loop.remove_reader(other)),
                )

            return cb

        loop.add_reader(a1, make_cb(a1, a2))
        loop.add_reader(a2, make_cb(a2, a1))
        b1.send(b"x")
        b2.send(b"x")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        assert len(calls) == 2
        assert calls[0][0] == "old"
        assert calls[1][0] == "new"
        assert calls[0][1] is not calls[1][1]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_reader_propagates(loop, sockpair, exc_type):
    a, b = sockpair

    def raiser():
        a.recv(10)
        raise exc_type()

    loop.add_reader(a, raiser)
    b.send(b"x")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    b.send(b"y")
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(10)))
    run_until(loop, lambda: got)
    assert got == [b"y"]
    loop.remove_reader(a)


def test_reader_added_by_callback(loop, sockpair):
    a, b = sockpair
    got = []
    loop.call_soon(loop.add_reader, a, lambda: got.append(a.recv(10)))
    loop.call_later(0.01, b.send, b"late")
    run_until(loop, lambda: got)
    assert got == [b"late"]
    loop.remove_reader(a)


def test_reader_closes_fd_while_running(loop, sockpair):
    a, b = sockpair
    calls = []
    other = []

    def close_it():
        calls.append(1)
        loop.remove_reader(a)
        a.close()

    loop.add_reader(a, close_it)
    b.send(b"x")
    loop.call_later(0.05, other.append, "timers still fire")
    run_until(loop, lambda: other)
    assert calls == [1]


def test_reader_closes_fd_without_removing(loop):
    """Closing a watched fd from its own callback must not crash or spin the loop."""
    a, b = socket.socketpair()
    fd = a.fileno()
    calls = []

    def close_it():
        calls.append(1)
        a.close()

    try:
        loop.add_reader(fd, close_it)
        b.send(b"x")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        assert calls == [1]
        loop.remove_reader(fd)  # forgetting it afterwards must not raise
    finally:
        a.close()
        b.close()


def test_many_readers(loop):
    """More ready fds than one poll returns, and fd numbers past select()'s 1024 limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = max(50, min(600, (soft - 200) // 2))
    pairs = [socket.socketpair() for _ in range(n)]
    got = {}
    try:
        for i, (a, _) in enumerate(pairs):
            loop.add_reader(a, lambda i=i, a=a: got.setdefault(i, a.recv(10)))
        for i, (_, b) in enumerate(pairs):
            b.send(str(i).encode())
        run_until(loop, lambda: len(got) == n)
        assert got == {i: str(i).encode() for i in range(n)}
        for a, _ in pairs:
            assert loop.remove_reader(a)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# --- writers --------------------------------------------------------------------------


@pytest.mark.parametrize("as_", ["socket", "int", "fileno_object"])
def test_add_writer(loop, sockpair, as_):
    a, b = sockpair
    target = {"socket": a, "int": a.fileno(), "fileno_object": FilenoOnly(a.fileno())}[as_]
    calls = []

    def on_writable(tag):
        calls.append(tag)
        a.send(b"from writer")
        loop.remove_writer(target)

    loop.add_writer(target, on_writable, "w")
    run_until(loop, lambda: calls)
    assert calls == ["w"]
    assert b.recv(100) == b"from writer"
    assert loop.remove_writer(target) is False


def test_writer_pipe(loop, pipe):
    r, w = pipe
    calls = []

    def on_writable():
        calls.append(os.write(w, b"pipe"))
        loop.remove_writer(w)

    loop.add_writer(w, on_writable)
    run_until(loop, lambda: calls)
    assert os.read(r, 100) == b"pipe"


def test_writer_waits_for_buffer_space(loop, sockpair):
    a, b = sockpair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(BlockingIOError):
        while True:
            a.send(b"x" * 65536)
    calls = []
    loop.add_writer(a, calls.append, 1)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == []  # buffer full: not writable

    def drain():
        try:
            while b.recv(1 << 20):
                pass
        except BlockingIOError:
            pass

    loop.call_soon(drain)
    run_until(loop, lambda: calls)
    assert loop.remove_writer(a)


def test_replace_writer(loop, sockpair):
    a, _ = sockpair
    calls = []
    loop.add_writer(a, calls.append, "old")
    loop.add_writer(a, lambda: (calls.append("new"), loop.remove_writer(a)))
    run_until(loop, lambda: calls)
    assert calls == ["new"]


def test_reader_and_writer_on_same_fd(loop, sockpair):
    a, b = sockpair
    events = []

    def on_writable():
        events.append("w")
        loop.remove_writer(a)
        b.send(b"ping")

    loop.add_reader(a, lambda: events.append(("r", a.recv(100))))
    loop.add_writer(a, on_writable)
    run_until(loop, lambda: len(events) == 2)
    assert events == ["w", ("r", b"ping")]

    # Removing the writer kept the reader; removing the reader leaves the fd unwatched.
    assert loop.remove_writer(a) is False
    b.send(b"again")
    run_until(loop, lambda: len(events) == 3)
    assert events[2] == ("r", b"again")
    assert loop.remove_reader(a) is True

    # And the other way round: remove the reader, keep the writer.
    writes = []
    loop.add_reader(a, events.append, "unexpected")
    loop.add_writer(a, writes.append, "w")
    assert loop.remove_reader(a) is True
    b.send(b"ignored")
    run_until(loop, lambda: writes)
    assert "unexpected" not in events
    assert loop.remove_writer(a) is True


# --- removal and invalid arguments ----------------------------------------------------


def test_remove_absent_returns_false(loop, sockpair):
    a, _ = sockpair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a.fileno()) is False
    loop.add_reader(a, print)
    assert loop.remove_writer(a) is False  # a reader is not a writer
    assert loop.remove_reader(a) is True


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
@pytest.mark.parametrize(
    "bad",
    [-1, "abc", 1.5, None, object()],
    ids=["minus_one", "str", "float", "None", "object"],
)
def test_invalid_fd_raises_value_error(loop, method, bad):
    args = (print,) if method.startswith("add") else ()
    with pytest.raises(ValueError):
        getattr(loop, method)(bad, *args)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_closed_socket_object_raises_value_error(loop, method):
    s = socket.socket()
    s.close()  # fileno() is now -1
    with pytest.raises(ValueError):
        getattr(loop, method)(s, print)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_closed_fd_raises_oserror(loop, method):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        getattr(loop, method)(r, print)
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(r) is False


def test_fd_methods_on_closed_loop(loop, sockpair):
    a, _ = sockpair
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_reader(a, print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_writer(a, print)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_close_loop_with_watchers_registered(loop, sockpair):
    a, b = sockpair
    loop.add_reader(a, print)
    loop.add_writer(b, print)
    loop.close()  # must not raise, and the sockets stay usable
    b.send(b"x")
    assert a.recv(10) == b"x"


# --- errors in fd callbacks -----------------------------------------------------------


def test_exception_in_reader_reported(loop, sockpair):
    a, b = sockpair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad_reader():
        a.recv(100)
        raise ValueError("reader failed")

    loop.add_reader(a, bad_reader)
    b.send(b"x")
    run_until(loop, lambda: contexts)
    assert isinstance(contexts[0]["exception"], ValueError)
    assert contexts[0]["message"].startswith("Exception in callback")
    loop.remove_reader(a)


@pytest.mark.parametrize("direction", ["reader", "writer"])
def test_remove_watcher_by_a_socket_closed_after_registering(loop, direction):
    """asyncio's selector finds a registration by its file object when the object can no
    longer give its fd (a closed socket's fileno() is -1): remove_reader/remove_writer
    return True instead of raising ValueError (anyio closes sockets this way)."""
    a, b = socket.socketpair()
    add = getattr(loop, f"add_{direction}")
    remove = getattr(loop, f"remove_{direction}")
    add(a, lambda: None)
    a.close()
    assert remove(a) is True
    # Once removed, nothing knows the object any more: ValueError, as from asyncio.
    with pytest.raises(ValueError):
        remove(a)
    b.close()


def test_remove_watcher_unknown_closed_socket_raises(loop):
    """A closed socket object that was never registered: ValueError, as asyncio's selector
    raises it."""
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(ValueError):
        loop.remove_reader(a)
    b.close()


def test_loop_closed_attribute(loop_factory):
    """`loop._closed`, the private flag asyncio and uvloop both have."""
    lp = loop_factory()
    assert lp._closed is False
    lp.close()
    assert lp._closed is True
