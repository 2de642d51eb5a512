"""Callbacks and tasks run inside their contextvars.Context."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading

import pytest

var = contextvars.ContextVar("var", default="default")


def run_briefly(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def context_with(value):
    ctx = contextvars.Context()
    ctx.run(var.set, value)
    return ctx


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "schedule",
    [
        lambda lp, cb, ctx: lp.call_soon(cb, context=ctx),
        lambda lp, cb, ctx: lp.call_later(0.001, cb, context=ctx),
        lambda lp, cb, ctx: lp.call_at(lp.time(), cb, context=ctx),
        lambda lp, cb, ctx: lp.call_soon_threadsafe(cb, context=ctx),
    ],
    ids=["call_soon", "call_later", "call_at", "call_soon_threadsafe"],
)
def test_explicit_context_is_entered(loop, schedule):
    """The callback runs in *that* Context object, not in a copy."""
    ctx = context_with("explicit")
    seen = []

    def cb():
        seen.append(var.get())
        var.set("changed by callback")
        loop.stop()

    schedule(loop, cb, ctx)
    loop.run_forever()
    assert seen == ["explicit"]
    assert ctx[var] == "changed by callback"
    assert var.get() == "default"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "schedule",
    [
        lambda lp, cb: lp.call_soon(cb),
        lambda lp, cb: lp.call_later(0.001, cb),
        lambda lp, cb: lp.call_at(lp.time(), cb),
        lambda lp, cb: lp.call_soon_threadsafe(cb),
    ],
    ids=["call_soon", "call_later", "call_at", "call_soon_threadsafe"],
)
def test_implicit_context_is_copied_at_scheduling_time(loop, schedule):
    seen = []

    def cb():
        seen.append(var.get())
        var.set("changed by callback")
        loop.stop()

    def schedule_in_context():
        var.set("at scheduling")
        schedule(loop, cb)
        var.set("after scheduling")

    outer = contextvars.copy_context()
    outer.run(schedule_in_context)
    loop.run_forever()
    assert seen == ["at scheduling"]
    assert outer[var] == "after scheduling"  # the callback changed its own copy
    assert var.get() == "default"


def test_explicit_none_context_means_copy(loop):
    seen = []

    def schedule():
        var.set("current")
        loop.call_soon(lambda: seen.append(var.get()), context=None)

    contextvars.copy_context().run(schedule)
    run_briefly(loop)
    assert seen == ["current"]


def test_context_changes_do_not_leak_between_callbacks(loop):
    seen = []

    def setter():
        var.set("leaked?")

    def reader():
        seen.append(var.get())

    loop.call_soon(setter)
    loop.call_soon(reader)
    ctx = context_with("own")
    loop.call_soon(setter, context=ctx)
    loop.call_soon(reader)
    run_briefly(loop)
    assert seen == ["default", "default"]
    assert var.get() == "default"
    assert ctx[var] == "leaked?"


def test_shared_explicit_context_is_shared(loop):
    ctx = context_with(0)

    def bump():
        var.set(var.get() + 1)

    for _ in range(5):
        loop.call_soon(bump, context=ctx)
    run_briefly(loop)
    assert ctx[var] == 5


def test_callback_context_survives_exception(loop):
    loop.set_exception_handler(lambda lp, c: None)
    seen = []

    def fail():
        var.set("in failing callback")
        raise ValueError

    loop.call_soon(fail)
    loop.call_soon(lambda: seen.append(var.get()))
    run_briefly(loop)
    assert seen == ["default"]
    assert var.get() == "default"


def test_task_with_explicit_context(loop):
    ctx = context_with("task ctx")

    async def main():
        seen = var.get()
        var.set("set in task")
        await asyncio.sleep(0)
        return seen, var.get()

    task = loop.create_task(main(), context=ctx)
    assert loop.run_until_complete(task) == ("task ctx", "set in task")
    assert ctx[var] == "set in task"
    assert var.get() == "default"


def test_task_copies_current_context(loop):
    async def child():
        seen = var.get()
        var.set("child")
        return seen

    async def main():
        var.set("parent")
        seen = await loop.create_task(child())
        return seen, var.get()

    assert loop.run_until_complete(main()) == ("parent", "parent")
    assert var.get() == "default"


def test_context_visible_across_await_in_callbacks_scheduled_by_task(loop):
    async def main():
        var.set("task value")
        fut = loop.create_future()
        loop.call_soon(lambda: fut.set_result(var.get()))
        return await fut

    assert loop.run_until_complete(main()) == "task value"


@pytest.mark.timeout(10)
def test_fd_callback_context_copied_at_registration(loop):
    a, b = socket.socketpair()
    seen = []
    try:

        def on_readable():
            seen.append(var.get())
            a.recv(100)
            loop.remove_reader(a)
            loop.stop()

        def register():
            var.set("at add_reader")
            loop.add_reader(a, on_readable)

        contextvars.copy_context().run(register)
        b.send(b"x")
        loop.run_forever()
        assert seen == ["at add_reader"]
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(10)
def test_threadsafe_implicit_context_is_the_calling_threads(loop):
    seen = []

    def worker():
        var.set("thread value")
        loop.call_soon_threadsafe(lambda: (seen.append(var.get()), loop.stop()))

    t = threading.Thread(target=worker)
    t.start()
    loop.run_forever()
    t.join()
    assert seen == ["thread value"]


class _Recorder(asyncio.Protocol):
    """Records each data_received with the context variable it saw, then sets it."""

    def __init__(self, seen):
        self.seen = seen

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.seen.append((data, var.get()))
        var.set(data)


@pytest.mark.timeout(10)
def test_transport_read_path_runs_in_one_context_of_its_own(loop):
    # asyncio's read watcher is one handle whose context is copied when reading starts:
    # what data_received sets is seen by the next data_received, and never by the task
    # that made the connection.
    a, b = socket.socketpair()
    seen = []

    async def main():
        var.set("outer")
        transport, _ = await loop.create_connection(lambda: _Recorder(seen), sock=a)
        for chunk in (b"1", b"2"):
            b.send(chunk)
            while len(seen) < int(chunk):
                await asyncio.sleep(0.001)
        outer = var.get()
        transport.close()
        await asyncio.sleep(0)
        return outer

    try:
        assert loop.run_until_complete(contextvars.copy_context().run(main)) == "outer"
        assert seen == [(b"1", "outer"), (b"2", b"1")]
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(10)
def test_pause_reading_skips_a_read_already_ready_in_the_same_iteration(loop):
    # Two connections readable in the same poll, each pausing the other on its first
    # read: whichever runs first stops the other's read, already found ready (asyncio
    # cancels the watcher handle), so exactly one data_received runs.
    pairs = [socket.socketpair() for _ in range(2)]
    seen = []
    transports = []

    class PausesTheOther(asyncio.Protocol):
        def data_received(self, data):
            seen.append(data)
            for t in transports:
                if t.is_reading():
                    t.pause_reading()

    async def main():
        for a, _ in pairs:
            t, _ = await loop.create_connection(PausesTheOther, sock=a)
            transports.append(t)
        await asyncio.sleep(0.01)  # reading has started on both
        for _, b in pairs:
            b.send(b"x")
        await asyncio.sleep(0.05)
        for t in transports:
            t.close()
        await asyncio.sleep(0)

    try:
        loop.run_until_complete(main())
        assert seen == [b"x"]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.timeout(10)
def test_resume_reading_copies_the_context_current_at_the_resume(loop):
    # asyncio's resume_reading() registers a new watcher handle, whose context is a copy of
    # the one current at the resume: what data_received set before the pause is gone.
    a, b = socket.socketpair()
    seen = []

    async def main():
        var.set("main")
        transport, _ = await loop.create_connection(lambda: _Recorder(seen), sock=a)
        b.send(b"1")
        while len(seen) < 1:
            await asyncio.sleep(0.001)
        transport.pause_reading()
        var.set("at resume")
        transport.resume_reading()
        b.send(b"2")
        while len(seen) < 2:
            await asyncio.sleep(0.001)
        transport.close()
        await asyncio.sleep(0)

    try:
        loop.run_until_complete(contextvars.copy_context().run(main))
        assert seen == [(b"1", "main"), (b"2", "at resume")]
    finally:
        a.close()
        b.close()
