"""`loop.metrics()`: every figure checked against work the test did (ferroloop only)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ferroloop
import pytest
from blockbuster import blockbuster_ctx
from ferroloop.metrics import LoopMetrics

pytestmark = pytest.mark.timeout(30)


def run(main: Callable[[ferroloop.Loop], Awaitable[Any]], level: str = "loop") -> Any:
    loop = ferroloop.new_event_loop()
    loop.set_metrics_level(level)
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


def spin(seconds: float) -> None:
    """Keeps the CPU busy (a callback that blocks the loop)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ------------------------------------------------------------------ levels


def test_default_level_and_environment() -> None:
    loop = ferroloop.new_event_loop()
    assert loop.get_metrics_level() == "loop"
    loop.close()
    code = "import ferroloop; print(ferroloop.new_event_loop().get_metrics_level())"
    env = dict(os.environ, FERROLOOP_METRICS="callbacks")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "callbacks", out.stderr
    env["FERROLOOP_METRICS"] = "everything"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "ValueError" in out.stderr


def test_bad_level_raises() -> None:
    loop = ferroloop.new_event_loop()
    try:
        with pytest.raises(ValueError, match="'off', 'loop' or 'callbacks'"):
            loop.set_metrics_level("all")
        with pytest.raises(TypeError):
            loop.set_metrics_level(2)  # type: ignore[arg-type]
        assert loop.get_metrics_level() == "loop"
    finally:
        loop.close()


def test_level_off_counts_nothing() -> None:
    async def main(loop: ferroloop.Loop) -> tuple[LoopMetrics, LoopMetrics]:
        before = loop.metrics()
        for _ in range(100):
            loop.call_soon(lambda: None)
        await asyncio.sleep(0.01)
        return before, loop.metrics()

    before, after = run(main, "off")
    assert after.level == "off"
    assert (after.iterations, after.callbacks) == (before.iterations, before.callbacks) == (0, 0)
    assert after.busy_seconds == after.poll_seconds == 0.0


# ------------------------------------------------------------ loop level


def test_callbacks_and_iterations_are_counted() -> None:
    ran = []

    async def main(loop: ferroloop.Loop) -> tuple[LoopMetrics, LoopMetrics]:
        before = loop.metrics()
        for i in range(500):
            loop.call_soon(ran.append, i)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return before, loop.metrics()

    before, after = run(main)
    assert len(ran) == 500
    # 500 callbacks plus the task's own steps.
    assert 500 <= after.callbacks - before.callbacks <= 510
    assert after.iterations - before.iterations >= 2
    assert after.time > before.time >= after.created


def test_busy_poll_and_longest_iteration() -> None:
    async def main(loop: ferroloop.Loop) -> tuple[LoopMetrics, LoopMetrics]:
        before = loop.metrics()
        await asyncio.sleep(0.2)  # blocked in the poller
        loop.call_soon(spin, 0.1)  # working
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return before, loop.metrics()

    before, after = run(main)
    assert after.poll_seconds - before.poll_seconds >= 0.15
    assert after.busy_seconds - before.busy_seconds >= 0.09
    assert 0.09 <= after.longest_iteration_seconds < 1.0
    share = after.utilization_since(before)
    assert 0.2 < share < 0.6, share
    assert 0.0 < after.utilization < 1.0


def test_metrics_from_another_thread_while_the_loop_is_blocked() -> None:
    seen: list[LoopMetrics] = []

    async def main(loop: ferroloop.Loop) -> None:
        def scrape() -> None:
            time.sleep(0.1)
            seen.append(loop.metrics())

        thread = threading.Thread(target=scrape)
        thread.start()
        spin(0.3)  # the loop is stuck in this step while the thread reads
        thread.join()

    run(main, "callbacks")
    assert seen and seen[0].running
    # The stretch in progress counts as busy, and shows as the callback running now.
    assert seen[0].busy_seconds >= 0.08
    assert 0.08 <= seen[0].current_callback_seconds < 1.0
    assert seen[0].longest_iteration_seconds >= 0.08


def test_timers_fds_and_tasks_gauges() -> None:
    async def main(loop: ferroloop.Loop) -> LoopMetrics:
        timers = [loop.call_later(10, print) for _ in range(5)]
        timers[0].cancel()
        timers[1].cancel()
        a, b = socket.socketpair()
        loop.add_reader(a, print)
        pending = [asyncio.ensure_future(asyncio.sleep(10)) for _ in range(3)]
        snap = loop.metrics()
        loop.remove_reader(a)
        a.close()
        b.close()
        for t in timers:
            t.cancel()
        for p in pending:
            p.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return snap

    snap = run(main)
    # The sleeping tasks have not run their first step yet: no timer of theirs.
    assert (snap.timers, snap.timers_cancelled) == (3, 2)
    assert snap.fds == 1
    assert snap.tasks == 4  # the three sleepers and main
    assert snap.ready >= 0


# ---------------------------------------------------------------- transports


async def _echo_round(loop: ferroloop.Loop, payload: bytes) -> tuple[LoopMetrics, LoopMetrics]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.readexactly(len(payload)))
        await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    before = loop.metrics()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(payload)
    assert await r.readexactly(len(payload)) == payload
    during = loop.metrics()
    w.close()
    await w.wait_closed()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.01)
    after = loop.metrics()
    assert during.transports["tcp"] - before.transports["tcp"] >= 1
    assert after.transports["tcp"] == before.transports["tcp"]
    assert after.transports_opened["tcp"] - before.transports_opened["tcp"] == 2
    return before, after


def test_tcp_bytes_and_transports_are_counted() -> None:
    payload = os.urandom(100_000)
    before, after = run(lambda loop: _echo_round(loop, payload))
    # Each side sent the payload once and received it once.
    assert after.bytes_sent - before.bytes_sent == 2 * len(payload)
    assert after.bytes_received - before.bytes_received == 2 * len(payload)
    assert after.reads - before.reads >= 2
    assert after.writes - before.writes >= 2


def test_udp_unix_and_pipe_transports_by_kind() -> None:
    async def main(loop: ferroloop.Loop) -> dict[str, int]:
        udp, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        a, b = socket.socketpair()
        unix, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "pass", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        open_now = dict(loop.metrics().transports)
        udp.close()
        unix.close()
        b.close()
        await proc.communicate()
        await asyncio.sleep(0.01)
        assert all(n == 0 for n in loop.metrics().transports.values())
        return open_now

    open_now = run(main)
    assert open_now == {"tcp": 0, "unix": 1, "pipe": 2, "udp": 1, "unix_datagram": 0}


# ----------------------------------------------------------- callbacks level


def test_lag_histogram_rises_behind_a_cpu_bound_callback() -> None:
    async def main(loop: ferroloop.Loop) -> tuple[LoopMetrics, LoopMetrics]:
        await asyncio.sleep(0)
        before = loop.metrics()
        loop.call_soon(spin, 0.05)
        done = loop.create_future()
        loop.call_soon(done.set_result, None)  # waits behind the spin
        await done
        return before, loop.metrics()

    before, after = run(main, "callbacks")
    new = [a - b for a, b in zip(after.lag.counts, before.lag.counts, strict=True)]
    assert after.lag.count - before.lag.count >= 2
    assert after.lag.sum - before.lag.sum >= 0.045
    slow_buckets = [n for bound, n in zip(after.lag.bounds, new, strict=False) if bound >= 0.05]
    assert sum(slow_buckets) >= 1, new
    assert after.lag.cumulative()[-1] == (float("inf"), after.lag.count)


def test_lag_is_not_measured_at_level_loop() -> None:
    async def main(loop: ferroloop.Loop) -> LoopMetrics:
        loop.call_soon(spin, 0.01)
        await asyncio.sleep(0)
        return loop.metrics()

    assert run(main).lag.count == 0


def _blocking_step() -> None:
    time.sleep(0.06)  # the line a slow callback is blocked at


async def _slow_task() -> None:
    await asyncio.sleep(0)
    _blocking_step()
    await asyncio.sleep(0)


def _blocking_line() -> int:
    return _blocking_step.__code__.co_firstlineno + 1


def test_slow_callback_is_recorded_with_the_line_it_blocked_at(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main(loop: ferroloop.Loop) -> LoopMetrics:
        loop.slow_callback_duration = 0.02
        await asyncio.create_task(_slow_task(), name="slowpoke")
        return loop.metrics()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        snap = run(main, "callbacks")
    assert snap.slow_callbacks == 1
    assert snap.slow_callback_seconds >= 0.05
    (slow,) = snap.recent_slow_callbacks
    assert slow.task_name == "slowpoke"
    assert slow.coroutine == "_slow_task"
    assert slow.location == f"{__file__}:{_blocking_line()} in _blocking_step"
    assert slow.stack and slow.stack[-1] == slow.location
    assert slow.seconds >= 0.05
    assert "slowpoke" in slow.handle
    (record,) = [r for r in caplog.records if "took" in r.getMessage()]
    assert f"blocked at {slow.location}" in record.getMessage()
    assert record.getMessage().startswith("Executing <Task")


def test_debug_mode_names_the_line_at_every_level(caplog: pytest.LogCaptureFixture) -> None:
    async def main(loop: ferroloop.Loop) -> LoopMetrics:
        loop.slow_callback_duration = 0.02
        await asyncio.create_task(_slow_task(), name="slowpoke")
        return loop.metrics()

    loop = ferroloop.new_event_loop()
    loop.set_debug(True)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        try:
            snap = loop.run_until_complete(main(loop))
        finally:
            loop.close()
    assert snap.slow_callbacks == 1  # debug mode times callbacks, level "loop" counts them
    messages = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert any(f":{_blocking_line()} in _blocking_step" in m for m in messages), messages


def test_slow_callbacks_are_not_timed_at_level_loop(caplog: pytest.LogCaptureFixture) -> None:
    async def main(loop: ferroloop.Loop) -> LoopMetrics:
        loop.slow_callback_duration = 0.02
        await asyncio.create_task(_slow_task())
        return loop.metrics()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        snap = run(main)
    assert snap.slow_callbacks == 0 and not snap.recent_slow_callbacks
    assert not [r for r in caplog.records if "took" in r.getMessage()]


def test_slow_callback_without_a_sample_reports_where_the_task_went() -> None:
    """A plain callback (not a task step) that holds the GIL: no task, maybe no sample."""

    async def main(loop: ferroloop.Loop) -> LoopMetrics:
        loop.slow_callback_duration = 0.02
        loop.call_soon(spin, 0.05)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return loop.metrics()

    snap = run(main, "callbacks")
    (slow,) = snap.recent_slow_callbacks
    assert slow.task_name is None and slow.coroutine is None
    assert "spin" in slow.handle
    if slow.stack:  # the watchdog got the GIL during the spin (switch interval)
        assert slow.location is not None and " in spin" in slow.location


def test_watchdog_runs_only_while_the_loop_runs() -> None:
    def watchdogs() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "ferroloop-slow-callback-watchdog"]

    async def main(loop: ferroloop.Loop) -> int:
        return len(watchdogs())

    assert run(main, "callbacks") == 1
    assert watchdogs() == []  # ended and joined when the run ended
    assert run(main, "loop") == 0
    assert watchdogs() == []


def test_watchdog_waits_on_nothing_in_the_running_loop() -> None:
    """blockbuster (which anyio's and others' test suites run) flags any lock the loop
    thread waits on while a loop runs: the watchdog is started before the loop is set
    running and is only signalled to stop, and a slow callback's sample is read without a
    lock."""

    async def spinning() -> None:
        spin(0.06)  # slow, but not a blocking call blockbuster would flag

    async def main(loop: ferroloop.Loop) -> LoopMetrics:
        loop.slow_callback_duration = 0.02
        await asyncio.create_task(spinning())
        return loop.metrics()

    with blockbuster_ctx("ferroloop"):
        loop = ferroloop.new_event_loop()
        loop.set_debug(True)
        try:
            snap = loop.run_until_complete(main(loop))
        finally:
            loop.close()
    assert snap.slow_callbacks == 1


def test_slow_code_without_a_source_file_is_named_not_ferroloop() -> None:
    """Code compiled from a string has no file outside the libraries: the location is its
    own innermost frame, never ferroloop's run loop (also from a source checkout)."""
    namespace: dict[str, Any] = {}
    exec(
        compile("import time\ndef stall():\n    time.sleep(0.06)\n", "<string>", "exec"), namespace
    )

    async def main(loop: ferroloop.Loop) -> LoopMetrics:
        loop.slow_callback_duration = 0.02
        loop.call_soon(namespace["stall"])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return loop.metrics()

    (slow,) = run(main, "callbacks").recent_slow_callbacks
    assert slow.location == "<string>:3 in stall"
