"""What a ferroloop loop measures about itself: `loop.metrics()` and its types.

A snapshot is cheap to take (a few microseconds plus one pass over asyncio's task registry)
and immutable. Every counter is monotonic from the loop's creation, so a rate is the
difference of two snapshots divided by the difference of their `time`.

How much the loop measures is its *metrics level* (`loop.set_metrics_level()`, or the
``FERROLOOP_METRICS`` environment variable for every new loop):

- ``"off"``: nothing is counted.
- ``"loop"`` (the default): iterations, callbacks run, time blocked in the poller against
  time spent working (so utilisation), the longest iteration, open transports and their
  bytes. The clock is read around polls only, never per callback.
- ``"callbacks"``: also one clock read per callback and per ``call_soon``: the
  scheduling-lag histogram, and slow callbacks counted, logged and recorded (with the line
  they were blocked at) in production, without debug mode.

In debug mode (``loop.set_debug(True)``) callbacks are timed at every level, as asyncio does,
and slow ones are logged with the line they were blocked at.

Times are seconds on the loop's clock (``time.monotonic()``). docs/metrics.md describes each
field and what each level costs, measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import sysconfig
import threading
import time
import traceback
import types
import weakref
from collections.abc import Mapping
from typing import Any

__all__ = [
    "LEVELS",
    "Histogram",
    "LoopMetrics",
    "SlowCallback",
    "default_level",
    "loops",
    "set_default_level",
]

logger = logging.getLogger("asyncio")

#: The metrics levels, from the cheapest.
LEVELS = ("off", "loop", "callbacks")

#: How many slow callbacks a loop remembers (`LoopMetrics.recent_slow_callbacks`).
RECENT_SLOW_CALLBACKS = 16

#: Innermost frames kept from the stack of a blocked callback.
STACK_LIMIT = 12


_default_level: str | None = None


def default_level() -> str:
    """The level new loops start at: ``FERROLOOP_METRICS`` if set (``off``, ``loop`` or
    ``callbacks``), else the one `set_default_level` gave, else ``"loop"``. An unknown value
    raises ValueError when a loop is made."""
    env = os.environ.get("FERROLOOP_METRICS", "").strip().lower()
    return env or _default_level or "loop"


def set_default_level(level: str | None) -> None:
    """The level of loops created from now on in this process, unless ``FERROLOOP_METRICS``
    says otherwise (None: back to ``"loop"``). ``python -m ferroloop --metrics-port`` sets
    ``"callbacks"``. Raises ValueError for an unknown level."""
    global _default_level
    if level is not None and level not in LEVELS:
        raise ValueError(f"metrics level must be 'off', 'loop' or 'callbacks', not {level!r}")
    _default_level = level


# The loops of this process, in creation order (weakly held: a loop leaves when collected).
_loops: weakref.WeakKeyDictionary[Any, None] = weakref.WeakKeyDictionary()
_loops_lock = threading.Lock()


def register(loop: Any) -> None:
    """Called by every ferroloop loop when it is made."""
    with _loops_lock:
        _loops[loop] = None


def loops() -> list[Any]:
    """The open ferroloop loops of this process, oldest first (any thread). The exporters
    (`ferroloop.prometheus`, `ferroloop.opentelemetry`) export these by default."""
    with _loops_lock:
        found = list(_loops)
    return [loop for loop in found if not loop.is_closed()]


@dataclasses.dataclass(frozen=True)
class Histogram:
    """A histogram of seconds with fixed buckets.

    `bounds` are the buckets' upper bounds (inclusive, seconds, increasing); `counts` has one
    more entry than `bounds`: `counts[i]` is how many observations fell in bucket i (not
    cumulative), the last one those above every bound. `count` and `sum` (seconds) are over
    all observations."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound, observations <= bound), ...]`` ending with ``(inf, count)``, as
        Prometheus and OpenTelemetry want them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclasses.dataclass(frozen=True)
class SlowCallback:
    """One callback that ran longer than `loop.slow_callback_duration`.

    - `handle`: the handle as asyncio's slow-callback warning shows it (a task step shows the
      task).
    - `task_name`, `coroutine`: the task's name and its coroutine's qualified name when the
      callback was a step of a task, else None.
    - `location`: ``"file:line in function"`` of the code the loop was blocked in, from a
      sample of the loop thread's stack taken while the callback still ran (the innermost
      frame outside the standard library and installed packages, else the innermost one);
      when no sample was taken (the callback held the GIL throughout), where the task's
      coroutine was suspended after the step, or None.
    - `stack`: the sampled frames, innermost last (empty without a sample).
    - `seconds`: how long it ran; `at`: when it ended (loop clock)."""

    handle: str
    task_name: str | None
    coroutine: str | None
    location: str | None
    stack: tuple[str, ...]
    seconds: float
    at: float


@dataclasses.dataclass(frozen=True)
class LoopMetrics:
    """A snapshot of a loop's metrics (see the module documentation for levels).

    Counters (monotonic since `created`):
    - `iterations`: loop iterations; `callbacks`: callbacks run (handles whose callback ran).
    - `busy_seconds`: time running and not blocked in the poller; `poll_seconds`: time
      blocked waiting for I/O or a timer. Both only while the loop runs.
    - `lag`: how long ready callbacks waited between becoming ready (scheduled with
      `call_soon`, timer due, fd reported ready) and starting to run (level "callbacks").
    - `slow_callbacks`, `slow_callback_seconds`: callbacks that ran at least
      `loop.slow_callback_duration`, and their total time (level "callbacks" or debug mode).
    - `bytes_received`, `bytes_sent`, `reads`, `writes`: through the native transports
      (read calls that returned data or EOF; write calls that sent at least one byte).
    - `transports_opened`: native transports made, by kind.
    Gauges (now):
    - `longest_iteration_seconds`: the longest stretch between two polls (one iteration, or
      several with callbacks always ready and no fd watched).
    - `current_callback_seconds`: how long the callback running now has run, 0.0 when none
      runs or callbacks are not timed (level "callbacks" or debug mode): a loop stuck in a
      callback shows here while it is stuck.
    - `ready`: callbacks in the ready queue; `timers`: timers scheduled and not cancelled;
      `timers_cancelled`: cancelled timers not yet dropped; `fds`: fds registered with the
      poller; `transports`: open native transports by kind (``tcp``, ``unix``, ``pipe``,
      ``udp``, ``unix_datagram``; an SSL connection counts as its TCP transport);
      `tasks`: tasks not done (``asyncio.all_tasks(loop)``), -1 if they could not be read.
    - `recent_slow_callbacks`: the last `RECENT_SLOW_CALLBACKS` slow callbacks, oldest first.
    `time` is when the snapshot was taken, `created` when the loop was made (loop clock)."""

    time: float
    created: float
    level: str
    running: bool
    iterations: int
    callbacks: int
    busy_seconds: float
    poll_seconds: float
    longest_iteration_seconds: float
    current_callback_seconds: float
    lag: Histogram
    slow_callbacks: int
    slow_callback_seconds: float
    recent_slow_callbacks: tuple[SlowCallback, ...]
    ready: int
    timers: int
    timers_cancelled: int
    fds: int
    transports: Mapping[str, int]
    transports_opened: Mapping[str, int]
    bytes_received: int
    bytes_sent: int
    reads: int
    writes: int
    tasks: int

    @property
    def utilization(self) -> float:
        """Share of the running time spent working (0.0-1.0) since the loop was made."""
        total = self.busy_seconds + self.poll_seconds
        return self.busy_seconds / total if total > 0 else 0.0

    def utilization_since(self, earlier: LoopMetrics) -> float:
        """Share of the running time spent working between `earlier` and this snapshot."""
        busy = self.busy_seconds - earlier.busy_seconds
        total = busy + self.poll_seconds - earlier.poll_seconds
        return busy / total if total > 0 else 0.0


def snapshot(loop: Any, recent: tuple[SlowCallback, ...]) -> LoopMetrics:
    """Builds a `LoopMetrics` from the loop's native counters. Any thread."""
    raw = loop._metrics_native()
    ready, timers, cancelled, fds = _loop_state(loop)
    kinds = raw["transport_kinds"]
    counts = tuple(raw["lag_counts"])
    return LoopMetrics(
        time=raw["time"],
        created=raw["created"],
        level=raw["level"],
        running=loop.is_running(),
        iterations=raw["iterations"],
        callbacks=raw["callbacks"],
        busy_seconds=raw["busy_seconds"],
        poll_seconds=raw["poll_seconds"],
        longest_iteration_seconds=raw["longest_iteration_seconds"],
        current_callback_seconds=_running_for(raw["time"], raw["callback_started"]),
        lag=Histogram(tuple(raw["lag_bounds"]), counts, sum(counts), raw["lag_sum"]),
        slow_callbacks=raw["slow_callbacks"],
        slow_callback_seconds=raw["slow_callback_seconds"],
        recent_slow_callbacks=recent,
        ready=ready,
        timers=max(timers - cancelled, 0),
        timers_cancelled=cancelled,
        fds=fds,
        transports=types.MappingProxyType(dict(zip(kinds, raw["transports_open"], strict=True))),
        transports_opened=types.MappingProxyType(
            dict(zip(kinds, raw["transports_opened"], strict=True))
        ),
        bytes_received=raw["bytes_received"],
        bytes_sent=raw["bytes_sent"],
        reads=raw["reads"],
        writes=raw["writes"],
        tasks=_task_count(loop),
    )


def _running_for(now: float, started: float) -> float:
    return max(now - started, 0.0) if started > 0 else 0.0


def _loop_state(loop: Any) -> tuple[int, int, int, int]:
    """The loop's queue, timer and fd counts. From another thread the loop may be in the
    middle of changing them (its state is then borrowed): retry, then report -1."""
    for _ in range(100):
        try:
            return loop._metrics_state()  # type: ignore[no-any-return]
        except RuntimeError:
            continue
    return (-1, -1, -1, -1)


def _task_count(loop: Any) -> int:
    try:
        return len(asyncio.all_tasks(loop))
    except RuntimeError:  # the registry changed size while read from another thread
        return -1


# --------------------------------------------------------------- slow callbacks


def _library_paths() -> tuple[str, ...]:
    """Where code that is not the user's lives: the standard library, installed packages,
    and ferroloop itself (also when run from a source checkout)."""
    paths = sysconfig.get_paths()
    found = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    found.add(os.path.dirname(os.path.abspath(__file__)))
    return tuple(sorted(os.path.join(p, "") for p in found))


_LIBRARY_PATHS = _library_paths()


def _frame_text(frame: traceback.FrameSummary) -> str:
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _is_user_code(filename: str) -> bool:
    """Not the standard library (frozen modules included), an installed package or
    ferroloop; code compiled from a string (``<string>``, ``<stdin>``) is the user's."""
    return not filename.startswith(_LIBRARY_PATHS) and not filename.startswith("<frozen")


def _innermost_user_frame(frames: list[traceback.FrameSummary]) -> str | None:
    """The innermost frame (`frames` run outermost first) of user code (outside the
    standard library, installed packages and ferroloop), else the innermost frame."""
    for frame in reversed(frames):
        if _is_user_code(frame.filename):
            return _frame_text(frame)
    return _frame_text(frames[-1]) if frames else None


def _suspended_at(task: asyncio.Task[Any]) -> str | None:
    """Where a task's coroutine chain is suspended now: its innermost frame of user code,
    else its innermost frame."""
    coro: Any = task.get_coro()
    frames = []
    while coro is not None:
        f = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if f is None:
            break
        code = f.f_code
        frames.append(traceback.FrameSummary(code.co_filename, f.f_lineno, code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return _innermost_user_frame(frames)


def _task_of(handle: Any) -> asyncio.Task[Any] | None:
    owner = getattr(handle._callback, "__self__", None)
    return owner if isinstance(owner, asyncio.Task) else None


def describe_slow_callback(
    handle: Any, handle_text: str, seconds: float, at: float, stack: traceback.StackSummary | None
) -> SlowCallback:
    """The record of a slow callback (`stack`: the loop thread's sampled stack, or None)."""
    task = _task_of(handle)
    coro = task.get_coro() if task is not None else None
    if stack:
        location = _innermost_user_frame(list(stack))
    else:
        location = _suspended_at(task) if task is not None else None
    return SlowCallback(
        handle=handle_text,
        task_name=task.get_name() if task is not None else None,
        coroutine=getattr(coro, "__qualname__", None) if coro is not None else None,
        location=location,
        stack=tuple(_frame_text(f) for f in stack or ()),
        seconds=seconds,
        at=at,
    )


class SlowCallbackWatchdog:
    """A thread that samples the loop thread's stack while a callback has run longer than
    `loop.slow_callback_duration`, so that a slow callback can be reported with the line it
    was blocked at (which is gone once it returns).

    It wakes every quarter of the threshold (5 ms to 1 s), reads two atomics of the loop
    and, only when a callback is over the threshold, takes the GIL to read the stack. Runs
    while the loop runs with callbacks timed: started before the loop counts as running,
    stopped (`stop()`, then `join()`) after it no longer does. It holds the loop weakly."""

    def __init__(self, loop: Any, loop_thread: int) -> None:
        self._loop = weakref.ref(loop)
        self._loop_thread = loop_thread
        self._stop = threading.Event()
        # (callback number, its stack): the latest sample. Replaced as a whole, so the loop
        # thread reads it without a lock (which it could have to wait for).
        self._sample: tuple[int, traceback.StackSummary] | None = None
        self._thread = threading.Thread(
            target=self._run, name="ferroloop-slow-callback-watchdog", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Waits for the thread to end (it does at once after `stop()`)."""
        self._thread.join(timeout)

    def take_sample(self, seq: int) -> traceback.StackSummary | None:
        """The stack sampled during callback number `seq`, if any."""
        sample = self._sample
        return sample[1] if sample is not None and sample[0] == seq else None

    def _run(self) -> None:
        sampled = -1
        while True:
            loop = self._loop()
            if loop is None:
                return
            threshold = loop.slow_callback_duration
            del loop
            if self._stop.wait(min(max(threshold / 4, 0.005), 1.0)):
                return
            loop = self._loop()
            if loop is None:
                return
            seq, started = loop._current_callback()
            if started <= 0 or seq == sampled or time.monotonic() - started < threshold:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame, limit=STACK_LIMIT)
            del frame
            if loop._current_callback()[0] != seq:
                continue  # it ended while we sampled: the stack may be the next one's
            del loop
            sampled = seq
            self._sample = (seq, stack)
