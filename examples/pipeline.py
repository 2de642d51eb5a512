"""Queue pipeline: producers -> processors -> consumers over bounded asyncio queues.

Producers push items into a bounded ``raw`` queue, processors transform them and
push the results into a bounded ``processed`` queue, consumers collect them.  The
bounded queues give back-pressure: a fast producer is suspended in ``put()`` as
soon as the stage after it falls behind.

Shutdown is the classic asyncio recipe: wait for the producers to finish, then
``join()`` each queue in stage order (every ``get()`` is matched by a
``task_done()``), at which point all workers are idle, blocked in ``get()``, and
are cancelled.

Run it on stock asyncio or on ferroloop::

    python examples/pipeline.py
    python -m ferroloop examples/pipeline.py
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Processor = Callable[[int], Awaitable[int]]


class InstrumentedQueue(asyncio.Queue[Any]):
    """An ``asyncio.Queue`` that records the largest size it has been seen at.

    Every item enters through ``put_nowait()`` and leaves through ``get_nowait()``
    (``put()`` and ``get()`` call them once they no longer have to wait), so
    sampling there observes every put and get.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.max_seen = 0
        self.puts = 0
        self.gets = 0

    def _sample(self) -> None:
        self.max_seen = max(self.max_seen, self.qsize())

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        self.puts += 1
        self._sample()

    def get_nowait(self) -> Any:
        self._sample()
        item = super().get_nowait()
        self.gets += 1
        return item


@dataclass
class PipelineStats:
    produced: int = 0
    processed: int = 0
    failed: int = 0
    consumed: int = 0
    max_qsize: dict[str, int] = field(default_factory=dict)
    per_worker: dict[str, int] = field(default_factory=dict)
    workers_cancelled: int = 0
    elapsed: float = 0.0


async def square(item: int) -> int:
    """Default processing step: yield to the loop once, then compute."""
    await asyncio.sleep(0)
    return item * item


class Pipeline:
    """A three-stage pipeline with ``n_processors`` and ``n_consumers`` workers."""

    def __init__(
        self,
        *,
        n_processors: int = 4,
        n_consumers: int = 2,
        maxsize: int = 16,
        process: Processor = square,
        queue_factory: Callable[[int], InstrumentedQueue] = InstrumentedQueue,
    ) -> None:
        if maxsize <= 0:
            raise ValueError("the pipeline's queues must be bounded (maxsize > 0)")
        self.n_processors = n_processors
        self.n_consumers = n_consumers
        self.maxsize = maxsize
        self.process = process
        self.raw = queue_factory(maxsize)
        self.processed = queue_factory(maxsize)
        self.results: list[tuple[int, int]] = []
        self.workers: list[asyncio.Task[None]] = []
        self.stats = PipelineStats()

    async def _producer(self, name: str, items: Sequence[int]) -> None:
        for item in items:
            await self.raw.put(item)
            self.stats.produced += 1
        self.stats.per_worker[name] = len(items)

    async def _processor(self, name: str) -> None:
        self.stats.per_worker[name] = 0
        while True:
            item = await self.raw.get()
            try:
                result = await self.process(item)
            except Exception:
                self.stats.failed += 1
            else:
                await self.processed.put((item, result))
                self.stats.processed += 1
                self.stats.per_worker[name] += 1
            finally:
                self.raw.task_done()

    async def _consumer(self, name: str) -> None:
        self.stats.per_worker[name] = 0
        while True:
            pair = await self.processed.get()
            try:
                self.results.append(pair)
                self.stats.consumed += 1
                self.stats.per_worker[name] += 1
            finally:
                self.processed.task_done()

    async def run(self, sources: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """Feed each source through its own producer; return the (item, result) pairs."""
        start = time.perf_counter()
        self.workers = [
            asyncio.create_task(self._processor(f"processor-{i}"), name=f"processor-{i}")
            for i in range(self.n_processors)
        ] + [
            asyncio.create_task(self._consumer(f"consumer-{i}"), name=f"consumer-{i}")
            for i in range(self.n_consumers)
        ]
        try:
            await asyncio.gather(
                *(self._producer(f"producer-{i}", src) for i, src in enumerate(sources))
            )
            await self.raw.join()
            await self.processed.join()
        finally:
            # Everything is done: the workers sit idle in get().  Cancel them and
            # wait until they have really finished.
            for task in self.workers:
                task.cancel()
            await asyncio.gather(*self.workers, return_exceptions=True)
        self.stats.workers_cancelled = sum(task.cancelled() for task in self.workers)
        self.stats.max_qsize = {"raw": self.raw.max_seen, "processed": self.processed.max_seen}
        self.stats.elapsed = time.perf_counter() - start
        return self.results


def split(items: Sequence[int], parts: int) -> list[Sequence[int]]:
    """Deal ``items`` round-robin into ``parts`` sources."""
    return [items[i::parts] for i in range(parts)]


async def main(n_items: int = 10_000, n_producers: int = 3) -> PipelineStats:
    loop = asyncio.get_running_loop()
    pipeline = Pipeline(n_processors=4, n_consumers=2, maxsize=16)
    results = await pipeline.run(split(range(n_items), n_producers))
    stats = pipeline.stats

    ok = sorted(item for item, _ in results) == list(range(n_items)) and all(
        result == item * item for item, result in results
    )
    print(f"loop: {type(loop).__module__}.{type(loop).__qualname__}")
    print(
        f"stages: {n_producers} producers -> {pipeline.n_processors} processors"
        f" -> {pipeline.n_consumers} consumers, queue maxsize {pipeline.maxsize}"
    )
    print(
        f"produced {stats.produced}, processed {stats.processed}, "
        f"failed {stats.failed}, consumed {stats.consumed}"
    )
    print(
        "max queue sizes: "
        + ", ".join(f"{name} {size}/{pipeline.maxsize}" for name, size in stats.max_qsize.items())
    )
    print(f"workers cancelled: {stats.workers_cancelled}/{len(pipeline.workers)}")
    print(f"elapsed: {stats.elapsed:.3f} s")
    print(f"result: {'OK' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit(1)
    return stats


if __name__ == "__main__":
    asyncio.run(main())
