"""Redis-backed task queue (redis-py's asyncio client).

    python -m ferroloop examples/task_queue.py worker redis://127.0.0.1:6379/0 --concurrency 8
    python examples/task_queue.py demo redis://127.0.0.1:6379/0

Handlers are registered with `@queue.task`; `await queue.enqueue(name, *args, **kwargs)` returns
a task id. Workers take ids with BLMOVE (queue -> their own processing list, so a task is
never handed to two workers), run at most `concurrency` tasks at once, and record the result
or the failure in the task's hash; an unknown task name is recorded as such. SIGTERM (or
SIGINT) stops taking new tasks and finishes the ones in flight before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

Handler = Callable[..., Awaitable[Any]]


class TaskQueue:
    def __init__(self, client: aioredis.Redis, name: str = "tq") -> None:
        self.client = client
        self.name = name
        self.handlers: dict[str, Handler] = {}

    def task(self, fn: Handler) -> Handler:
        self.handlers[fn.__name__] = fn
        return fn

    def _key(self, *parts: str) -> str:
        return ":".join((self.name, *parts))

    async def enqueue(self, name: str, *args: Any, **kwargs: Any) -> str:
        task_id = uuid.uuid4().hex
        await self.client.hset(
            self._key("task", task_id),
            mapping={"name": name, "args": json.dumps([args, kwargs]), "status": "queued"},
        )
        await self.client.rpush(self._key("queue"), task_id)
        return task_id

    async def status(self, task_id: str) -> dict[str, str]:
        raw = await self.client.hgetall(self._key("task", task_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def _run(self, task_id: str) -> None:
        key = self._key("task", task_id)
        await self.client.hincrby(key, "runs", 1)
        name, args = await self.client.hmget(key, "name", "args")
        handler = self.handlers.get(name.decode())
        if handler is None:
            await self.client.hset(key, mapping={"status": "unknown", "error": "unknown task"})
            return
        positional, keywords = json.loads(args)
        try:
            result = await handler(*positional, **keywords)
        except Exception as exc:  # recorded, never fatal to the worker
            await self.client.hset(key, mapping={"status": "failed", "error": repr(exc)})
        else:
            await self.client.hset(key, mapping={"status": "done", "result": json.dumps(result)})

    async def work(self, concurrency: int, stop: asyncio.Event) -> dict[str, int]:
        """Run tasks until `stop` is set, then finish those in flight."""
        processing = self._key("processing", str(os.getpid()))
        slots = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[None]] = set()
        stats = {"processed": 0, "max_in_flight": 0}

        async def run(task_id: str) -> None:
            try:
                await self._run(task_id)
                await self.client.lrem(processing, 1, task_id)
                stats["processed"] += 1
            finally:
                slots.release()

        while not stop.is_set():
            await slots.acquire()
            raw = await self.client.blmove(self._key("queue"), processing, 0.1, "LEFT", "RIGHT")
            if raw is None:
                slots.release()
                continue
            task = asyncio.ensure_future(run(raw.decode()))
            running.add(task)
            task.add_done_callback(running.discard)
            stats["max_in_flight"] = max(stats["max_in_flight"], len(running))
        await asyncio.gather(*running)  # graceful: finish what was taken
        await self.client.hset(self._key("workers"), str(os.getpid()), json.dumps(stats))
        return stats


def register(queue: TaskQueue) -> None:
    """The example's handlers."""

    @queue.task
    async def square(x: int, delay: float = 0.0) -> int:
        await asyncio.sleep(delay)
        return x * x

    @queue.task
    async def fail(x: int) -> None:
        raise ValueError(f"bad input {x}")


async def worker(url: str, concurrency: int) -> None:
    client = aioredis.from_url(url)
    queue = TaskQueue(client)
    register(queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"worker {os.getpid()} ready ({type(loop).__module__})", flush=True)
    stats = await queue.work(concurrency, stop)
    print(f"worker {os.getpid()} done: {stats}", flush=True)
    await client.aclose()


async def demo(url: str) -> None:
    client = aioredis.from_url(url)
    queue = TaskQueue(client, name=f"demo{os.getpid()}")
    register(queue)
    ids = [await queue.enqueue("square", i) for i in range(20)]
    stop = asyncio.Event()
    work = asyncio.ensure_future(queue.work(4, stop))
    while any((await queue.status(i))["status"] == "queued" for i in ids):
        await asyncio.sleep(0.01)
    stop.set()
    await work
    results = [json.loads((await queue.status(i))["result"]) for i in ids]
    print(f"{len(results)} tasks done, sum of squares {sum(results)}")
    await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description="Redis task queue")
    ap.add_argument("mode", choices=["worker", "demo"])
    ap.add_argument("url")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    if args.mode == "worker":
        asyncio.run(worker(args.url, args.concurrency))
    else:
        asyncio.run(demo(args.url))


if __name__ == "__main__":
    main()
