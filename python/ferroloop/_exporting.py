"""What the metrics exporters (`ferroloop.prometheus`, `ferroloop.opentelemetry`) share: how
the loops to export are given and named, and a registry of the loops a program creates
through ``ferroloop.new_event_loop`` (used by ``python -m ferroloop --metrics-port``).

A *loop source* is one of:

- a loop;
- an iterable of loops (each named by `loop_label`);
- a mapping ``{name: loop}`` (the names become the ``loop`` label / ``ferroloop.loop.id``);
- a callable taking no argument and returning any of the above, called at every scrape or
  collection (so loops made later are found).

Closed loops are left out: a closed loop's series end.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._loop import Loop
    from .metrics import LoopMetrics

    LoopCollection = Loop | Iterable[Loop] | Mapping[str, Loop]
    #: What the exporters accept: loops, or a callable returning them at each scrape.
    LoopSource = LoopCollection | Callable[[], LoopCollection]

__all__ = ["LoopRegistry", "loop_label", "snapshots", "track_loops"]

_labels: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_labels_lock = threading.Lock()
_numbers = itertools.count(1)


def loop_label(loop: Loop) -> str:
    """The label a loop is exported under when no name was given: ``"1"``, ``"2"``… in the
    order this process first saw the loops (at creation for tracked loops, else at the first
    export). Stable for the loop's life."""
    with _labels_lock:
        label = _labels.get(loop)
        if label is None:
            label = _labels[loop] = str(next(_numbers))
        return label


def _is_loop(obj: object) -> bool:
    return callable(getattr(obj, "metrics", None)) and callable(getattr(obj, "is_closed", None))


def resolve(source: LoopSource) -> list[tuple[str, Loop]]:
    """``[(label, loop), ...]`` for a loop source (see the module documentation), closed loops
    left out. Raises TypeError for anything else."""
    if not _is_loop(source) and callable(source):
        source = source()
    if _is_loop(source):
        pairs: Iterable[tuple[str, Any]] = [(loop_label(source), source)]  # type: ignore[arg-type]
    elif isinstance(source, Mapping):
        pairs = ((str(name), loop) for name, loop in source.items())
    elif isinstance(source, Iterable):
        pairs = ((loop_label(loop), loop) for loop in source)
    else:
        raise TypeError(
            "expected a ferroloop loop, an iterable or mapping of loops, or a callable "
            f"returning one, not {type(source).__name__}"
        )
    out = []
    for label, loop in pairs:
        if not _is_loop(loop):
            raise TypeError(f"not a ferroloop loop (it has no metrics()): {loop!r}")
        if not loop.is_closed():
            out.append((label, loop))
    return out


def snapshots(source: LoopSource) -> list[tuple[str, LoopMetrics]]:
    """``[(label, loop.metrics()), ...]`` for the open loops of a loop source."""
    return [(label, loop.metrics()) for label, loop in resolve(source)]


class LoopRegistry:
    """A weak set of loops, in creation order: a loop leaves it when it is garbage-collected,
    and closed loops are not exported. Calling the registry returns the open loops (so it is
    itself a loop source). Thread-safe."""

    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[Any, None] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def add(self, loop: Loop) -> None:
        """Registers a loop (and gives it its label)."""
        loop_label(loop)
        with self._lock:
            self._loops[loop] = None

    def __call__(self) -> list[Loop]:
        with self._lock:
            loops = list(self._loops)
        return [loop for loop in loops if not loop.is_closed()]


def track_loops(registry: LoopRegistry, level: str | None = "callbacks") -> None:
    """Makes every loop created through ``ferroloop.new_event_loop`` from now on join
    `registry`: replaces the module attribute ``ferroloop.new_event_loop`` by a wrapper, which
    ferroloop's `EventLoopPolicy`, ``ferroloop.run`` and uvicorn's
    ``--loop ferroloop:new_event_loop`` all look up when they make a loop. A loop made with
    ``ferroloop.Loop()`` directly, or through a reference to the factory taken before this
    call, is not tracked.

    `level`: the metrics level given to those loops unless ``FERROLOOP_METRICS`` is set
    (None: leave the loops' level alone)."""
    import ferroloop

    factory = ferroloop.new_event_loop
    if getattr(factory, "_ferroloop_registry", None) is registry:
        return

    def new_event_loop() -> Loop:
        loop = factory()
        if level is not None and not os.environ.get("FERROLOOP_METRICS", "").strip():
            loop.set_metrics_level(level)
        registry.add(loop)
        return loop

    new_event_loop.__doc__ = factory.__doc__
    new_event_loop._ferroloop_registry = registry  # type: ignore[attr-defined]
    ferroloop.new_event_loop = new_event_loop
