"""Cron-like scheduler: one-shot and periodic jobs on a heap, driven by one task.

Jobs are plain callables or coroutine functions.  Sync jobs run inline in the
driver task; async jobs are started as tasks (so a slow async job never delays
the others; runs of the same periodic async job may therefore overlap).

Design:

* Every pending job sits on a heap ordered by ``(next_run, seq)``; ``next_run``
  is in ``loop.time()`` units.
* A single driver task sleeps until the earliest ``next_run`` (one
  ``loop.call_at`` timer that sets an ``asyncio.Event``; adding an earlier job
  or calling ``stop()`` wakes it early), pops every due job and runs it.
* Periodic jobs are rescheduled on a fixed grid, ``anchor + k * interval``,
  never ``now + interval``, so lateness does not accumulate into drift.  If the
  loop was blocked for longer than a whole period, the missed slots are skipped
  (and logged) instead of being fired in a burst.
* A job that raises is logged with its traceback, counted in ``job.failures``
  and, if periodic, rescheduled like any other run.

Usage::

    sched = Scheduler()

    @sched.every(0.5)
    async def poll():
        ...

    sched.call_later(2.0, print, "once")
    async with sched:           # start(); on exit: stop() and wait
        await asyncio.sleep(10)

Run the demo with ``python examples/scheduler.py`` or on ferroloop with
``python -m ferroloop examples/scheduler.py``.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("scheduler")


class Job:
    """A scheduled callable.  ``interval`` is ``None`` for a one-shot job."""

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        delay: float,
        interval: float | None,
        name: str | None,
    ) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("interval must be > 0")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.func = func
        self.args = args
        self.delay = delay
        self.interval = interval
        self.name = name or getattr(func, "__qualname__", repr(func))
        self.runs = 0  # times started
        self.failures = 0  # times it raised
        self.skipped = 0  # periodic slots skipped because the loop was late
        self.cancelled = False
        self.anchor: float | None = None  # loop time of the first run
        self.next_run: float | None = None

    @property
    def periodic(self) -> bool:
        return self.interval is not None

    def __repr__(self) -> str:
        kind = f"every {self.interval}s" if self.periodic else "once"
        return f"<Job {self.name} {kind} runs={self.runs} failures={self.failures}>"


class Scheduler:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running_jobs: set[asyncio.Task[Any]] = set()
        self._stopped = False
        self.jobs: list[Job] = []

    # -- adding jobs ---------------------------------------------------------

    def call_later(
        self, delay: float, func: Callable[..., Any], *args: Any, name: str | None = None
    ) -> Job:
        """Run ``func(*args)`` once, ``delay`` seconds after start (or now, if running)."""
        return self._add(Job(func, args, delay=delay, interval=None, name=name))

    def call_every(
        self,
        interval: float,
        func: Callable[..., Any],
        *args: Any,
        first_delay: float | None = None,
        name: str | None = None,
    ) -> Job:
        """Run ``func(*args)`` every ``interval`` seconds; the first run after
        ``first_delay`` (default: one interval)."""
        delay = interval if first_delay is None else first_delay
        return self._add(Job(func, args, delay=delay, interval=interval, name=name))

    def every(
        self, seconds: float, *, first_delay: float | None = None, name: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`call_every`; returns the function unchanged
        (the job is available as ``func.job``)."""

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            func.job = self.call_every(seconds, func, first_delay=first_delay, name=name)
            return func

        return decorator

    def cancel(self, job: Job) -> None:
        """Stop future runs of ``job`` (a run already in progress is not interrupted)."""
        job.cancelled = True  # lazily dropped when it reaches the top of the heap

    def _add(self, job: Job) -> Job:
        if self._stopped:
            raise RuntimeError("scheduler is stopped")
        self.jobs.append(job)
        if self._loop is not None:
            self._arm(job, self._loop.time())
        return job

    def _arm(self, job: Job, now: float) -> None:
        job.anchor = job.next_run = now + job.delay
        self._push(job)

    def _push(self, job: Job) -> None:
        assert job.next_run is not None
        heapq.heappush(self._heap, (job.next_run, next(self._seq), job))
        # An earlier deadline than the one the driver sleeps on: wake it up.
        if self._wakeup is not None and self._heap[0][2] is job:
            self._wakeup.set()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the driver task on the running loop; jobs added before are anchored now."""
        if self._driver is not None:
            raise RuntimeError("scheduler already started")
        if self._stopped:
            raise RuntimeError("scheduler is stopped")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        now = self._loop.time()
        for job in self.jobs:
            self._arm(job, now)
        self._driver = self._loop.create_task(self._run(), name="scheduler-driver")

    def stop(self) -> None:
        """No job starts after this call.  Async runs already started keep going;
        ``await wait_closed()`` waits for them."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def wait_closed(self) -> None:
        """Wait for the driver to exit (after ``stop()``) and in-flight async runs to end."""
        if self._driver is not None:
            await self._driver
        while self._running_jobs:
            await asyncio.gather(*self._running_jobs, return_exceptions=True)

    async def __aenter__(self) -> Scheduler:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        await self.wait_closed()

    # -- the driver ----------------------------------------------------------

    async def _run(self) -> None:
        assert self._loop is not None and self._wakeup is not None
        loop, wakeup = self._loop, self._wakeup
        while not self._stopped:
            # Drop cancelled jobs lazily.
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            now = loop.time()
            if self._heap and self._heap[0][0] <= now:
                _, _, job = heapq.heappop(self._heap)
                self._fire(job)
                if job.periodic and not job.cancelled:
                    self._reschedule(job, loop.time())
                continue
            wakeup.clear()
            if self._heap:
                self._timer = loop.call_at(self._heap[0][0], wakeup.set)
            try:
                await wakeup.wait()
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

    def _fire(self, job: Job) -> None:
        job.runs += 1
        try:
            result = job.func(*job.args)
        except Exception:
            job.failures += 1
            logger.exception("job %s failed (run %d)", job.name, job.runs)
            return
        if inspect.isawaitable(result):
            assert self._loop is not None
            task = self._loop.create_task(_as_coroutine(result), name=f"job:{job.name}")
            self._running_jobs.add(task)
            task.add_done_callback(lambda t, job=job: self._job_done(job, t))

    def _job_done(self, job: Job, task: asyncio.Task[Any]) -> None:
        self._running_jobs.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            job.failures += 1
            logger.error(
                "job %s failed (run %d)",
                job.name,
                job.runs,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _reschedule(self, job: Job, now: float) -> None:
        assert job.interval is not None and job.next_run is not None
        nxt = job.next_run + job.interval  # fixed grid: no drift
        if nxt <= now:
            missed = int((now - nxt) // job.interval) + 1
            job.skipped += missed
            nxt += missed * job.interval
            logger.warning("job %s: loop late, skipped %d run(s)", job.name, missed)
        job.next_run = nxt
        self._push(job)


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


# -- demo ---------------------------------------------------------------------


async def demo() -> dict[str, int]:
    sched = Scheduler()
    counts = {"tick": 0, "poll": 0, "flaky": 0, "once": 0}

    @sched.every(0.1, name="tick")
    def tick() -> None:
        counts["tick"] += 1

    @sched.every(0.25, name="poll")
    async def poll() -> None:
        await asyncio.sleep(0.01)  # pretend to talk to something
        counts["poll"] += 1

    @sched.every(0.2, name="flaky")
    def flaky() -> None:
        counts["flaky"] += 1
        raise RuntimeError("flaky job always fails")

    def once(label: str) -> None:
        counts["once"] += 1
        print(f"one-shot job ran: {label}")

    sched.call_later(0.5, once, "halfway")
    done = asyncio.get_running_loop().create_future()
    sched.call_later(1.05, lambda: done.set_result(None), name="finish")

    async with sched:
        await done
    print(f"loop: {type(asyncio.get_running_loop()).__module__}")
    print(f"tick runs: {counts['tick']} (expected ~10)")
    print(f"poll runs: {counts['poll']} (expected ~4)")
    print(f"flaky runs: {counts['flaky']}, failures logged: {flaky.job.failures}")
    print(f"one-shot runs: {counts['once']}")
    print("scheduler stopped cleanly")
    return counts


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("scheduler").setLevel(logging.CRITICAL)  # keep demo output short
    asyncio.run(demo())
