"""Shared fixtures.

Every loop test runs twice: on stock asyncio (the reference: CPython's
``base_events.py`` is the specification, so the ``asyncio`` variant must always
pass) and on ferroloop.  Select one side with ``-k asyncio`` / ``-k ferroloop``.
Tests that only make sense for ferroloop (CLI, policy, missing features) carry
the ``ferroloop_only`` marker, so ``-k ferroloop`` selects them too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

LOOP_KINDS = ("asyncio", "ferroloop")

try:
    import ferroloop as _ferroloop
except Exception as exc:  # noqa: BLE001 - any import failure is reported by the tests
    _ferroloop = None
    _FERROLOOP_IMPORT_ERROR: BaseException | None = exc
else:
    _FERROLOOP_IMPORT_ERROR = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ferroloop_only: tests of ferroloop's own API (no asyncio reference run)",
    )


def _require_ferroloop() -> ModuleType:
    if _ferroloop is None:
        pytest.fail(
            f"ferroloop cannot be imported: {_FERROLOOP_IMPORT_ERROR!r} "
            "(build it with `bash scripts/setup.sh`)",
            pytrace=False,
        )
    return _ferroloop


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "asyncio":
        # Explicit class: immune to an event loop policy left installed by a test.
        return asyncio.SelectorEventLoop()
    return _require_ferroloop().new_event_loop()


@pytest.fixture
def ferroloop() -> ModuleType:
    """The ferroloop package (the test errors out clearly if it does not import)."""
    return _require_ferroloop()


@pytest.fixture(params=LOOP_KINDS, ids=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def loop_factory(loop_kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop constructor of the parametrized kind; the test closes what it creates."""
    if loop_kind == "asyncio":
        return asyncio.SelectorEventLoop
    return _require_ferroloop().new_event_loop


@pytest.fixture
def make_loop(loop_kind: str) -> Iterator[Callable[..., asyncio.AbstractEventLoop]]:
    """Factory for extra loops (same kind as ``loop`` unless given); all closed at teardown."""
    loops: list[asyncio.AbstractEventLoop] = []

    def make(kind: str | None = None) -> asyncio.AbstractEventLoop:
        new = _new_loop(kind or loop_kind)
        loops.append(new)
        return new

    yield make
    for lp in loops:
        if not lp.is_running():
            lp.close()
    # A test that failed half-way through a run must not poison the next ones.
    asyncio.events._set_running_loop(None)


@pytest.fixture
def loop(
    make_loop: Callable[..., asyncio.AbstractEventLoop],
) -> asyncio.AbstractEventLoop:
    """A fresh event loop of the parametrized kind, closed at teardown."""
    return make_loop()


@pytest.fixture
def handle_types(loop_kind: str) -> tuple[type, type]:
    """(Handle, TimerHandle) classes of the loop under test."""
    if loop_kind == "asyncio":
        return asyncio.Handle, asyncio.TimerHandle
    fl = _require_ferroloop()
    return fl.Handle, fl.TimerHandle


def _rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def rss_bytes() -> Callable[[], int]:
    """A function returning this process's RSS in bytes (for memory-growth tests)."""
    return _rss_bytes
