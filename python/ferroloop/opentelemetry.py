"""ferroloop's loop metrics (`loop.metrics()`) as OpenTelemetry observable instruments.

``instrument(loops, meter_provider=None)`` registers, on the meter ``ferroloop``, observable
instruments whose callbacks read a fresh `loop.metrics()` of every open loop at each
collection (any thread: the SDK's periodic reader calls them from its own thread)::

    from ferroloop.opentelemetry import instrument
    instrument(lambda: [loop])          # the global MeterProvider, or meter_provider=...

Needs ``opentelemetry-api`` (``pip install opentelemetry-api``, or the SDK). Names follow the
semantic conventions' style (dotted, lowercase, units in UCUM); every observation has the
attribute ``ferroloop.loop.id`` (the mapping's name, else the number the process gave the
loop: the ``loop`` label of `ferroloop.prometheus`). Time is in seconds.

The lag histogram: the OpenTelemetry API has no asynchronous (observable) histogram, and a
synchronous ``Histogram`` would need every observation recorded from Python, while the loop
keeps only native bucket counts. So the loop's own histogram is exported as it is, with
observable counters: ``ferroloop.callback.lag.bucket`` (callbacks whose lag was at most the
attribute ``le``, seconds as a string, ``"+Inf"`` last: cumulative, Prometheus-style, so a
backend can compute quantiles), ``ferroloop.callback.lag.count`` and
``ferroloop.callback.lag.sum`` (seconds; sum/count is the mean lag).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._exporting import snapshots

if TYPE_CHECKING:
    from ._exporting import LoopSource
    from .metrics import LoopMetrics

__all__ = ["INSTRUMENTS", "Instrumentation", "instrument"]

_Rows = Iterable[tuple[float, dict[str, str]]]

_DIRECTION = "network.io.direction"


def _single(value: Callable[[LoopMetrics], float]) -> Callable[[LoopMetrics], _Rows]:
    return lambda m: [(value(m), {})]


def _by_kind(counts: Callable[[LoopMetrics], Any]) -> Callable[[LoopMetrics], _Rows]:
    return lambda m: [(n, {"transport.kind": k}) for k, n in counts(m).items()]


def _directions(
    received: Callable[[LoopMetrics], float], sent: Callable[[LoopMetrics], float]
) -> Callable[[LoopMetrics], _Rows]:
    return lambda m: [(received(m), {_DIRECTION: "receive"}), (sent(m), {_DIRECTION: "transmit"})]


def _lag_buckets(m: LoopMetrics) -> _Rows:
    return [
        (n, {"le": "+Inf" if bound == float("inf") else repr(bound)})
        for bound, n in m.lag.cumulative()
    ]


def _recent_slow(m: LoopMetrics) -> _Rows:
    latest: dict[tuple[str, str, str], float] = {}
    for cb in m.recent_slow_callbacks:  # oldest first: the latest one wins
        latest[(cb.task_name or "", cb.coroutine or "", cb.location or "")] = cb.seconds
    return [
        (s, {"ferroloop.task.name": t, "ferroloop.coroutine": c, "ferroloop.callback.location": w})
        for (t, c, w), s in latest.items()
    ]


#: ``(name, kind, unit, description, observations of one snapshot)``; kind is the Meter's
#: ``create_observable_<kind>``.
INSTRUMENTS: tuple[tuple[str, str, str, str, Callable[[LoopMetrics], _Rows]], ...] = (
    (
        "ferroloop.loop.utilization",
        "gauge",
        "1",
        "Share of the running time spent working, not polling, since the loop was created.",
        _single(lambda m: m.utilization),
    ),
    (
        "ferroloop.loop.iterations",
        "counter",
        "{iteration}",
        "Loop iterations.",
        _single(lambda m: m.iterations),
    ),
    (
        "ferroloop.loop.busy_time",
        "counter",
        "s",
        "Time the running loop spent working (not blocked in the poller).",
        _single(lambda m: m.busy_seconds),
    ),
    (
        "ferroloop.loop.poll_time",
        "counter",
        "s",
        "Time the running loop spent blocked waiting for I/O or a timer.",
        _single(lambda m: m.poll_seconds),
    ),
    (
        "ferroloop.callback.running_time",
        "gauge",
        "s",
        "How long the callback running now has run (0 when none runs or callbacks are not timed).",
        _single(lambda m: m.current_callback_seconds),
    ),
    (
        "ferroloop.loop.longest_iteration",
        "gauge",
        "s",
        "The longest stretch between two polls since the loop was created.",
        _single(lambda m: m.longest_iteration_seconds),
    ),
    (
        "ferroloop.callback.runs",
        "counter",
        "{callback}",
        "Callbacks run.",
        _single(lambda m: m.callbacks),
    ),
    (
        "ferroloop.callback.lag.bucket",
        "counter",
        "{callback}",
        "Callbacks whose scheduling lag was at most `le` seconds (cumulative; metrics level "
        "'callbacks').",
        _lag_buckets,
    ),
    (
        "ferroloop.callback.lag.count",
        "counter",
        "{callback}",
        "Callbacks whose scheduling lag was measured (metrics level 'callbacks').",
        _single(lambda m: m.lag.count),
    ),
    (
        "ferroloop.callback.lag.sum",
        "counter",
        "s",
        "Total scheduling lag of the callbacks counted by ferroloop.callback.lag.count.",
        _single(lambda m: m.lag.sum),
    ),
    (
        "ferroloop.callback.slow.count",
        "counter",
        "{callback}",
        "Callbacks that ran at least loop.slow_callback_duration.",
        _single(lambda m: m.slow_callbacks),
    ),
    (
        "ferroloop.callback.slow.time",
        "counter",
        "s",
        "Time spent in slow callbacks.",
        _single(lambda m: m.slow_callback_seconds),
    ),
    (
        "ferroloop.callback.slow.recent",
        "gauge",
        "s",
        "How long the loop's most recent slow callbacks ran, by task name, coroutine and "
        "location (file:line in function); the latest of each.",
        _recent_slow,
    ),
    (
        "ferroloop.callback.ready",
        "up_down_counter",
        "{callback}",
        "Callbacks in the ready queue.",
        _single(lambda m: m.ready),
    ),
    (
        "ferroloop.timer.scheduled",
        "up_down_counter",
        "{timer}",
        "Timers scheduled and not cancelled.",
        _single(lambda m: m.timers),
    ),
    (
        "ferroloop.timer.cancelled",
        "up_down_counter",
        "{timer}",
        "Cancelled timers not yet dropped.",
        _single(lambda m: m.timers_cancelled),
    ),
    (
        "ferroloop.fd.registered",
        "up_down_counter",
        "{fd}",
        "File descriptors registered with the poller.",
        _single(lambda m: m.fds),
    ),
    (
        "ferroloop.transport.open",
        "up_down_counter",
        "{transport}",
        "Open native transports, by transport.kind.",
        _by_kind(lambda m: m.transports),
    ),
    (
        "ferroloop.transport.opened",
        "counter",
        "{transport}",
        "Native transports created, by transport.kind.",
        _by_kind(lambda m: m.transports_opened),
    ),
    (
        "ferroloop.transport.io",
        "counter",
        "By",
        "Bytes received and sent through the native transports (network.io.direction).",
        _directions(lambda m: m.bytes_received, lambda m: m.bytes_sent),
    ),
    (
        "ferroloop.transport.operations",
        "counter",
        "{operation}",
        "Read calls that returned data or EOF (receive) and write calls that sent bytes "
        "(transmit) of the native transports.",
        _directions(lambda m: m.reads, lambda m: m.writes),
    ),
    (
        "ferroloop.task.active",
        "up_down_counter",
        "{task}",
        "Tasks of the loop not done.",
        lambda m: [(m.tasks, {})] if m.tasks >= 0 else [],
    ),
)


class Instrumentation:
    """What `instrument` registered: `instruments` (name -> the API's observable instrument).
    The API cannot unregister an instrument; `close()` makes their callbacks observe nothing
    from then on."""

    def __init__(self) -> None:
        self.instruments: dict[str, Any] = {}
        self.closed = False

    def close(self) -> None:
        """Stop observing the loops (the instruments stay registered, and report nothing)."""
        self.closed = True


def instrument(loops: LoopSource = None, meter_provider: Any = None) -> Instrumentation:
    """Registers ferroloop's observable instruments (`INSTRUMENTS`) on the meter
    ``ferroloop`` of `meter_provider` (default: the global one), observing the open loops of
    `loops`: a loop, an iterable or mapping of loops, or a callable returning one, called at
    every collection.

    Raises ImportError, naming the package, when ``opentelemetry-api`` is not installed, and
    TypeError (at collection, logged by the SDK) when `loops` is not a loop source."""
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ImportError(
            "ferroloop.opentelemetry.instrument needs the OpenTelemetry API: "
            "pip install opentelemetry-api (or opentelemetry-sdk)"
        ) from exc
    from ferroloop import __version__

    meter = metrics.get_meter("ferroloop", __version__, meter_provider=meter_provider)
    result = Instrumentation()

    def callback_for(rows: Callable[[LoopMetrics], _Rows]) -> Callable[[Any], list[Any]]:
        def callback(options: Any) -> list[Any]:
            if result.closed:
                return []
            return [
                metrics.Observation(value, {"ferroloop.loop.id": label, **attributes})
                for label, snap in snapshots(loops)
                for value, attributes in rows(snap)
            ]

        return callback

    for name, kind, unit, description, rows in INSTRUMENTS:
        create = getattr(meter, f"create_observable_{kind}")
        result.instruments[name] = create(
            name, callbacks=[callback_for(rows)], unit=unit, description=description
        )
    return result
