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
import sys
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


# Policies are deprecated from 3.14 (to be removed in 3.16): the public names warn, the private
# ones asyncio itself uses do not. ferroloop.run() and uvicorn's loop setting take a loop
# factory and use no policy; only install() and `python -m ferroloop` need one, to reach
# programs that call asyncio.run() without a loop_factory. (3.14 code, written from its
# documentation and source; not run here: no 3.14 interpreter on this machine.)
if sys.version_info >= (3, 14):
    from asyncio.events import _set_event_loop_policy as _set_policy
    from asyncio.unix_events import _DefaultEventLoopPolicy as _DefaultPolicy
else:
    _set_policy = asyncio.set_event_loop_policy
    _DefaultPolicy = asyncio.DefaultEventLoopPolicy


class EventLoopPolicy(_DefaultPolicy):  # type: ignore[misc,valid-type]
    """asyncio's default policy, creating ferroloop loops.

    ``get_event_loop``/``set_event_loop`` behave exactly as in asyncio's default
    policy (one loop per thread, created lazily in the main thread)."""

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()

    def __repr__(self) -> str:
        return "<ferroloop.EventLoopPolicy>"


def install() -> None:
    """Make asyncio create ferroloop loops (``asyncio.run``, ``asyncio.new_event_loop``…).

    Sets ferroloop's `EventLoopPolicy`. From Python 3.14 policies are deprecated: prefer
    ``asyncio.run(main(), loop_factory=ferroloop.new_event_loop)`` or ``ferroloop.run()``;
    install() warns there as ``asyncio.set_event_loop_policy`` does, and keeps working while
    asyncio has policies."""
    if sys.version_info >= (3, 14):
        import warnings

        warnings.warn(
            "ferroloop.install() sets an event loop policy, and policies are deprecated since "
            "Python 3.14; use asyncio.run(main, loop_factory=ferroloop.new_event_loop) or "
            "ferroloop.run(main)",
            DeprecationWarning,
            stacklevel=2,
        )
    _set_policy(EventLoopPolicy())


def _install_quietly() -> None:
    """install() without the 3.14 deprecation warning: for `python -m ferroloop`, whose user
    asked for ferroloop for a program that may call asyncio.run() without a loop factory."""
    _set_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new ferroloop loop: the same contract as ``asyncio.run``."""
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
