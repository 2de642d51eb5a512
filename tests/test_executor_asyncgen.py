"""run_in_executor / default executor, async generator hooks and shutdown_asyncgens."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import threading

import pytest

pytestmark = pytest.mark.timeout(30)


def whoami(*args):
    return threading.current_thread(), args


# --- executors ------------------------------------------------------------------------


def test_run_in_default_executor(loop):
    fut = loop.run_in_executor(None, whoami, 1, 2)
    assert isinstance(fut, asyncio.Future)
    thread, args = loop.run_until_complete(fut)
    assert args == (1, 2)
    assert thread is not threading.current_thread()


def test_run_in_executor_exception(loop):
    def fail():
        raise KeyError("in thread")

    with pytest.raises(KeyError, match="in thread"):
        loop.run_until_complete(loop.run_in_executor(None, fail))


def test_run_in_executor_many(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(50)))

    assert loop.run_until_complete(main()) == [i * i for i in range(50)]


def test_run_in_executor_rejects_coroutine_function_in_debug(loop):
    async def coro_func():
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.run_in_executor(None, coro_func)


def test_run_in_custom_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom") as ex:
        thread, _ = loop.run_until_complete(loop.run_in_executor(ex, whoami))
    assert thread.name.startswith("custom")


def test_set_default_executor(loop):
    ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mydefault")
    loop.set_default_executor(ex)
    thread, _ = loop.run_until_complete(loop.run_in_executor(None, whoami))
    assert thread.name.startswith("mydefault")
    loop.run_until_complete(loop.shutdown_default_executor())
    assert not thread.is_alive()


def test_set_default_executor_rejects_other_executors(loop):
    class NotAThreadPool(concurrent.futures.Executor):
        pass

    with pytest.raises(TypeError):
        loop.set_default_executor(NotAThreadPool())
    with pytest.raises(TypeError):
        loop.set_default_executor(None)


def test_shutdown_default_executor(loop):
    thread, _ = loop.run_until_complete(loop.run_in_executor(None, whoami))
    assert thread.is_alive()
    loop.run_until_complete(loop.shutdown_default_executor())
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, whoami)
    # A custom executor still works after the default one is gone.
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        assert loop.run_until_complete(loop.run_in_executor(ex, pow, 3, 2)) == 9


def test_shutdown_default_executor_unused(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, whoami)


def test_shutdown_default_executor_waits_for_jobs(loop):
    release = threading.Event()
    done = []

    def job():
        release.wait(10)
        done.append(1)

    async def main():
        fut = loop.run_in_executor(None, job)
        loop.call_later(0.05, release.set)
        await loop.shutdown_default_executor()
        assert done == [1]
        await fut

    loop.run_until_complete(main())


# --- async generators -----------------------------------------------------------------


def make_agen(log):
    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("finalized")

    return agen()


def test_asyncgen_hooks_installed_while_running(loop):
    before = sys.get_asyncgen_hooks()

    async def hooks():
        return sys.get_asyncgen_hooks()

    firstiter, finalizer = loop.run_until_complete(hooks())
    assert firstiter is not None
    assert finalizer is not None
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_finalizes_suspended_generators(loop):
    log = []
    keep = []

    async def start():
        g = make_agen(log)
        keep.append(g)
        assert await g.__anext__() == 1

    loop.run_until_complete(start())
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"]


def test_shutdown_asyncgens_reports_errors(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    keep = []

    async def bad():
        try:
            yield 1
        finally:
            raise ValueError("in aclose")

    async def start():
        g = bad()
        keep.append(g)
        await g.__anext__()

    loop.run_until_complete(start())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ValueError)
    assert contexts[0]["asyncgen"] is keep[0]


def test_garbage_collected_asyncgen_is_finalized_by_loop(loop):
    """The loop's finalizer hook schedules aclose() for a dropped generator."""
    log = []

    async def main():
        g = make_agen(log)
        await g.__anext__()
        del g
        gc.collect()
        for _ in range(10):
            if log:
                break
            await asyncio.sleep(0)
        return list(log)

    assert loop.run_until_complete(main()) == ["finalized"]


def test_exhausted_asyncgen_not_tracked(loop):
    log = []

    async def main():
        return [x async for x in make_agen(log)]

    assert loop.run_until_complete(main()) == [1, 2]
    assert log == ["finalized"]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"]


def test_runner_finalizes_suspended_asyncgen(loop_kind, request):
    """asyncio.run / ferroloop.run call shutdown_asyncgens before closing."""
    if loop_kind == "asyncio":
        run = asyncio.run
    else:
        run = request.getfixturevalue("ferroloop").run
    log = []
    keep = []

    async def main():
        g = make_agen(log)
        keep.append(g)
        await g.__anext__()
        return asyncio.get_running_loop()

    used_loop = run(main())
    assert log == ["finalized"]
    assert used_loop.is_closed()


def test_runner_shuts_down_default_executor(loop_kind, request):
    if loop_kind == "asyncio":
        run = asyncio.run
    else:
        run = request.getfixturevalue("ferroloop").run

    async def main():
        thread, _ = await asyncio.get_running_loop().run_in_executor(None, whoami)
        return thread

    thread = run(main())
    assert not thread.is_alive()
