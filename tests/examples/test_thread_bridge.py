"""examples/thread_bridge.py on both loops: results, exceptions and cancellations
crossing the thread boundary in both directions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import example_command, load_example

ROOT = Path(__file__).resolve().parents[2]


tb = load_example("thread_bridge")
ThreadBridge = tb.ThreadBridge


class QuoteError(Exception):
    def __init__(self, symbol: str, code: int) -> None:
        super().__init__(f"bad quote {symbol} ({code})")
        self.symbol = symbol
        self.code = code


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="blk") as ex:
        yield ex


def _run(loop: asyncio.AbstractEventLoop, coro, timeout: float = 4.0):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


@pytest.mark.timeout(10)
def test_result_crosses_from_loop_to_thread(loop, pool) -> None:
    async def compute(x: int) -> tuple[int, int]:
        await asyncio.sleep(0.001)
        return x * x, threading.get_ident()

    def in_thread(bridge) -> tuple[int, int, int]:
        value, ran_on = bridge.call(compute(7), timeout=3)
        return value, ran_on, threading.get_ident()

    async def main():
        bridge = ThreadBridge(asyncio.get_running_loop(), pool)
        [out] = await bridge.run_threads(in_thread, [(bridge,)])
        return out, threading.get_ident()

    (value, ran_on, worker_ident), loop_ident = _run(loop, main())
    assert value == 49
    assert ran_on == loop_ident  # the coroutine ran in the loop's thread
    assert worker_ident != loop_ident


@pytest.mark.timeout(10)
def test_exception_crosses_from_loop_to_thread(loop, pool) -> None:
    raised: list[BaseException] = []

    async def failing(symbol: str) -> None:
        await asyncio.sleep(0)
        exc = QuoteError(symbol, 42)
        raised.append(exc)
        raise exc

    def in_thread(bridge) -> BaseException:
        with pytest.raises(QuoteError) as info:
            bridge.call(failing("ACME"), timeout=3)
        return info.value

    async def main():
        bridge = ThreadBridge(asyncio.get_running_loop(), pool)
        return await bridge.run_threads(in_thread, [(bridge,)])

    [seen] = _run(loop, main())
    assert type(seen) is QuoteError
    assert str(seen) == "bad quote ACME (42)"
    assert (seen.symbol, seen.code) == ("ACME", 42)
    assert seen is raised[0]  # the very object raised in the loop


@pytest.mark.timeout(10)
def test_thread_exception_reaches_the_loop(loop, pool) -> None:
    def in_thread(n: int) -> int:
        if n == 2:
            raise QuoteError("T", n)
        return n

    async def main():
        bridge = ThreadBridge(asyncio.get_running_loop(), pool)
        assert await bridge.run_threads(in_thread, [(0,), (1,)]) == [0, 1]
        with pytest.raises(QuoteError, match=r"bad quote T \(2\)"):
            await bridge.run_threads(in_thread, [(1,), (2,), (3,)])

    _run(loop, main())


@pytest.mark.timeout(10)
def test_cancelling_concurrent_future_cancels_coroutine(loop, pool) -> None:
    started = threading.Event()

    async def main():
        lp = asyncio.get_running_loop()
        coroutine_cancelled = asyncio.Event()
        finished_normally: list[bool] = []

        async def long_job() -> str:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                coroutine_cancelled.set()
                raise
            finished_normally.append(True)
            return "never"

        def in_thread(bridge) -> tuple[bool, bool, bool]:
            fut = bridge.submit(long_job())
            assert started.wait(3), "coroutine never started in the loop"
            cancel_ok = fut.cancel()
            try:
                fut.result(timeout=3)
                got_cancelled_error = False
            except concurrent.futures.CancelledError:
                got_cancelled_error = True
            return cancel_ok, got_cancelled_error, fut.cancelled()

        bridge = ThreadBridge(lp, pool)
        [out] = await bridge.run_threads(in_thread, [(bridge,)])
        await asyncio.wait_for(coroutine_cancelled.wait(), 2)
        return out, finished_normally

    (cancel_ok, got_cancelled_error, is_cancelled), finished_normally = _run(loop, main())
    assert cancel_ok and got_cancelled_error and is_cancelled
    assert finished_normally == []


@pytest.mark.timeout(10)
def test_coroutine_cancelled_in_loop_is_seen_by_thread(loop, pool) -> None:
    async def main():
        lp = asyncio.get_running_loop()
        tasks: list[asyncio.Task] = []
        release = threading.Event()

        async def victim() -> None:
            tasks.append(asyncio.current_task())
            release.set()
            await asyncio.sleep(30)

        def in_thread(bridge) -> str:
            fut = bridge.submit(victim())
            try:
                fut.result(timeout=3)
            except concurrent.futures.CancelledError:
                return "cancelled"
            return "finished"

        def timeout_in_thread(bridge) -> str:
            try:
                bridge.call(asyncio.sleep(30), timeout=0.05)
            except concurrent.futures.TimeoutError:
                return "timeout"
            return "finished"

        bridge = ThreadBridge(lp, pool)
        runner = asyncio.ensure_future(bridge.run_threads(in_thread, [(bridge,)]))
        while not release.is_set():
            await asyncio.sleep(0.001)
        tasks[0].cancel()  # cancelled from the loop side
        assert await runner == ["cancelled"]
        before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        assert await bridge.run_threads(timeout_in_thread, [(bridge,)]) == ["timeout"]
        # ThreadBridge.call() cancels the abandoned coroutine on timeout.
        for _ in range(100):
            leftover = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} - before
            if not leftover:
                break
            await asyncio.sleep(0.01)
        return tasks[0].cancelled(), leftover

    victim_cancelled, leftover = _run(loop, main())
    assert victim_cancelled
    assert leftover == set()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("use_default_executor", [False, True], ids=["pool", "default"])
def test_run_in_executor_results_and_exceptions(loop, pool, use_default_executor) -> None:
    def blocking_ok(x: int) -> tuple[int, int]:
        time.sleep(0.1)
        return x + 1, threading.get_ident()

    def blocking_fail() -> None:
        raise OSError(5, "disk on fire")

    async def main():
        bridge = ThreadBridge(asyncio.get_running_loop(), None if use_default_executor else pool)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.ensure_future(ticker())
        value, ran_on = await bridge.run_blocking(blocking_ok, 41)
        tick_task.cancel()
        with pytest.raises(OSError) as info:
            await bridge.run_blocking(blocking_fail)
        return value, ran_on, threading.get_ident(), ticks, info.value

    value, ran_on, loop_ident, ticks, exc = _run(loop, main())
    assert value == 42
    assert ran_on != loop_ident
    assert ticks >= 3  # the loop kept running while the blocking call slept
    assert type(exc) is OSError and exc.errno == 5 and exc.strerror == "disk on fire"


@pytest.mark.timeout(10)
def test_round_trip_thread_loop_executor(loop, pool) -> None:
    """thread -> coroutine in loop -> blocking call in pool -> back to the thread."""

    async def main():
        bridge = ThreadBridge(asyncio.get_running_loop(), pool)

        def in_thread() -> tuple[float, type, str]:
            ok = bridge.call(tb.quote(bridge, "AB", 1), timeout=3)
            try:
                bridge.call(tb.quote(bridge, "AB", 13), timeout=3)
            except LookupError as exc:
                return ok, type(exc), str(exc)
            raise AssertionError("LookupError did not cross two thread boundaries")

        return await bridge.run_threads(in_thread, [()])

    [(ok, exc_type, msg)] = _run(loop, main())
    assert ok == (200 + 1) * 2
    assert exc_type is LookupError and msg == "no quote for AB#13"


@pytest.mark.timeout(15)
def test_many_threads_many_submissions(loop, pool) -> None:
    threads, per_thread = 16, 100

    async def work(t: int, i: int) -> tuple[int, int, int]:
        await asyncio.sleep(0)
        if i % 10 == 0:  # some hop to the pool and back
            i2 = await asyncio.get_running_loop().run_in_executor(pool, lambda: i * i)
        else:
            i2 = i * i
        return t, i, i2

    def in_thread(bridge, t: int) -> list[tuple[int, int, int]]:
        # Mix of blocking calls and batched submissions.
        out = [bridge.call(work(t, i), timeout=5) for i in range(per_thread // 2)]
        futs = [bridge.submit(work(t, i)) for i in range(per_thread // 2, per_thread)]
        out.extend(f.result(timeout=5) for f in futs)
        return out

    async def main():
        bridge = ThreadBridge(asyncio.get_running_loop(), pool)
        return await bridge.run_threads(in_thread, [(bridge, t) for t in range(threads)])

    results = _run(loop, main(), timeout=10)
    assert len(results) == threads
    for t, per in enumerate(results):
        assert per == [(t, i, i * i) for i in range(per_thread)]


@pytest.mark.timeout(20)
def test_demo_script(loop_kind: str) -> None:
    cmd = example_command("thread_bridge", loop_kind)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    expected_module = "ferroloop" if loop_kind == "ferroloop" else "asyncio"
    assert f"loop: {expected_module}" in out
    assert "threads: 8, requests: 400" in out
    assert "ok: 384, failed: 16, cancelled: 8, wrong results: 0" in out
