"""ferroloop: a drop-in asyncio event loop for CPython, written in Rust.

Use it like uvloop::

    ferroloop.run(main())                                   # like asyncio.run
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)  # Python 3.12+
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as r: r.run(main())
    ferroloop.install()                                      # policy for asyncio.run()
    python -m ferroloop app.py                               # run a program unchanged
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._ferroloop import Handle, TimerHandle
from ._loop import Loop

__all__ = ["EventLoopPolicy", "Handle", "Loop", "TimerHandle", "install", "new_event_loop", "run"]
__version__ = "0.1.0"

_T = TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, creating ferroloop loops.

    ``get_event_loop``/``set_event_loop`` behave exactly as in asyncio's default
    policy (one loop per thread, created lazily in the main thread)."""

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()

    def __repr__(self) -> str:
        return "<ferroloop.EventLoopPolicy>"


def install() -> None:
    """Make asyncio create ferroloop loops (``asyncio.run``, ``asyncio.new_event_loop``…)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new ferroloop loop: the same contract as ``asyncio.run``."""
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
