"""PostgreSQL through an asyncpg connection pool.

    python -m ferroloop examples/pg_pool.py postgresql://user@127.0.0.1:5432/db

Shows a pool with min/max size and an acquire timeout, a transaction doing a batch insert,
keyset pagination (every row exactly once, however the pages fall), and a query timeout: a
query that outlives its timeout is cancelled on the server and the pool stays healthy.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import asyncpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id    bigserial PRIMARY KEY,
    name  text NOT NULL,
    price numeric(10, 2) NOT NULL
)
"""


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
    return pool


async def insert_batch(pool: asyncpg.Pool, rows: list[tuple[str, float]]) -> None:
    """All rows or none: one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany("INSERT INTO items (name, price) VALUES ($1, $2)", rows)


async def pages(pool: asyncpg.Pool, page_size: int) -> AsyncIterator[list[asyncpg.Record]]:
    """Keyset pagination by id: stable even while rows are added behind the cursor."""
    last = 0
    while True:
        async with pool.acquire() as conn:
            page = await conn.fetch(
                "SELECT id, name, price FROM items WHERE id > $1 ORDER BY id LIMIT $2",
                last, page_size,
            )
        if not page:
            return
        yield page
        last = page[-1]["id"]


async def slow_query(pool: asyncpg.Pool, seconds: float, timeout: float) -> None:
    """Raises TimeoutError when the query outlives `timeout`; asyncpg cancels it."""
    async with pool.acquire() as conn:
        await conn.execute(f"SELECT pg_sleep({seconds:f})", timeout=timeout)


async def main(dsn: str) -> None:
    pool = await create_pool(dsn)
    await insert_batch(pool, [(f"item{i}", i * 1.5) for i in range(100)])
    total = sum([len(page) async for page in pages(pool, 30)])
    try:
        await slow_query(pool, 5, timeout=0.2)
    except TimeoutError:
        timed_out = True
    else:
        timed_out = False
    loop = type(asyncio.get_running_loop()).__module__
    print(f"{total} rows paged, slow query timed out: {timed_out} ({loop})")
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
