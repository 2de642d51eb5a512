"""Real-time quote stream: one publisher fanning price quotes out to many subscribers.

* ``QuoteHub`` is the publisher side. Every subscriber gets its own bounded
  ``asyncio.Queue`` and its own task; ``publish()`` puts each quote on the queue of every
  live subscriber interested in that symbol (awaiting ``put`` gives back-pressure).
* ``MovingAverage`` is a subscriber computing, per symbol, the moving average of the last
  ``window`` prices and edge-triggered threshold alerts: an ``above`` alert when the
  average rises above the symbol's threshold, a ``below`` alert when it falls back to or
  under it (the initial state is "not above").
* Error isolation: a subscriber whose handler raises is detached from the hub, its error is
  recorded in ``hub.errors`` and its queue is drained (so a publisher blocked on that full
  queue wakes up). The publisher and the other subscribers carry on untouched.

Prices are ``Decimal`` and averages ``Fraction`` so every figure is exact.

Run it: ``python examples/quotes.py`` (stock asyncio) or
``python -m ferroloop examples/quotes.py`` (ferroloop); the demo is deterministic.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction


@dataclass(frozen=True)
class Quote:
    symbol: str
    price: Decimal
    seq: int  # publication order, across all symbols


@dataclass(frozen=True)
class Alert:
    symbol: str
    seq: int  # the quote that triggered it
    kind: str  # "above" or "below"
    average: Fraction
    threshold: Decimal


Handler = Callable[[Quote], Awaitable[None] | None]

_CLOSE = object()  # end-of-stream marker put on every queue by QuoteHub.close()


@dataclass
class Subscription:
    name: str
    handler: Handler
    symbols: frozenset[str] | None  # None: every symbol
    queue: asyncio.Queue[object]
    task: asyncio.Task[None] | None = None
    received: int = 0

    def wants(self, quote: Quote) -> bool:
        return self.symbols is None or quote.symbol in self.symbols


@dataclass
class QuoteHub:
    """The publisher: fan-out of quotes to per-subscriber queues, with error isolation."""

    queue_size: int = 100
    published: int = 0
    errors: dict[str, BaseException] = field(default_factory=dict)
    _subs: dict[str, Subscription] = field(default_factory=dict)
    _finished: list[Subscription] = field(default_factory=list)
    _closed: bool = False

    def subscribe(
        self,
        name: str,
        handler: Handler,
        symbols: Iterable[str] | None = None,
        queue_size: int | None = None,
    ) -> Subscription:
        """Attach a subscriber; ``handler(quote)`` may be a plain or an async function."""
        if self._closed:
            raise RuntimeError("hub is closed")
        if name in self._subs:
            raise ValueError(f"duplicate subscriber {name!r}")
        size = self.queue_size if queue_size is None else queue_size
        sub = Subscription(
            name, handler, None if symbols is None else frozenset(symbols), asyncio.Queue(size)
        )
        sub.task = asyncio.create_task(self._consume(sub), name=f"subscriber-{name}")
        sub.task.add_done_callback(lambda _t, sub=sub: self._detach(sub))
        self._subs[name] = sub
        return sub

    @property
    def subscribers(self) -> list[str]:
        """Names of the live subscribers."""
        return list(self._subs)

    async def _consume(self, sub: Subscription) -> None:
        while True:
            item = await sub.queue.get()
            if item is _CLOSE:
                return
            assert isinstance(item, Quote)
            result = sub.handler(item)
            if inspect.isawaitable(result):
                await result
            sub.received += 1

    def _detach(self, sub: Subscription) -> None:
        """Done callback of a subscriber task: unregister it, record a failure."""
        self._subs.pop(sub.name, None)
        self._finished.append(sub)
        assert sub.task is not None
        if not sub.task.cancelled() and (exc := sub.task.exception()) is not None:
            self.errors[sub.name] = exc
        # Nobody reads this queue any more: empty it so a publisher blocked in put() on it
        # wakes up (get_nowait() wakes the waiting putters).
        while not sub.queue.empty():
            sub.queue.get_nowait()

    async def publish(self, symbol: str, price: Decimal | str) -> Quote:
        if self._closed:
            raise RuntimeError("hub is closed")
        quote = Quote(symbol, Decimal(price), self.published)
        self.published += 1
        for sub in list(self._subs.values()):
            if sub.wants(quote) and sub.name in self._subs:
                await sub.queue.put(quote)
        return quote

    async def close(self) -> None:
        """End of stream: every live subscriber processes what is queued, then stops."""
        self._closed = True
        live = list(self._subs.values())
        for sub in live:
            if sub.name in self._subs:  # it may die while we wait on another queue
                await sub.queue.put(_CLOSE)
        tasks = [sub.task for sub in live if sub.task is not None]
        # Failures are already in self.errors (done callback); never propagate them here.
        await asyncio.gather(*tasks, return_exceptions=True)


class MovingAverage:
    """Subscriber: per-symbol moving average over ``window`` quotes and threshold alerts."""

    def __init__(self, window: int, thresholds: dict[str, Decimal] | None = None) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.thresholds = {s: Decimal(t) for s, t in (thresholds or {}).items()}
        self.averages: dict[str, list[Fraction]] = {}
        self.alerts: list[Alert] = []
        self._prices: dict[str, deque[Decimal]] = {}
        self._sums: dict[str, Decimal] = {}
        self._above: dict[str, bool] = {}

    def __call__(self, quote: Quote) -> None:
        prices = self._prices.setdefault(quote.symbol, deque())
        total = self._sums.get(quote.symbol, Decimal(0)) + quote.price
        prices.append(quote.price)
        if len(prices) > self.window:
            total -= prices.popleft()
        self._sums[quote.symbol] = total  # Decimal addition of 2-place prices is exact
        average = Fraction(total) / len(prices)
        self.averages.setdefault(quote.symbol, []).append(average)

        threshold = self.thresholds.get(quote.symbol)
        if threshold is None:
            return
        above = average > threshold
        if above != self._above.get(quote.symbol, False):
            self._above[quote.symbol] = above
            kind = "above" if above else "below"
            self.alerts.append(Alert(quote.symbol, quote.seq, kind, average, threshold))

    def latest(self, symbol: str) -> Fraction | None:
        values = self.averages.get(symbol)
        return values[-1] if values else None


def random_walk(
    symbols: dict[str, Decimal], steps: int, seed: int = 7
) -> list[tuple[str, Decimal]]:
    """A deterministic interleaved stream of (symbol, price), prices rounded to cents."""
    rng = random.Random(seed)
    prices = dict(symbols)
    out: list[tuple[str, Decimal]] = []
    for _ in range(steps):
        symbol = rng.choice(sorted(prices))
        move = Decimal(rng.randint(-150, 150)) / 100
        prices[symbol] = max(Decimal("0.01"), prices[symbol] + move)
        out.append((symbol, prices[symbol]))
    return out


async def demo(steps: int = 200) -> dict[str, object]:
    hub = QuoteHub(queue_size=8)
    all_ma = MovingAverage(window=5, thresholds={"ACME": Decimal("101"), "GLOBEX": Decimal("49")})
    acme_only = MovingAverage(window=20, thresholds={"ACME": Decimal("100.5")})
    seen: list[int] = []

    async def slow_logger(quote: Quote) -> None:
        seen.append(quote.seq)
        await asyncio.sleep(0)

    def flaky(quote: Quote) -> None:
        if quote.seq >= 10:
            raise RuntimeError(f"flaky subscriber gave up at quote {quote.seq}")

    hub.subscribe("ma5", all_ma)
    hub.subscribe("ma20-acme", acme_only, symbols={"ACME"})
    hub.subscribe("logger", slow_logger)
    hub.subscribe("flaky", flaky, queue_size=1)

    stream = random_walk(
        {"ACME": Decimal("100"), "GLOBEX": Decimal("50"), "INITECH": Decimal("20")}, steps
    )
    for symbol, price in stream:
        await hub.publish(symbol, price)
    await hub.close()
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return {"hub": hub, "ma5": all_ma, "ma20": acme_only, "logged": seen, "loop": loop_name}


def main() -> None:
    result = asyncio.run(demo())
    hub: QuoteHub = result["hub"]  # type: ignore[assignment]
    ma5: MovingAverage = result["ma5"]  # type: ignore[assignment]
    ma20: MovingAverage = result["ma20"]  # type: ignore[assignment]
    logged: list[int] = result["logged"]  # type: ignore[assignment]
    print(f"loop: {result['loop']}")
    print(f"published: {hub.published} quotes, logger saw {len(logged)}")
    for symbol in sorted(ma5.averages):
        print(
            f"  {symbol:8} quotes={len(ma5.averages[symbol]):3} "
            f"ma5={float(ma5.latest(symbol) or 0):9.4f}"
        )
    print(f"ma5 alerts: {len(ma5.alerts)}")
    for alert in ma5.alerts[:6]:
        print(f"  #{alert.seq:3} {alert.symbol:8} {alert.kind:5} avg={float(alert.average):.4f}")
    print(f"ma20-acme alerts: {len(ma20.alerts)}")
    for name, exc in sorted(hub.errors.items()):
        print(f"isolated failure: {name}: {exc}")
    ok = sorted(s.name for s in hub._finished if s.name not in hub.errors)
    print(f"subscribers completed normally: {', '.join(ok)}")


if __name__ == "__main__":
    main()
