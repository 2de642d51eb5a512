"""What the metrics exporters (`ferroloop.prometheus`, `ferroloop.opentelemetry`) share: how
the loops to export are given and named.

A *loop source* is one of:

- None: every open ferroloop loop of the process (`ferroloop.metrics.loops`), the default;
- a loop;
- an iterable of loops (each named by `loop_label`);
- a mapping ``{name: loop}`` (the names become the ``loop`` label / ``ferroloop.loop.id``);
- a callable taking no argument and returning any of the above, called at every scrape or
  collection (so loops made later are found).

Closed loops are left out: a closed loop's series end.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._loop import Loop
    from .metrics import LoopMetrics

    LoopCollection = Loop | Iterable[Loop] | Mapping[str, Loop]
    #: What the exporters accept: loops, or a callable returning them at each scrape.
    LoopSource = LoopCollection | Callable[[], LoopCollection] | None

__all__ = ["loop_label", "resolve", "snapshots"]

_labels: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_labels_lock = threading.Lock()
_numbers = itertools.count(1)


def loop_label(loop: Loop) -> str:
    """The label a loop is exported under when no name was given: ``"1"``, ``"2"``… in the
    order the exporters first saw the loops. Stable for the loop's life."""
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
    if source is None:
        from .metrics import loops

        source = loops
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
