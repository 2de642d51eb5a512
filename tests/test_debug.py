"""Debug mode: get_debug/set_debug, environment switches, slow callbacks, source locations,
never-awaited / never-retrieved diagnostics, and the thread check."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

NON_THREADSAFE = "Non-thread-safe operation invoked on an event loop other than the current one"


def run_briefly(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def block(seconds):
    time.sleep(seconds)


def my_callback():
    pass


async def coro_func():
    pass


def asyncio_messages(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno == level]


# --- switches -------------------------------------------------------------------------


def test_get_set_debug(loop):
    expected = sys.flags.dev_mode or bool(os.environ.get("PYTHONASYNCIODEBUG"))
    assert loop.get_debug() is expected
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


MAKE_LOOP = {
    "asyncio": "import asyncio; loop = asyncio.SelectorEventLoop()",
    "ferroloop": "import ferroloop; loop = ferroloop.new_event_loop()",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({}, [], "False"),
        ({"PYTHONASYNCIODEBUG": "1"}, [], "True"),
        ({"PYTHONASYNCIODEBUG": ""}, [], "False"),
        ({}, ["-X", "dev"], "True"),
        ({"PYTHONDEVMODE": "1"}, [], "True"),
    ],
    ids=["default", "envvar_set", "envvar_empty", "dev_flag", "devmode_envvar"],
)
def test_debug_from_environment(request, loop_kind, env, flags, expected):
    if loop_kind == "ferroloop":
        request.getfixturevalue("ferroloop")  # fails clearly if it cannot be imported
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
    code = MAKE_LOOP[loop_kind] + "; print(loop.get_debug()); loop.close()"
    out = subprocess.run(
        [sys.executable, *flags, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    )
    assert out.stdout.strip() == expected


# --- slow callbacks -------------------------------------------------------------------


def test_slow_callback_duration_default(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


@pytest.mark.timeout(10)
def test_slow_callback_is_logged_in_debug(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    def slow_callback():
        block(0.05)

    loop.call_soon(my_callback)
    loop.call_soon(slow_callback)
    run_briefly(loop)
    warnings = asyncio_messages(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Executing <")
    assert "slow_callback" in warnings[0]
    assert "took" in warnings[0]
    assert "seconds" in warnings[0]


@pytest.mark.timeout(10)
def test_slow_task_step_is_logged_in_debug(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    async def slow_coroutine():
        block(0.05)

    loop.run_until_complete(slow_coroutine())
    warnings = asyncio_messages(caplog, logging.WARNING)
    assert any("Executing" in w and "slow_coroutine" in w and "took" in w for w in warnings), (
        warnings
    )


@pytest.mark.timeout(10)
def test_slow_callback_not_logged_without_debug(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01
    loop.call_soon(block, 0.03)
    run_briefly(loop)
    assert asyncio_messages(caplog, logging.WARNING) == []


# --- source locations -----------------------------------------------------------------


def test_handle_repr_shows_creation_site_in_debug(loop):
    loop.set_debug(True)
    line = sys._getframe().f_lineno + 1
    h = loop.call_soon(my_callback)
    assert f"created at {__file__}:{line}" in repr(h)
    line = sys._getframe().f_lineno + 1
    th = loop.call_later(10, my_callback)
    assert f"created at {__file__}:{line}" in repr(th)
    th.cancel()
    assert "my_callback" in repr(th)  # debug mode keeps the repr after cancel


def test_handle_repr_has_no_creation_site_without_debug(loop):
    loop.set_debug(False)
    h = loop.call_soon(my_callback)
    assert "created at" not in repr(h)


def test_source_traceback_in_exception_context(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop.set_debug(True)

    def fail():
        raise ValueError("x")

    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    line = sys._getframe().f_lineno + 1
    loop.call_soon(fail)
    run_briefly(loop)
    frame = contexts[0]["source_traceback"][-1]
    assert (frame[0], frame[1]) == (__file__, line)

    loop.set_exception_handler(None)
    loop.call_soon(fail)
    run_briefly(loop)
    (msg,) = asyncio_messages(caplog, logging.ERROR)
    assert "Object created at (most recent call last)" in msg
    assert __file__ in msg


# --- never awaited / never retrieved --------------------------------------------------


def test_never_awaited_coroutine_warning(loop):
    async def main():
        coro_func()  # never awaited
        gc.collect()

    with pytest.warns(RuntimeWarning, match="coroutine 'coro_func' was never awaited"):
        loop.run_until_complete(main())


def test_never_awaited_coroutine_origin_in_debug(loop):
    loop.set_debug(True)

    async def main():
        coro_func()  # never awaited
        gc.collect()

    with pytest.warns(RuntimeWarning, match="was never awaited") as record:
        loop.run_until_complete(main())
    text = str(record[0].message)
    assert "Coroutine created at (most recent call last)" in text
    assert "coro_func()  # never awaited" in text


def test_coroutine_origin_tracking_only_while_running_in_debug(loop):
    before = sys.get_coroutine_origin_tracking_depth()
    loop.set_debug(True)

    async def depth():
        return sys.get_coroutine_origin_tracking_depth()

    assert loop.run_until_complete(depth()) > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_future_exception_never_retrieved(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    fut = loop.create_future()
    fut.set_exception(ValueError("lost"))
    del fut
    gc.collect()
    (msg,) = asyncio_messages(caplog, logging.ERROR)
    assert msg.startswith("Future exception was never retrieved")

    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    fut = loop.create_future()
    fut.set_exception(ValueError("lost"))
    del fut
    gc.collect()
    assert [c["message"] for c in contexts] == ["Future exception was never retrieved"]
    assert isinstance(contexts[0]["exception"], ValueError)
    assert "future" in contexts[0]


def test_task_exception_never_retrieved(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")

    async def fail():
        raise ValueError("lost in task")

    task = loop.create_task(fail())
    run_briefly(loop)
    assert task.done()
    del task
    gc.collect()
    (msg,) = asyncio_messages(caplog, logging.ERROR)
    assert msg.startswith("Task exception was never retrieved")
    assert "fail()" in msg


# --- thread check ---------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_non_threadsafe_call_from_other_thread_raises_in_debug(loop):
    loop.set_debug(True)
    errors = []
    calls = []

    def worker():
        for call in (
            lambda: loop.call_soon(my_callback),
            lambda: loop.call_later(1, my_callback),
            lambda: loop.call_at(loop.time() + 1, my_callback),
        ):
            try:
                call()
            except RuntimeError as exc:
                errors.append(str(exc))
        loop.call_soon_threadsafe(calls.append, "threadsafe is fine")
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    assert errors == [NON_THREADSAFE] * 3
    assert calls == ["threadsafe is fine"]


@pytest.mark.timeout(10)
def test_thread_check_only_while_running(loop):
    """A loop that is not running may be prepared from any thread."""
    loop.set_debug(True)
    errors = []

    def worker():
        try:
            loop.call_soon(my_callback).cancel()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == []
