"""examples/quotes.py: fan-out of quotes, exact moving averages and alerts, isolation.

Runs on both loops (``loop`` fixture). Expected values are computed here from the fixed
quote list with a naive recomputation (slice the last N prices, sum, divide), not with
the example's running sum.
"""

from __future__ import annotations

import asyncio
import subprocess
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from _support import example_command, load_example

pytestmark = pytest.mark.timeout(10)

ROOT = Path(__file__).resolve().parents[2]


quotes = load_example("quotes")

QUOTES = [
    ("AAA", "10.00"),
    ("BBB", "50.00"),
    ("AAA", "11.00"),
    ("AAA", "13.00"),
    ("BBB", "49.50"),
    ("AAA", "12.00"),
    ("CCC", "7.77"),
    ("AAA", "9.00"),
    ("BBB", "52.25"),
    ("AAA", "8.00"),
    ("BBB", "53.10"),
    ("AAA", "14.50"),
    ("BBB", "47.00"),
    ("AAA", "15.00"),
    ("CCC", "7.78"),
    ("BBB", "46.99"),
]
THRESHOLDS = {"AAA": Decimal("11.5"), "BBB": Decimal("50.5")}


def expected_averages(window: int, symbols=None) -> dict[str, list[Fraction]]:
    history: dict[str, list[Fraction]] = {}
    out: dict[str, list[Fraction]] = {}
    for symbol, price in QUOTES:
        if symbols is not None and symbol not in symbols:
            continue
        history.setdefault(symbol, []).append(Fraction(price))
        last = history[symbol][-window:]
        out.setdefault(symbol, []).append(sum(last, Fraction(0)) / len(last))
    return out


def expected_alerts(window: int) -> list[tuple[str, int, str, Fraction]]:
    averages = expected_averages(window)
    index = {s: 0 for s in averages}
    state = {s: False for s in THRESHOLDS}
    alerts = []
    for seq, (symbol, _) in enumerate(QUOTES):
        avg = averages[symbol][index[symbol]]
        index[symbol] += 1
        if symbol not in THRESHOLDS:
            continue
        above = avg > Fraction(THRESHOLDS[symbol])
        if above != state[symbol]:
            state[symbol] = above
            alerts.append((symbol, seq, "above" if above else "below", avg))
    return alerts


def test_expected_values_are_not_trivial() -> None:
    # Guard the test data itself: several alerts in both directions, on two symbols.
    alerts = expected_alerts(3)
    assert {a[2] for a in alerts} == {"above", "below"}
    assert {a[0] for a in alerts} == {"AAA", "BBB"}
    assert expected_averages(3)["AAA"][3] == Fraction(36, 3)  # 11 + 13 + 12


def test_averages_and_alerts_exact(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario():
        hub = quotes.QuoteHub(queue_size=4)
        ma3 = quotes.MovingAverage(3, THRESHOLDS)
        ma1 = quotes.MovingAverage(1)
        ma4_aaa = quotes.MovingAverage(4)
        hub.subscribe("ma3", ma3)
        hub.subscribe("ma1", ma1)
        hub.subscribe("ma4-aaa", ma4_aaa, symbols={"AAA"})
        for symbol, price in QUOTES:
            await hub.publish(symbol, price)
        await hub.close()
        return hub, ma3, ma1, ma4_aaa

    hub, ma3, ma1, ma4_aaa = loop.run_until_complete(scenario())

    assert hub.published == len(QUOTES)
    assert hub.errors == {}
    assert ma3.averages == expected_averages(3)
    assert ma1.averages == {s: [Fraction(p) for sym, p in QUOTES if sym == s] for s, _ in QUOTES}
    assert ma4_aaa.averages == expected_averages(4, symbols={"AAA"})
    got = [(a.symbol, a.seq, a.kind, a.average) for a in ma3.alerts]
    assert got == expected_alerts(3)
    assert all(a.threshold == THRESHOLDS[a.symbol] for a in ma3.alerts)
    assert ma1.alerts == [] and ma4_aaa.alerts == []


@pytest.mark.parametrize("queue_size", [1, 100])
def test_failing_subscriber_is_isolated(loop: asyncio.AbstractEventLoop, queue_size: int) -> None:
    fail_at = 5

    async def scenario():
        hub = quotes.QuoteHub(queue_size=queue_size)
        before = quotes.MovingAverage(3, THRESHOLDS)
        after = quotes.MovingAverage(3, THRESHOLDS)
        seen_by_async: list[int] = []
        seen_by_bad: list[int] = []

        async def async_sub(q) -> None:
            await asyncio.sleep(0)
            seen_by_async.append(q.seq)

        async def bad(q) -> None:
            seen_by_bad.append(q.seq)
            if q.seq == fail_at:
                raise ZeroDivisionError("subscriber bug")

        # The failing subscriber is registered between healthy ones.
        hub.subscribe("before", before)
        hub.subscribe("bad", bad)
        hub.subscribe("async", async_sub)
        hub.subscribe("after", after)
        published = []
        for symbol, price in QUOTES:
            published.append(await hub.publish(symbol, price))
        subscribers_before_close = sorted(hub.subscribers)
        await hub.close()
        return hub, before, after, seen_by_async, seen_by_bad, published, subscribers_before_close

    hub, before, after, seen_async, seen_bad, published, live = loop.run_until_complete(
        asyncio.wait_for(scenario(), 5)
    )

    assert [q.seq for q in published] == list(range(len(QUOTES)))
    assert hub.published == len(QUOTES)
    assert list(hub.errors) == ["bad"]
    assert isinstance(hub.errors["bad"], ZeroDivisionError)
    assert seen_bad == list(range(fail_at + 1))  # never called again after raising
    if queue_size == 1:
        # Lock-step delivery: the failure happened (and was detached) mid-stream.
        assert "bad" not in live
    assert seen_async == list(range(len(QUOTES)))
    for ma in (before, after):
        assert ma.averages == expected_averages(3)
        assert [(a.symbol, a.seq, a.kind, a.average) for a in ma.alerts] == expected_alerts(3)
    assert hub.subscribers == []  # all finished after close()


def test_sync_subscriber_raising_on_first_quote(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario():
        hub = quotes.QuoteHub(queue_size=1)
        good = quotes.MovingAverage(2)

        def boom(q) -> None:
            raise ValueError(q.symbol)

        hub.subscribe("boom", boom)
        hub.subscribe("good", good)
        for symbol, price in QUOTES:
            await hub.publish(symbol, price)
        await hub.close()
        return hub, good

    hub, good = loop.run_until_complete(asyncio.wait_for(scenario(), 5))
    assert isinstance(hub.errors["boom"], ValueError)
    assert str(hub.errors["boom"]) == "AAA"
    assert good.averages == expected_averages(2)


@pytest.mark.parametrize("runner", ["asyncio", "ferroloop"])
def test_script_runs(runner: str) -> None:
    cmd = example_command("quotes", runner)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=8, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"loop: {runner}" in out
    assert "published: 200 quotes, logger saw 200" in out
    assert "isolated failure: flaky: flaky subscriber gave up at quote 10" in out
    assert "subscribers completed normally: logger, ma20-acme, ma5" in out
    assert proc.stderr == ""
