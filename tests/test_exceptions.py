"""Exception handler API and how errors in callbacks are reported."""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback

import pytest


def run_briefly(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def failing_callback(arg):
    raise ZeroDivisionError(f"boom {arg}")


def asyncio_errors(caplog):
    return [r for r in caplog.records if r.name == "asyncio" and r.levelno == logging.ERROR]


# --- handler API ----------------------------------------------------------------------


def test_get_set_exception_handler(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


@pytest.mark.parametrize("bad", [1, "handler", object()], ids=["int", "str", "object"])
def test_set_exception_handler_rejects_non_callable(loop, bad):
    with pytest.raises(TypeError):
        loop.set_exception_handler(bad)
    assert loop.get_exception_handler() is None


def test_call_exception_handler_passes_context(loop):
    got = []
    loop.set_exception_handler(lambda lp, ctx: got.append((lp, ctx)))
    context = {"message": "custom", "exception": ValueError("v"), "extra": 1}
    loop.call_exception_handler(context)
    assert got == [(loop, context)]


# --- errors in callbacks --------------------------------------------------------------


def test_exception_in_callback_goes_to_handler_and_loop_continues(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    calls = []
    h = loop.call_soon(failing_callback, 1)
    loop.call_soon(calls.append, "next")
    run_briefly(loop)
    assert calls == ["next"]
    assert len(contexts) == 1
    ctx = contexts[0]
    assert ctx["message"].startswith("Exception in callback")
    assert "failing_callback" in ctx["message"]
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert str(ctx["exception"]) == "boom 1"
    assert ctx["handle"] is h
    # The traceback reaches into the callback, like an exception caught in Python.
    frames = traceback.extract_tb(ctx["exception"].__traceback__)
    assert frames and frames[-1].name == "failing_callback"


@pytest.mark.timeout(10)
def test_exception_in_timer_callback(loop, handle_types):
    _, timer_cls = handle_types
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    th = loop.call_later(0.001, failing_callback, 2)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert contexts[0]["handle"] is th
    assert isinstance(contexts[0]["handle"], timer_cls)
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)


def test_many_failing_callbacks_all_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    for i in range(50):
        loop.call_soon(failing_callback, i)
    run_briefly(loop)
    assert [str(c["exception"]) for c in contexts] == [f"boom {i}" for i in range(50)]


def test_exception_in_callback_logged_without_handler(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    calls = []
    loop.call_soon(failing_callback, 3)
    loop.call_soon(calls.append, "next")
    run_briefly(loop)
    assert calls == ["next"]
    records = asyncio_errors(caplog)
    assert len(records) == 1
    assert "Exception in callback" in records[0].getMessage()
    assert "failing_callback" in records[0].getMessage()
    assert records[0].exc_info[0] is ZeroDivisionError
    assert "in failing_callback" in caplog.text  # the logged traceback shows the callback


def test_handler_that_raises_is_logged(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")

    def bad_handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(bad_handler)
    calls = []
    loop.call_soon(failing_callback, 4)
    loop.call_soon(calls.append, "next")
    run_briefly(loop)
    assert calls == ["next"]
    records = asyncio_errors(caplog)
    assert len(records) == 1
    assert "Unhandled error in exception handler" in records[0].getMessage()
    assert records[0].exc_info[0] is RuntimeError


def test_default_exception_handler_logs_context(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        raise KeyError("k")
    except KeyError as exc:
        loop.default_exception_handler({"message": "my message", "exception": exc, "extra": 5})
    records = asyncio_errors(caplog)
    assert len(records) == 1
    msg = records[0].getMessage()
    assert msg.startswith("my message")
    assert "extra: 5" in msg
    assert records[0].exc_info[0] is KeyError


def test_default_exception_handler_without_message(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop.default_exception_handler({})
    records = asyncio_errors(caplog)
    assert [r.getMessage() for r in records] == ["Unhandled exception in event loop"]


def test_custom_handler_can_defer_to_default(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    seen = []

    def handler(lp, ctx):
        seen.append(ctx["message"])
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    loop.call_soon(failing_callback, 5)
    run_briefly(loop)
    assert len(seen) == 1
    assert len(asyncio_errors(caplog)) == 1


def test_exception_in_future_done_callback_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        fut = loop.create_future()
        fut.add_done_callback(lambda f: failing_callback(6))
        fut.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert "handle" in contexts[0]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_handler_base_exception_propagates(loop, exc_type):
    def handler(lp, ctx):
        raise exc_type()

    loop.set_exception_handler(handler)
    loop.call_soon(failing_callback, 7)
    with pytest.raises(exc_type):
        run_briefly(loop)
    assert not loop.is_running()


@pytest.mark.parametrize(
    "exc_type",
    [asyncio.CancelledError, GeneratorExit, BaseException],
    ids=lambda t: t.__name__,
)
def test_other_base_exceptions_in_callback_are_reported(loop, exc_type):
    """Only SystemExit and KeyboardInterrupt escape run_forever; other BaseExceptions
    from a callback go to the exception handler like any error."""
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def raiser():
        raise exc_type()

    calls = []
    loop.call_soon(raiser)
    loop.call_soon(calls.append, "next")
    run_briefly(loop)
    assert calls == ["next"]
    assert len(contexts) == 1
    assert type(contexts[0]["exception"]) is exc_type


def test_exception_state_cleared_after_failing_callback(loop):
    loop.set_exception_handler(lambda lp, ctx: None)
    seen = []
    loop.call_soon(failing_callback, 8)
    loop.call_soon(lambda: seen.append(sys.exc_info()))
    run_briefly(loop)
    assert seen == [(None, None, None)]


def test_exception_handler_may_schedule_callbacks(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: lp.call_soon(calls.append, "from handler"))
    loop.call_soon(failing_callback, 9)
    run_briefly(loop)
    run_briefly(loop)
    assert calls == ["from handler"]
