"""Loop subclasses: overriding a method must win over ferroloop's internal shortcuts (on
3.11 ferroloop caches a bound `call_soon` on the instance for the C Task's sake, but only
when the class does not override it)."""

from __future__ import annotations

import asyncio


def loop_class(loop_kind: str) -> type:
    if loop_kind == "asyncio":
        return asyncio.SelectorEventLoop
    import ferroloop

    return ferroloop.Loop


def test_overridden_call_soon_is_used_by_tasks(loop_kind):
    calls = []

    class Counting(loop_class(loop_kind)):  # type: ignore[misc]
        def call_soon(self, callback, *args, context=None):
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    loop = Counting()
    try:

        async def main() -> int:
            await asyncio.sleep(0)
            return 7

        assert loop.run_until_complete(main()) == 7
        assert len(calls) >= 2  # the task's first step and its wake-up after sleep(0)
    finally:
        loop.close()


def test_instance_assignment_of_call_soon_wins(loop):
    seen = []
    original = loop.call_soon

    def spy(callback, *args, context=None):
        seen.append(callback)
        return original(callback, *args, context=context)

    loop.call_soon = spy

    async def main() -> None:
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert seen
