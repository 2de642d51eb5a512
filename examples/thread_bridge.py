"""Thread bridge: plain worker threads and an asyncio loop calling each other.

Two directions cross the thread boundary:

* thread -> loop: a worker thread hands a coroutine to the loop with
  ``asyncio.run_coroutine_threadsafe`` and blocks on the returned
  ``concurrent.futures.Future``.  The coroutine's result, its exception, or its
  cancellation come back through that future; cancelling the future from the
  thread cancels the task in the loop.
* loop -> thread: a coroutine pushes a blocking call to a thread pool with
  ``loop.run_in_executor`` and awaits it without blocking the loop; the call's
  result or exception comes back to the awaiting coroutine.

The worker threads are ordinary ``threading.Thread`` objects (not the blocking
executor's threads: a worker that waits for a coroutine which itself needs a
pool thread must never occupy that pool, or a full pool deadlocks).  The loop
learns that a worker finished through ``loop.call_soon_threadsafe``.

Demo: ``python examples/thread_bridge.py`` or, on ferroloop,
``python -m ferroloop examples/thread_bridge.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class ThreadBridge:
    """Connects one running loop with worker threads and a blocking-call pool."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        blocking_pool: concurrent.futures.Executor | None = None,
    ) -> None:
        self.loop = loop
        self.blocking_pool = blocking_pool  # None: the loop's default executor

    # -- thread -> loop -------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """From any thread other than the loop's: schedule ``coro`` on the loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """From a worker thread: run ``coro`` on the loop and block for its result.
        Its exception is re-raised here; on timeout the coroutine is cancelled."""
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    # -- loop -> thread -------------------------------------------------------

    async def run_blocking(self, func: Callable[..., T], *args: Any) -> T:
        """From a coroutine: run ``func(*args)`` in the pool, without blocking the loop."""
        return await self.loop.run_in_executor(self.blocking_pool, func, *args)

    async def run_threads(
        self, target: Callable[..., T], args_list: Sequence[tuple[Any, ...]]
    ) -> list[T]:
        """Run ``target(*args)`` in one new thread per ``args``; await all of them.

        Returns the results in order; if any thread raised, waits for all and
        re-raises the first exception (in ``args_list`` order)."""
        loop = self.loop
        futures: list[asyncio.Future[T]] = [loop.create_future() for _ in args_list]

        def settle(fut: asyncio.Future[T], result: Any, exc: BaseException | None) -> None:
            if fut.cancelled():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        def body(fut: asyncio.Future[T], args: tuple[Any, ...]) -> None:
            try:
                result = target(*args)
            except BaseException as exc:  # handed over to the loop
                loop.call_soon_threadsafe(settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(settle, fut, result, None)

        threads = [
            threading.Thread(target=body, args=(fut, args), name=f"worker-{i}", daemon=True)
            for i, (fut, args) in enumerate(zip(futures, args_list, strict=True))
        ]
        for t in threads:
            t.start()
        if futures:
            await asyncio.wait(futures)  # all of them, even if one failed early
        for t in threads:  # each has already handed over its result: join is immediate
            t.join()
        for fut in futures:
            exc = fut.exception()
            if exc is not None:
                raise exc
        return [fut.result() for fut in futures]


# -- demo ---------------------------------------------------------------------


def slow_price(symbol: str, n: int) -> float:
    """A blocking 'legacy client' call."""
    time.sleep(0.001)
    if n % 25 == 13:
        raise LookupError(f"no quote for {symbol}#{n}")
    return len(symbol) * 100 + n


async def quote(bridge: ThreadBridge, symbol: str, n: int) -> float:
    """Runs in the loop; the blocking part goes to the pool."""
    await asyncio.sleep(0)
    price = await bridge.run_blocking(slow_price, symbol, n)
    return price * 2


def worker(bridge: ThreadBridge, symbol: str, count: int) -> dict[str, int]:
    """Runs in a worker thread; every request is a coroutine run on the loop."""
    stats = {"ok": 0, "failed": 0, "cancelled": 0, "wrong": 0}
    for n in range(count):
        try:
            price = bridge.call(quote(bridge, symbol, n), timeout=10)
        except LookupError:
            stats["failed"] += 1
        else:
            stats["ok"] += 1
            stats["wrong"] += price != (len(symbol) * 100 + n) * 2
    # One request that is abandoned: cancelling the future cancels the coroutine.
    fut = bridge.submit(asyncio.sleep(60))
    fut.cancel()
    try:
        fut.result(timeout=10)
    except concurrent.futures.CancelledError:
        stats["cancelled"] += 1
    return stats


async def demo(threads: int = 8, per_thread: int = 50) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    symbols = [f"SYM{i}" for i in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        bridge = ThreadBridge(loop, pool)
        t0 = time.perf_counter()
        per_worker = await bridge.run_threads(worker, [(bridge, s, per_thread) for s in symbols])
        elapsed = time.perf_counter() - t0
    total = {k: sum(s[k] for s in per_worker) for k in per_worker[0]}
    print(f"loop: {type(loop).__module__}")
    print(f"threads: {threads}, requests: {threads * per_thread}")
    print(
        f"ok: {total['ok']}, failed: {total['failed']}, cancelled: {total['cancelled']}, "
        f"wrong results: {total['wrong']}"
    )
    print(f"elapsed: {elapsed:.2f}s")
    return total


if __name__ == "__main__":
    asyncio.run(demo())
