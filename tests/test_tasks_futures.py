"""create_future / create_task / task factories, and asyncio's helpers on top of them."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time

import pytest


async def value_after(delay, value):
    await asyncio.sleep(delay)
    return value


# --- create_future --------------------------------------------------------------------


def test_create_future_is_exact_future_type(loop):
    fut = loop.create_future()
    assert type(fut) is asyncio.Future
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_future_callbacks_run_on_loop(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append((f.result(), asyncio.get_running_loop())))
    loop.call_soon(fut.set_result, "r")
    loop.run_until_complete(fut)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [("r", loop)]


def test_future_done_callback_context(loop):
    var = contextvars.ContextVar("var")
    ctx = contextvars.Context()
    ctx.run(var.set, "cb ctx")
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append(var.get("unset")), context=ctx)
    fut.set_result(None)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ["cb ctx"]


# --- create_task ----------------------------------------------------------------------


def test_create_task_returns_task(loop):
    task = loop.create_task(value_after(0, "v"), name="my-task")
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert task.get_name() == "my-task"
    assert loop.run_until_complete(task) == "v"


def test_create_task_default_name(loop):
    task = loop.create_task(value_after(0, None))
    assert task.get_name().startswith("Task-")
    loop.run_until_complete(task)


def test_create_task_with_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "task ctx")

    async def read():
        await asyncio.sleep(0)
        return var.get()

    assert loop.run_until_complete(loop.create_task(read(), context=ctx)) == "task ctx"


def test_create_task_cancel(loop):
    task = loop.create_task(value_after(10, None))
    loop.call_soon(task.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert task.cancelled()


def test_create_task_rejects_non_coroutine(loop):
    with pytest.raises(TypeError):
        loop.create_task(lambda: None)


# --- task factory ---------------------------------------------------------------------


def test_task_factory(loop):
    assert loop.get_task_factory() is None
    calls = []

    class MyTask(asyncio.Task):
        pass

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return MyTask(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    task = loop.create_task(value_after(0, 1), name="named")
    assert type(task) is MyTask
    assert task.get_name() == "named"
    assert loop.run_until_complete(task) == 1
    assert calls == [(loop, {})]

    ctx = contextvars.copy_context()
    loop.run_until_complete(loop.create_task(value_after(0, 2), context=ctx))
    assert calls[1] == (loop, {"context": ctx})

    # run_until_complete(coro) goes through the factory too.
    assert loop.run_until_complete(value_after(0, 3)) == 3
    assert len(calls) == 3

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    plain = loop.create_task(value_after(0, 4))
    assert type(plain) is not MyTask
    assert loop.run_until_complete(plain) == 4


def test_task_factory_result_is_returned_as_is(loop, loop_kind):
    if loop_kind == "asyncio" and (3, 13) <= sys.version_info < (3, 13, 3):
        # 3.13.0-3.13.2 call set_name(None) on whatever the factory returned (gh-130033):
        # an AttributeError here, and every factory-made task named "None".
        pytest.skip("stock asyncio 3.13.0-3.13.2 bug gh-130033")
    sentinel_fut = loop.create_future()
    sentinel_fut.set_result("from factory")

    def factory(lp, coro):
        coro.close()
        return sentinel_fut

    loop.set_task_factory(factory)
    assert loop.create_task(value_after(0, None)) is sentinel_fut


@pytest.mark.parametrize("bad", [1, "factory", object()], ids=["int", "str", "object"])
def test_set_task_factory_rejects_non_callable(loop, bad):
    with pytest.raises(TypeError):
        loop.set_task_factory(bad)
    assert loop.get_task_factory() is None


# --- asyncio helpers ------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_gather(loop):
    async def main():
        return await asyncio.gather(
            value_after(0.02, "a"), value_after(0.01, "b"), value_after(0, "c")
        )

    assert loop.run_until_complete(main()) == ["a", "b", "c"]


@pytest.mark.timeout(10)
def test_gather_return_exceptions(loop):
    async def fail():
        raise ValueError("x")

    async def main():
        return await asyncio.gather(fail(), value_after(0, 1), return_exceptions=True)

    res = loop.run_until_complete(main())
    assert isinstance(res[0], ValueError)
    assert res[1] == 1


@pytest.mark.timeout(10)
def test_wait_first_completed(loop):
    async def main():
        slow = asyncio.ensure_future(value_after(5, "slow"))
        fast = asyncio.ensure_future(value_after(0.01, "fast"))
        done, pending = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
        slow.cancel()
        return done == {fast}, pending == {slow}

    assert loop.run_until_complete(main()) == (True, True)


@pytest.mark.timeout(10)
def test_wait_timeout(loop):
    async def main():
        t = asyncio.ensure_future(value_after(5, None))
        t0 = loop.time()
        done, pending = await asyncio.wait({t}, timeout=0.05)
        elapsed = loop.time() - t0
        t.cancel()
        return done, pending == {t}, elapsed

    done, pending_ok, elapsed = loop.run_until_complete(main())
    assert done == set()
    assert pending_ok
    assert 0.04 <= elapsed < 2


@pytest.mark.timeout(10)
def test_wait_for_timeout(loop):
    async def main():
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(value_after(5, None), 0.05)
        return time.monotonic() - t0

    assert 0.04 <= loop.run_until_complete(main()) < 2


@pytest.mark.timeout(10)
def test_wait_for_result(loop):
    async def main():
        return await asyncio.wait_for(value_after(0.01, "ok"), 5)

    assert loop.run_until_complete(main()) == "ok"


@pytest.mark.timeout(10)
def test_timeout_context_manager(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        return "ok"

    assert loop.run_until_complete(main()) == "ok"


@pytest.mark.timeout(10)
def test_sleep_duration(loop):
    async def main():
        t0 = time.monotonic()
        await asyncio.sleep(0.1)
        return time.monotonic() - t0

    assert 0.099 <= loop.run_until_complete(main()) < 1


@pytest.mark.timeout(10)
def test_sleep_zero_yields(loop):
    order = []

    async def worker(name):
        for i in range(3):
            order.append((name, i))
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(worker("a"), worker("b"))

    loop.run_until_complete(main())
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


@pytest.mark.timeout(10)
def test_queue_producer_consumer(loop):
    async def main():
        q = asyncio.Queue(maxsize=3)
        got = []

        async def producer():
            for i in range(20):
                await q.put(i)
            await q.put(None)

        async def consumer():
            while (item := await q.get()) is not None:
                got.append(item)

        await asyncio.gather(producer(), consumer())
        return got

    assert loop.run_until_complete(main()) == list(range(20))


@pytest.mark.timeout(10)
def test_task_group(loop):
    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(value_after(0.001 * i, i)) for i in range(5)]
        return [t.result() for t in tasks]

    assert loop.run_until_complete(main()) == list(range(5))


@pytest.mark.timeout(10)
def test_shield_and_cancellation_propagation(loop):
    async def main():
        inner = asyncio.ensure_future(value_after(0.02, "inner"))
        outer = asyncio.ensure_future(asyncio.shield(inner))
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        return await inner

    assert loop.run_until_complete(main()) == "inner"
