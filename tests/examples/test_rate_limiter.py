"""examples/rate_limiter.py: the sliding-window property and FIFO order on both loops."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _support import example_command, load_example

ROOT = Path(__file__).resolve().parents[2]


rate_limiter = load_example("rate_limiter")

RATE = 50
PERIOD = 0.5  # 100 calls/s
CALLS = 200
SPACING = 0.004  # callers arrive at 250/s, 2.5x faster than the limit


def _window_counts(times: list[float], period: float) -> list[int]:
    """For every entry, how many entries fall in [t, t + period) (brute force)."""
    return [sum(1 for u in times if t <= u < t + period) for t in times]


def _ideal_admissions(arrivals: list[float], rate: int, period: float) -> list[float]:
    """Earliest admission times a perfect FIFO sliding-window limiter would give."""
    admitted: list[float] = []
    for k, arrived in enumerate(arrivals):
        earliest = arrived if k < rate else max(arrived, admitted[k - rate] + period)
        admitted.append(earliest)
    return admitted


@pytest.mark.timeout(10)
def test_sliding_window_and_fifo(loop: asyncio.AbstractEventLoop) -> None:
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    limiter = rate_limiter.RateLimiter(RATE, PERIOD)
    waiting: list[tuple[int, float]] = []  # (caller, loop.time()) when it starts waiting
    entered: list[tuple[int, float, float]] = []  # (caller, admission stamp, loop.time())

    async def caller(i: int) -> None:
        await asyncio.sleep(i * SPACING)
        # Nothing suspends between here and the limiter queueing this caller, so
        # the order of this list is the order in which callers started waiting.
        waiting.append((i, loop.time()))
        async with limiter as admitted_at:
            entered.append((i, admitted_at, loop.time()))
            await asyncio.sleep(0)  # the rate-limited work

    async def scenario() -> None:
        await asyncio.gather(*(caller(i) for i in range(CALLS)))

    loop.run_until_complete(scenario())

    assert errors == []
    assert len(entered) == CALLS
    assert sorted(i for i, _, _ in entered) == list(range(CALLS))

    # FIFO: callers entered in exactly the order they started waiting.
    assert [i for i, _, _ in entered] == [i for i, _ in waiting]

    # The exact window property, checked for the window starting at every entry,
    # on the admission times (loop.time() readings taken by the limiter).
    admitted = [t for _, t, _ in entered]
    assert admitted == sorted(admitted)
    counts = _window_counts(admitted, PERIOD)
    assert max(counts) <= RATE, max(counts)
    # The example's own (two-pointer) window check agrees with the brute force.
    assert rate_limiter.max_in_window(admitted, PERIOD) == max(counts)
    # The limit was really reached (the load exceeds it), so the check has teeth.
    assert max(counts) == RATE

    # The same property on the times the callers observed with loop.time() in
    # their body.  A body starts a few microseconds after its admission stamp;
    # shrinking each window by the largest such delay keeps the check exact.
    observed = [t for _, _, t in entered]
    delay = max(o - a for o, a in zip(observed, admitted, strict=True))
    assert 0 <= delay < 0.05, delay
    assert max(_window_counts(observed, PERIOD - delay)) <= RATE

    # Not over-restrictive: every caller got in close to the earliest moment a
    # perfect limiter would have let it in, given when it started waiting.
    ideal = _ideal_admissions([t for _, t in waiting], RATE, PERIOD)
    lateness = [a - b for a, b in zip(admitted, ideal, strict=True)]
    assert min(lateness) >= -1e-6
    assert max(lateness) < 0.25, max(lateness)
    total = admitted[-1] - admitted[0]
    assert 1.5 <= total < 2.0, total


@pytest.mark.timeout(10)
def test_cancelled_waiter_gives_up_its_place(loop: asyncio.AbstractEventLoop) -> None:
    period = 0.2
    limiter = rate_limiter.RateLimiter(2, period)
    entered: dict[str, float] = {}

    async def call(name: str) -> None:
        async with limiter:
            entered[name] = loop.time()

    async def scenario() -> asyncio.Task[None]:
        start = loop.time()
        tasks = {name: asyncio.create_task(call(name)) for name in "ABCDE"}
        await asyncio.sleep(0.05)
        assert set(entered) == {"A", "B"}
        tasks["D"].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        entered["start"] = start
        return tasks["D"]

    cancelled = loop.run_until_complete(scenario())
    assert cancelled.cancelled()
    start = entered.pop("start")
    assert list(entered) == ["A", "B", "C", "E"]
    # C and E share the second window: D's cancellation cost nobody a period.
    assert entered["A"] - start < 0.05
    assert period <= entered["C"] - entered["A"] < period + 0.1
    assert period <= entered["E"] - entered["B"] < period + 0.1


@pytest.mark.timeout(30)
def test_script_runs(loop_kind: str) -> None:
    cmd = example_command("rate_limiter", loop_kind)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=25)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    expected_loop = "ferroloop" if loop_kind == "ferroloop" else "asyncio"
    assert f"loop: {expected_loop}." in out
    assert "admitted 30 calls" in out
    assert "busiest 0.25 s window: 10 calls" in out
    assert "FIFO order: yes" in out
    assert "result: OK" in out
    assert proc.stderr == ""
