"""Reference cycles through handles and loops are collected (ferroloop's native objects
take part in the cycle collector), also when handles are recycled from the freelist."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest


class Owner:
    def tick(self) -> None:
        pass


def churn(loop) -> None:
    """Create and drop enough handles of both kinds to fill the freelists."""
    handles = [loop.call_later(10, print) for _ in range(3000)]
    handles += [loop.call_soon(print) for _ in range(3000)]
    for h in handles:
        h.cancel()
    del handles
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_handles_are_tracked_after_reuse(loop):
    churn(loop)
    for i in range(2000):
        h = loop.call_soon(print) if i % 2 else loop.call_later(5, print)
        assert gc.is_tracked(h)
        h.cancel()


@pytest.mark.parametrize("kind", ["call_soon", "call_later", "add_reader"])
def test_owner_cycle_through_pending_handle_collected_after_close(loop, kind):
    import socket

    churn(loop)
    a, b = socket.socketpair()
    refs = []
    for _ in range(200):
        owner = Owner()
        if kind == "call_soon":
            owner.handle = loop.call_soon(owner.tick)
        elif kind == "call_later":
            owner.handle = loop.call_later(60, owner.tick)
        else:
            loop.add_reader(a, owner.tick)
            owner.handle = None
        refs.append(weakref.ref(owner))
        del owner
    loop.close()
    a.close()
    b.close()
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_unclosed_loop_referenced_by_its_callbacks_is_collected(loop_kind):
    import asyncio

    if loop_kind == "asyncio":
        lp = asyncio.new_event_loop()
    else:
        import ferroloop

        lp = ferroloop.new_event_loop()
    lp.call_soon(lp.stop)
    lp.call_later(60, lp.stop)
    ref = weakref.ref(lp)
    del lp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert ref() is None


@pytest.mark.timeout(120)
def test_soak_callbacks_and_timers_do_not_grow_memory(loop, rss_bytes):
    """A million callbacks and timers (scheduled, fired, cancelled) leave RSS flat: the
    second half of the run may not grow memory beyond noise."""
    import asyncio

    def step() -> None:
        pass

    async def batch() -> None:
        for _ in range(1000):
            loop.call_soon(step)
            loop.call_later(0, step)
            loop.call_later(30, step).cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def run(rounds: int) -> None:
        for _ in range(rounds):
            await batch()

    loop.run_until_complete(run(150))  # warm up: freelists, heap and queue capacities
    gc.collect()
    before = rss_bytes()
    loop.run_until_complete(run(350))
    gc.collect()
    growth = rss_bytes() - before
    assert growth < 2 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"
