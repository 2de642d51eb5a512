"""examples/pipeline.py: a producers -> processors -> consumers pipeline on both loops."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _support import example_command, load_example

ROOT = Path(__file__).resolve().parents[2]


pipeline = load_example("pipeline")


class ProbeQueue(pipeline.InstrumentedQueue):
    """Records qsize() at every put and every get, independently of max_seen."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.samples: list[int] = []

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        self.samples.append(self.qsize())

    def get_nowait(self) -> Any:
        self.samples.append(self.qsize())
        return super().get_nowait()


def _collect_loop_errors(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    return errors


N_ITEMS = 10_000
MAXSIZE = 8


@pytest.mark.timeout(10)
def test_ten_thousand_items_exactly_once(loop: asyncio.AbstractEventLoop) -> None:
    errors = _collect_loop_errors(loop)
    items = list(range(N_ITEMS))
    sources = pipeline.split(items, 5)

    async def scenario() -> tuple[Any, list[tuple[int, int]], set[asyncio.Task[Any]]]:
        pipe = pipeline.Pipeline(
            n_processors=7, n_consumers=3, maxsize=MAXSIZE, queue_factory=ProbeQueue
        )
        results = await pipe.run(sources)
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        return pipe, results, leftover

    pipe, results, leftover = loop.run_until_complete(scenario())

    # None lost, none duplicated: exact multiset equality, and every result right.
    assert len(results) == N_ITEMS
    assert Counter(item for item, _ in results) == Counter(items)
    assert all(result == item * item for item, result in results)

    # Per-stage counts.
    stats = pipe.stats
    assert (stats.produced, stats.processed, stats.failed, stats.consumed) == (
        N_ITEMS,
        N_ITEMS,
        0,
        N_ITEMS,
    )
    assert sum(stats.per_worker[f"producer-{i}"] for i in range(5)) == N_ITEMS
    assert sum(stats.per_worker[f"processor-{i}"] for i in range(7)) == N_ITEMS
    assert sum(stats.per_worker[f"consumer-{i}"] for i in range(3)) == N_ITEMS

    # Bounded queues: sampled at every put and get, never above maxsize.
    for name, queue in (("raw", pipe.raw), ("processed", pipe.processed)):
        assert queue.puts == queue.gets == N_ITEMS, name
        assert len(queue.samples) == 2 * N_ITEMS, name
        assert max(queue.samples) <= MAXSIZE, name
        assert stats.max_qsize[name] == max(queue.samples), name
        assert queue.qsize() == 0, name
    # Back-pressure really happened: the producers filled the first queue.
    assert stats.max_qsize["raw"] == MAXSIZE

    # All workers cancelled cleanly, nothing left running, nothing reported.
    assert len(pipe.workers) == 10
    assert all(task.done() and task.cancelled() for task in pipe.workers)
    assert stats.workers_cancelled == 10
    assert leftover == set()
    assert errors == []


@pytest.mark.timeout(10)
def test_failing_items_are_counted_and_do_not_block_join(
    loop: asyncio.AbstractEventLoop,
) -> None:
    errors = _collect_loop_errors(loop)

    async def picky(item: int) -> int:
        await asyncio.sleep(0)
        if item % 7 == 0:
            raise ValueError(item)
        return -item

    async def scenario() -> tuple[Any, list[tuple[int, int]]]:
        pipe = pipeline.Pipeline(n_processors=3, n_consumers=2, maxsize=4, process=picky)
        return pipe, await pipe.run(pipeline.split(range(1_000), 2))

    pipe, results = loop.run_until_complete(scenario())
    expected = [i for i in range(1_000) if i % 7 != 0]
    assert Counter(item for item, _ in results) == Counter(expected)
    assert all(result == -item for item, result in results)
    assert pipe.stats.failed == 1_000 - len(expected)
    assert pipe.stats.processed == pipe.stats.consumed == len(expected)
    assert pipe.stats.workers_cancelled == 5
    assert errors == []


@pytest.mark.timeout(30)
def test_script_runs(loop_kind: str) -> None:
    cmd = example_command("pipeline", loop_kind)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=25)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    expected_loop = "ferroloop" if loop_kind == "ferroloop" else "asyncio"
    assert f"loop: {expected_loop}." in out
    assert "produced 10000, processed 10000, failed 0, consumed 10000" in out
    assert "raw 16/16" in out
    assert "workers cancelled: 6/6" in out
    assert "result: OK" in out
    assert proc.stderr == ""
