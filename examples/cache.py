"""Redis-backed cache: `get_or_set` with expiry and JSON values, and stampede protection.

    python -m ferroloop examples/cache.py redis://127.0.0.1:6379/0

Concurrent misses for one key compute the value once: within a process they queue on a
per-key asyncio lock; across processes the first to take a short Redis lock
(`SET lock NX PX`) computes while the others poll for the value.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class Cache:
    def __init__(
        self, client: aioredis.Redis, prefix: str = "cache:", lock_ttl: float = 5.0
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.lock_ttl = lock_ttl
        self._local: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def get(self, key: str) -> Any | None:
        raw = await self.client.get(self.prefix + key)
        return None if raw is None else json.loads(raw)

    async def get_or_set(
        self, key: str, compute: Callable[[], Awaitable[Any]], ttl: float
    ) -> Any:
        value = await self.get(key)
        if value is not None:
            return value
        async with self._local[key]:  # one computation per process
            value = await self.get(key)
            if value is not None:
                return value
            return await self._compute_once(key, compute, ttl)

    async def _compute_once(
        self, key: str, compute: Callable[[], Awaitable[Any]], ttl: float
    ) -> Any:
        lock, token = f"{self.prefix}lock:{key}", uuid.uuid4().hex
        while True:
            if await self.client.set(lock, token, nx=True, px=int(self.lock_ttl * 1000)):
                try:
                    # The previous holder may have stored the value just before releasing.
                    value = await self.get(key)
                    if value is not None:
                        return value
                    value = await compute()
                    await self.client.set(self.prefix + key, json.dumps(value), px=int(ttl * 1000))
                    return value
                finally:
                    await self.client.eval(_RELEASE, 1, lock, token)
            # Another process computes it: wait for the value (or for its lock to go).
            await asyncio.sleep(0.01)
            value = await self.get(key)
            if value is not None:
                return value


async def main(url: str) -> None:
    client = aioredis.from_url(url)
    cache = Cache(client, prefix="demo:")
    calls = 0

    async def slow_square() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return {"square": 12 * 12}

    results = await asyncio.gather(*(cache.get_or_set("n12", slow_square, 1.0) for _ in range(20)))
    loop = type(asyncio.get_running_loop()).__module__
    print(f"{len(results)} results, {calls} computation(s), value {results[0]} ({loop})")
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
