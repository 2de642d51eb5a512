"""examples/task_queue.py: 1,000 tasks across two worker processes against a real Redis, with
workers on ferroloop (`python -m ferroloop`) and, as the reference, on stock asyncio."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

aioredis = pytest.importorskip("redis.asyncio")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import task_queue  # noqa: E402

pytestmark = pytest.mark.timeout(120)
CONCURRENCY = 6
RUNNERS = {
    "ferroloop": [sys.executable, "-m", "ferroloop", task_queue.__file__],
    "asyncio": [sys.executable, task_queue.__file__],
}


def start_workers(kind: str, url: str, n: int = 2) -> list[subprocess.Popen]:
    workers = [
        subprocess.Popen(
            [*RUNNERS[kind], "worker", url, "--concurrency", str(CONCURRENCY)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(n)
    ]
    for w in workers:
        line = w.stdout.readline().decode()
        assert "ready" in line and (kind in line or kind == "asyncio"), line
    return workers


def stop_workers(workers: list[subprocess.Popen]) -> list[str]:
    for w in workers:
        w.send_signal(signal.SIGTERM)
    outputs = []
    for w in workers:
        out = w.communicate(timeout=30)[0].decode()
        assert w.returncode == 0, out
        outputs.append(out)
    return outputs


async def fresh(url: str) -> aioredis.Redis:
    client = aioredis.from_url(url)
    await client.flushdb()
    return client


@pytest.mark.parametrize("kind", list(RUNNERS))
def test_thousand_tasks_two_workers(loop, redis_url, kind):
    async def enqueue():
        client = await fresh(redis_url)
        queue = task_queue.TaskQueue(client)
        ids = {}
        for i in range(1000):
            if i % 50 == 0:
                ids[await queue.enqueue("fail", i)] = ("failed", i)
            elif i % 97 == 0:
                ids[await queue.enqueue("no_such_task", i)] = ("unknown", i)
            else:
                ids[await queue.enqueue("square", i, delay=0.001)] = ("done", i)
        return client, queue, ids

    client, queue, ids = loop.run_until_complete(enqueue())
    workers = start_workers(kind, redis_url)
    try:

        async def wait_all() -> None:
            for _ in range(3000):
                if await client.llen("tq:queue") == 0:
                    statuses = [(await queue.status(i))["status"] for i in ids]
                    if "queued" not in statuses:
                        return
                await asyncio.sleep(0.01)
            raise AssertionError("tasks did not finish")

        loop.run_until_complete(wait_all())
    finally:
        outputs = stop_workers(workers)

    async def check():
        stats = {k: json.loads(v) for k, v in (await client.hgetall("tq:workers")).items()}
        records = {i: await queue.status(i) for i in ids}
        leftover = [k async for k in client.scan_iter("tq:processing:*")]
        await client.aclose()
        return stats, records, leftover

    stats, records, leftover = loop.run_until_complete(check())
    for task_id, (status, x) in ids.items():
        rec = records[task_id]
        assert rec["runs"] == "1", rec  # exactly once
        assert rec["status"] == status, rec
        if status == "done":
            assert json.loads(rec["result"]) == x * x
        elif status == "failed":
            assert rec["error"] == repr(ValueError(f"bad input {x}"))
    assert len(stats) == 2 and sum(s["processed"] for s in stats.values()) == 1000
    assert all(1 <= s["max_in_flight"] <= CONCURRENCY for s in stats.values())
    assert leftover == []
    assert all("done" in out for out in outputs)


@pytest.mark.parametrize("kind", list(RUNNERS))
def test_graceful_shutdown_finishes_in_flight(loop, redis_url, kind):
    async def enqueue():
        client = await fresh(redis_url)
        queue = task_queue.TaskQueue(client)
        ids = [await queue.enqueue("square", i, delay=0.5) for i in range(CONCURRENCY)]
        return client, queue, ids

    client, queue, ids = loop.run_until_complete(enqueue())
    workers = start_workers(kind, redis_url, n=1)

    async def wait_running() -> None:
        while await client.llen("tq:queue") > 0:
            await asyncio.sleep(0.01)

    loop.run_until_complete(wait_running())
    stop_workers(workers)  # SIGTERM while all tasks are in flight

    async def statuses():
        result = [await queue.status(i) for i in ids]
        await client.aclose()
        return result

    records = loop.run_until_complete(statuses())
    assert [r["status"] for r in records] == ["done"] * CONCURRENCY
    assert [json.loads(r["result"]) for r in records] == [i * i for i in range(CONCURRENCY)]
