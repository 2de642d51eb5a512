"""examples/pg_pool.py against a real PostgreSQL, on both loops."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

asyncpg = pytest.importorskip("asyncpg")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import pg_pool  # noqa: E402

pytestmark = pytest.mark.timeout(90)


async def fresh_pool(dsn: str, **kw) -> asyncpg.Pool:
    pool = await pg_pool.create_pool(dsn, **kw)
    await pool.execute("TRUNCATE items RESTART IDENTITY")
    return pool


def test_concurrent_queries_pagination_and_batch(loop, postgres_dsn):
    async def main():
        pool = await fresh_pool(postgres_dsn, min_size=2, max_size=10)
        await pg_pool.insert_batch(pool, [(f"item{i}", i / 4) for i in range(1000)])
        # 200 concurrent queries through a pool of 10
        answers = await asyncio.gather(
            *(pool.fetchval("SELECT count(*) + $1::bigint FROM items", i) for i in range(200))
        )
        assert answers == [1000 + i for i in range(200)]
        assert pool.get_size() <= 10
        ids = [row["id"] async for page in pg_pool.pages(pool, 37) for row in page]
        await pool.close()
        return ids

    ids = loop.run_until_complete(main())
    assert ids == list(range(1, 1001))  # every row exactly once, in order


def test_failed_batch_inserts_nothing(loop, postgres_dsn):
    async def main():
        pool = await fresh_pool(postgres_dsn)
        with pytest.raises(asyncpg.NotNullViolationError):
            await pg_pool.insert_batch(pool, [("a", 1.0), ("b", None)])
        count = await pool.fetchval("SELECT count(*) FROM items")
        await pool.close()
        return count

    assert loop.run_until_complete(main()) == 0


def test_query_timeout_cancels_and_pool_stays_healthy(loop, postgres_dsn):
    async def main():
        pool = await fresh_pool(postgres_dsn, min_size=1, max_size=2)
        with pytest.raises(asyncio.TimeoutError):
            await pg_pool.slow_query(pool, 10, timeout=0.3)
        for _ in range(50):  # the server-side query is cancelled, not left running
            sleeping = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
            )
            if sleeping == 0:
                break
            await asyncio.sleep(0.05)
        healthy = await asyncio.gather(*(pool.fetchval("SELECT $1::int", i) for i in range(20)))
        # acquire timeout: with both connections held, a third acquire gives up
        a, b = await pool.acquire(), await pool.acquire()
        with pytest.raises(asyncio.TimeoutError):
            await pool.acquire(timeout=0.2)
        await pool.release(a)
        await pool.release(b)
        await pool.close()
        return sleeping, healthy

    sleeping, healthy = loop.run_until_complete(main())
    assert sleeping == 0
    assert healthy == list(range(20))


def test_runs_as_a_program_on_ferroloop(postgres_dsn):
    out = subprocess.run(
        [sys.executable, "-m", "ferroloop", pg_pool.__file__, postgres_dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "slow query timed out: True (ferroloop" in out.stdout
