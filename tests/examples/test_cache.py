"""examples/cache.py against a real Redis, on both loops."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

aioredis = pytest.importorskip("redis.asyncio")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import cache  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def test_concurrent_misses_compute_once_across_instances(loop, redis_url):
    async def main():
        clients = [aioredis.from_url(redis_url) for _ in range(2)]  # two "processes"
        prefix = f"t{uuid.uuid4().hex}:"
        caches = [cache.Cache(c, prefix=prefix) for c in clients]
        calls = 0

        async def compute():
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.1)
            return {"answer": 42, "list": [1, 2]}

        results = await asyncio.gather(
            *(caches[i % 2].get_or_set("k", compute, ttl=5) for i in range(60))
        )
        for c in clients:
            await c.aclose()
        return calls, results

    calls, results = loop.run_until_complete(main())
    assert calls == 1
    assert results == [{"answer": 42, "list": [1, 2]}] * 60


def test_expiry_recomputes(loop, redis_url):
    async def main():
        client = aioredis.from_url(redis_url)
        c = cache.Cache(client, prefix=f"t{uuid.uuid4().hex}:")
        values = iter(range(100))

        async def compute():
            return next(values)

        first = await c.get_or_set("k", compute, ttl=0.2)
        cached = await c.get_or_set("k", compute, ttl=0.2)
        await asyncio.sleep(0.35)
        assert await c.get("k") is None  # expired in Redis
        again = await c.get_or_set("k", compute, ttl=0.2)
        await client.aclose()
        return first, cached, again

    assert loop.run_until_complete(main()) == (0, 0, 1)


def test_runs_as_a_program_on_ferroloop(redis_url):
    out = subprocess.run(
        [sys.executable, "-m", "ferroloop", cache.__file__, redis_url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "20 results, 1 computation(s)" in out.stdout and "ferroloop" in out.stdout
