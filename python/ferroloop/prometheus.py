"""ferroloop's loop metrics (`loop.metrics()`) for Prometheus.

- `exposition(loops)`: the text exposition format 0.0.4 (what ``GET /metrics`` serves), with
  no dependency.
- `FerroloopCollector(loops)`: the same families for the ``prometheus_client`` library
  (optional: ``pip install prometheus-client``)::

      from prometheus_client import REGISTRY
      REGISTRY.register(FerroloopCollector(lambda: [loop]))

`loops` is a loop, an iterable of loops, a mapping ``{name: loop}`` or a callable returning
one of these at each scrape (see `ferroloop._exporting`). Every series has the label
``loop``: the mapping's name, else a number given to each loop in the order the process
first saw it (``"1"``, ``"2"``…), so loops in several threads are told apart. Closed loops
are left out.

Seconds are the unit of every time; counters end in ``_total``. The lag histogram and slow
callbacks need the metrics level ``"callbacks"`` (``loop.set_metrics_level("callbacks")``
or ``FERROLOOP_METRICS=callbacks``); at a lower level they stay at zero.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._exporting import snapshots

if TYPE_CHECKING:
    from ._exporting import LoopSource
    from .metrics import Histogram, LoopMetrics

__all__ = ["CONTENT_TYPE", "Family", "FerroloopCollector", "exposition", "families"]

#: The content type of `exposition`'s text.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclasses.dataclass
class Family:
    """One metric family: `name` as exposed (a counter's ends in ``_total``), `kind`
    (``counter``, ``gauge`` or ``histogram``), `help`, `labels` (names) and `values`: one
    ``(label values, value)`` per series, the value a float or, for a histogram, a
    `ferroloop.metrics.Histogram`."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ("loop",)
    values: list[tuple[tuple[str, ...], Any]] = dataclasses.field(default_factory=list)


# (name, kind, help, the value from a snapshot); one series per loop.
_PER_LOOP: tuple[tuple[str, str, str, Any], ...] = (
    (
        "ferroloop_loop_utilization",
        "gauge",
        "Share of the loop's running time spent working rather than waiting in the poller "
        "(0-1), since the loop was created.",
        lambda m: m.utilization,
    ),
    (
        "ferroloop_loop_iterations_total",
        "counter",
        "Loop iterations.",
        lambda m: m.iterations,
    ),
    ("ferroloop_callbacks_total", "counter", "Callbacks run.", lambda m: m.callbacks),
    (
        "ferroloop_loop_busy_seconds_total",
        "counter",
        "Seconds the running loop spent working (not blocked in the poller).",
        lambda m: m.busy_seconds,
    ),
    (
        "ferroloop_loop_poll_seconds_total",
        "counter",
        "Seconds the running loop spent blocked waiting for I/O or a timer.",
        lambda m: m.poll_seconds,
    ),
    (
        "ferroloop_callback_running_seconds",
        "gauge",
        "How long the callback running now has run, in seconds (0 when none runs or "
        "callbacks are not timed: metrics level callbacks or debug mode).",
        lambda m: m.current_callback_seconds,
    ),
    (
        "ferroloop_loop_longest_iteration_seconds",
        "gauge",
        "The longest stretch between two polls, in seconds, since the loop was created.",
        lambda m: m.longest_iteration_seconds,
    ),
    (
        "ferroloop_callback_lag_seconds",
        "histogram",
        "Seconds a ready callback waited before it ran (metrics level 'callbacks').",
        lambda m: m.lag,
    ),
    (
        "ferroloop_slow_callbacks_total",
        "counter",
        "Callbacks that ran at least loop.slow_callback_duration (metrics level 'callbacks' "
        "or debug mode).",
        lambda m: m.slow_callbacks,
    ),
    (
        "ferroloop_slow_callback_seconds_total",
        "counter",
        "Seconds spent in slow callbacks.",
        lambda m: m.slow_callback_seconds,
    ),
    ("ferroloop_ready_callbacks", "gauge", "Callbacks in the ready queue.", lambda m: m.ready),
    (
        "ferroloop_timers",
        "gauge",
        "Timers scheduled and not cancelled.",
        lambda m: m.timers,
    ),
    (
        "ferroloop_timers_cancelled",
        "gauge",
        "Cancelled timers not yet dropped from the timer heap.",
        lambda m: m.timers_cancelled,
    ),
    ("ferroloop_fds", "gauge", "File descriptors registered with the poller.", lambda m: m.fds),
    (
        "ferroloop_transport_received_bytes_total",
        "counter",
        "Bytes received through the loop's native transports.",
        lambda m: m.bytes_received,
    ),
    (
        "ferroloop_transport_sent_bytes_total",
        "counter",
        "Bytes sent through the loop's native transports.",
        lambda m: m.bytes_sent,
    ),
    (
        "ferroloop_transport_reads_total",
        "counter",
        "Read calls of the native transports that returned data or end of file.",
        lambda m: m.reads,
    ),
    (
        "ferroloop_transport_writes_total",
        "counter",
        "Write calls of the native transports that sent at least one byte.",
        lambda m: m.writes,
    ),
    (
        "ferroloop_tasks",
        "gauge",
        "Tasks of the loop not done (-1: they could not be counted).",
        lambda m: m.tasks,
    ),
)

_TRANSPORTS_HELP = "Open native transports, by kind (tcp, unix, pipe, udp, unix_datagram)."
_OPENED_HELP = "Native transports created, by kind (tcp, unix, pipe, udp, unix_datagram)."
_SLOW_HELP = (
    "Seconds the most recent slow callbacks ran, one series per task name, coroutine and "
    "location (file:line in function) among the loop's last 16 slow callbacks; the value is "
    "the latest of that series. Labels are empty when unknown (a callback not of a task)."
)


def families(loops: LoopSource = None) -> list[Family]:
    """The metric families of the open loops of `loops`, each loop's snapshot taken once.

    Raises TypeError when `loops` is not a loop source."""
    return _families(snapshots(loops))


def _families(snaps: list[tuple[str, LoopMetrics]]) -> list[Family]:
    out = []
    for name, kind, help_, value in _PER_LOOP:
        family = Family(name, kind, help_)
        family.values = [((label,), value(m)) for label, m in snaps]
        out.append(family)
        if name == "ferroloop_fds":
            out.append(_by_kind("ferroloop_transports", "gauge", _TRANSPORTS_HELP, snaps, False))
            out.append(
                _by_kind("ferroloop_transports_opened_total", "counter", _OPENED_HELP, snaps, True)
            )
    slow = Family(
        "ferroloop_slow_callback_recent_seconds",
        "gauge",
        _SLOW_HELP,
        ("loop", "task", "coroutine", "location"),
    )
    for label, m in snaps:
        latest: dict[tuple[str, ...], float] = {}
        for cb in m.recent_slow_callbacks:  # oldest first: the latest one wins
            latest[(label, cb.task_name or "", cb.coroutine or "", cb.location or "")] = cb.seconds
        slow.values.extend(latest.items())
    out.append(slow)
    return out


def _by_kind(
    name: str, kind: str, help_: str, snaps: list[tuple[str, LoopMetrics]], opened: bool
) -> Family:
    family = Family(name, kind, help_, ("loop", "kind"))
    for label, m in snaps:
        counts = m.transports_opened if opened else m.transports
        family.values.extend(((label, k), n) for k, n in counts.items())
    return family


# ------------------------------------------------------------------- text format


def _number(value: float) -> str:
    """A sample value or bound as the format writes it (``+Inf``, ``NaN``, ``0.25``, ``3``)."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    pairs = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}" if pairs else ""


def _histogram_lines(family: Family, values: tuple[str, ...], hist: Histogram) -> Iterator[str]:
    names = (*family.labels, "le")
    for bound, count in hist.cumulative():
        yield f"{family.name}_bucket{_labels(names, (*values, _number(bound)))} {count}"
    yield f"{family.name}_count{_labels(family.labels, values)} {hist.count}"
    yield f"{family.name}_sum{_labels(family.labels, values)} {_number(hist.sum)}"


def exposition(loops: LoopSource = None) -> str:
    """The Prometheus text exposition (format 0.0.4, content type `CONTENT_TYPE`) of the
    open loops of `loops`: HELP and TYPE lines for every family (also with no loop), one
    series per loop labelled ``loop``.

    Safe from any thread, also while a loop is blocked in a callback. Raises TypeError when
    `loops` is not a loop source."""
    lines = []
    for family in families(loops):
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for values, value in family.values:
            if family.kind == "histogram":
                lines.extend(_histogram_lines(family, values, value))
            else:
                lines.append(f"{family.name}{_labels(family.labels, values)} {_number(value)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------- prometheus_client


class FerroloopCollector:
    """A ``prometheus_client`` collector of ferroloop loops' metrics (the families of
    `exposition`, as the library's metric family classes)::

        prometheus_client.REGISTRY.register(FerroloopCollector(registry_or_loops))

    `loops` is a loop source (see the module documentation); a callable is called at every
    collection. Raises ImportError, naming the package, when ``prometheus_client`` is not
    installed."""

    def __init__(self, loops: LoopSource = None) -> None:
        try:
            from prometheus_client import core
        except ImportError as exc:
            raise ImportError(
                "ferroloop.prometheus.FerroloopCollector needs the prometheus_client library: "
                "pip install prometheus-client"
            ) from exc
        self._core = core
        self._loops = loops

    def describe(self) -> Iterator[Any]:
        """The families with no samples (their names, for the registry's duplicate check),
        without touching a loop."""
        return self._convert(_families([]))

    def collect(self) -> Iterator[Any]:
        """The metric families, from a fresh snapshot of each loop."""
        return self._convert(families(self._loops))

    def _convert(self, fams: list[Family]) -> Iterator[Any]:
        core = self._core
        classes = {
            "counter": core.CounterMetricFamily,
            "gauge": core.GaugeMetricFamily,
            "histogram": core.HistogramMetricFamily,
        }
        for family in fams:
            metric = classes[family.kind](family.name, family.help, labels=family.labels)
            for values, value in family.values:
                if family.kind == "histogram":
                    buckets = [(_number(b), n) for b, n in value.cumulative()]
                    metric.add_metric(list(values), buckets, value.sum)
                else:
                    metric.add_metric(list(values), value)
            yield metric
