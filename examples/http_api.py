"""HTTP API service: FastAPI served by uvicorn, on whichever event loop runs it.

    python -m ferroloop examples/http_api.py --port 8000     # on ferroloop
    python examples/http_api.py --port 8000                  # on stock asyncio
    python -m ferroloop examples/http_api.py --workers 4     # multi-process

Endpoints:
    GET /               hello, and which event loop served it
    GET /data/{id}      borrows a connection from an async pool bounded by a semaphore
    GET /parallel       three concurrent backend calls: total time ~ the slowest one
    GET /stats          the pool's counters (borrowed now, most ever borrowed at once)

The "backend" is simulated with sleeps, so the example needs nothing but FastAPI and uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException

POOL_SIZE = 5
BACKEND_DELAYS = (0.10, 0.20, 0.30)


@dataclass
class Connection:
    ident: int
    queries: int = 0

    async def query(self, item_id: int) -> dict[str, int]:
        await asyncio.sleep(0.01)  # a round trip to the backend
        self.queries += 1
        return {"item_id": item_id, "value": item_id * item_id, "connection": self.ident}


@dataclass
class Pool:
    """A fixed set of connections; the semaphore bounds how many are borrowed at once."""

    size: int
    free: list[Connection] = field(default_factory=list)
    in_use: int = 0
    max_in_use: int = 0
    opened: bool = False

    async def open(self) -> None:
        self.free = [Connection(i) for i in range(self.size)]
        self._slots = asyncio.Semaphore(self.size)
        self.opened = True

    async def close(self) -> None:
        self.free.clear()
        self.opened = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self._slots:
            conn = self.free.pop()
            self.in_use += 1
            self.max_in_use = max(self.max_in_use, self.in_use)
            try:
                yield conn
            finally:
                self.in_use -= 1
                self.free.append(conn)


pool = Pool(POOL_SIZE)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await pool.open()
    print(f"startup complete (pid {os.getpid()})", flush=True)
    yield
    await pool.close()
    print(f"shutdown complete (pid {os.getpid()})", flush=True)


app = FastAPI(lifespan=lifespan)


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__


@app.get("/")
async def hello() -> dict[str, object]:
    return {"message": "hello", "loop": loop_name(), "pid": os.getpid(), "pool": pool.opened}


@app.get("/data/{item_id}")
async def data(item_id: int) -> dict[str, int]:
    if item_id < 0:
        raise HTTPException(status_code=404, detail="no such item")
    async with pool.connection() as conn:
        return await conn.query(item_id)


async def backend_call(name: str, delay: float) -> dict[str, object]:
    await asyncio.sleep(delay)
    return {"backend": name, "delay": delay}


@app.get("/parallel")
async def parallel() -> dict[str, object]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(backend_call(f"b{i}", delay) for i, delay in enumerate(BACKEND_DELAYS))
    )
    return {"results": results, "elapsed": time.perf_counter() - started}


@app.get("/stats")
async def stats() -> dict[str, int]:
    return {"size": pool.size, "in_use": pool.in_use, "max_in_use": pool.max_in_use}


def default_loop_setting() -> str:
    """`ferroloop:new_event_loop` when started with `python -m ferroloop` (its policy is
    installed), else uvicorn's plain asyncio loop. Passed explicitly so that worker
    processes, which start fresh, use the same loop."""
    try:
        import ferroloop
    except ImportError:
        return "asyncio"
    if isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy):
        return "ferroloop:new_event_loop"
    return "asyncio"


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="FastAPI service on uvicorn")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--loop", default=default_loop_setting())
    args = ap.parse_args()
    uvicorn.run(
        "http_api:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop=args.loop,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
