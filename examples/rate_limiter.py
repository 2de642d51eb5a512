"""Sliding-window rate limiter.

``async with RateLimiter(rate, period):`` admits at most ``rate`` entries in any
window of ``period`` seconds (a half-open interval ``[t, t + period)`` of the
loop's clock).  It keeps a log of the admission times still inside the window;
a caller that finds the window full sleeps until the oldest admission leaves it.

Waiting callers are admitted strictly in the order they arrived: the admission
check runs under an ``asyncio.Lock``, whose waiters are woken first-in first-out,
and a newcomer never overtakes a queued caller.  A caller cancelled while waiting
gives up its place without consuming a slot.

Run it on stock asyncio or on ferroloop::

    python examples/rate_limiter.py
    python -m ferroloop examples/rate_limiter.py
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class RateLimiter:
    """At most ``rate`` admissions in any ``period`` seconds, FIFO among waiters."""

    def __init__(self, rate: int, period: float) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1")
        if period <= 0:
            raise ValueError("period must be positive")
        self.rate = rate
        self.period = period
        self._admitted: deque[float] = deque()  # admission times, oldest first
        self._lock = asyncio.Lock()

    def _expire(self, now: float) -> None:
        # An admission at t stops counting at t + period.
        while self._admitted and self._admitted[0] + self.period <= now:
            self._admitted.popleft()

    async def acquire(self) -> float:
        """Wait for a slot; return the admission time (``loop.time()``)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                now = loop.time()
                self._expire(now)
                if len(self._admitted) < self.rate:
                    self._admitted.append(now)
                    return now
                # Full: sleep until the oldest admission leaves the window.  The
                # loop re-checks, so waking a little early is harmless.
                await asyncio.sleep(self._admitted[0] + self.period - now)

    async def __aenter__(self) -> float:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A sliding window counts admissions: leaving does not free a slot early.
        return None


def max_in_window(times: list[float], period: float) -> int:
    """The largest number of ``times`` inside any window ``[t, t + period)``.

    Only windows starting at one of the times need checking: any other window
    can slide right to its first entry without losing one.
    """
    ordered = sorted(times)
    best = 0
    end = 0
    for start, t in enumerate(ordered):
        while end < len(ordered) and ordered[end] < t + period:
            end += 1
        best = max(best, end - start)
    return best


async def main(calls: int = 30, rate: int = 10, period: float = 0.25) -> None:
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate, period)
    arrivals: list[int] = []
    entries: list[tuple[int, float]] = []

    async def call(i: int) -> None:
        arrivals.append(i)
        async with limiter as admitted_at:
            entries.append((i, admitted_at))
            await asyncio.sleep(0.001)  # the rate-limited work

    start = loop.time()
    await asyncio.gather(*(call(i) for i in range(calls)))
    elapsed = loop.time() - start

    busiest = max_in_window([t for _, t in entries], period)
    in_order = [i for i, _ in entries] == arrivals
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")
    print(f"limit: {rate} per {period} s")
    print(f"admitted {len(entries)} calls in {elapsed:.2f} s")
    print(f"busiest {period} s window: {busiest} calls")
    print(f"FIFO order: {'yes' if in_order else 'NO'}")
    ok = len(entries) == calls and busiest <= rate and in_order
    print(f"result: {'OK' if ok else 'VIOLATION'}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
