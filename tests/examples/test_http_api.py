"""examples/http_api.py: FastAPI on uvicorn, started as a program (`python -m ferroloop
examples/http_api.py` and, as the reference, `python examples/http_api.py`), driven by real
HTTP requests over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http_api.py"
COMMANDS = {
    "ferroloop": [sys.executable, "-m", "ferroloop", str(EXAMPLE)],
    "asyncio": [sys.executable, str(EXAMPLE)],
}
EXPECTED_LOOP = {"ferroloop": "ferroloop._loop", "asyncio": "asyncio.unix_events"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, kind: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*COMMANDS[kind], "--port", str(self.port), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/", timeout=1)
                return
            except httpx.TransportError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.proc.kill()
        raise AssertionError("service did not start:\n" + self.proc.communicate()[0].decode())

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        out = self.proc.communicate(timeout=30)[0].decode(errors="replace")
        assert self.proc.returncode == 0, out
        return out


@pytest.fixture(params=list(COMMANDS))
def service(request):
    svc = Service(request.param)
    svc.kind = request.param
    yield svc
    if svc.proc.poll() is None:
        svc.stop()


def test_endpoints_lifespan_and_loop(service):
    hello = httpx.get(service.url + "/").json()
    assert hello["message"] == "hello"
    assert hello["loop"] == EXPECTED_LOOP[service.kind]
    assert hello["pool"] is True  # the startup hook ran
    assert httpx.get(service.url + "/data/7").json()["value"] == 49
    assert httpx.get(service.url + "/data/-1").status_code == 404
    output = service.stop()
    assert "startup complete" in output and "shutdown complete" in output


def test_parallel_takes_the_slowest_not_the_sum(service):
    started = time.perf_counter()
    body = httpx.get(service.url + "/parallel", timeout=10).json()
    elapsed = time.perf_counter() - started
    assert [r["backend"] for r in body["results"]] == ["b0", "b1", "b2"]
    assert 0.29 <= body["elapsed"] < 0.45  # slowest backend is 0.3 s; the sum would be 0.6 s
    assert elapsed < 1.0


def test_load_run_zero_errors_and_pool_bound(service):
    async def load() -> list[int]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=20) as client:
            responses = await asyncio.gather(*(client.get(f"/data/{i}") for i in range(500)))
        for i, r in enumerate(responses):
            assert r.json()["value"] == i * i
        return [r.status_code for r in responses]

    statuses = asyncio.run(load())
    assert statuses == [200] * 500
    stats = httpx.get(service.url + "/stats").json()
    assert stats["in_use"] == 0
    assert 1 <= stats["max_in_use"] <= stats["size"] == 5


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_workers(kind):
    svc = Service(kind, "--workers", "4")
    try:
        seen = set()
        for _ in range(60):
            body = httpx.get(svc.url + "/", headers={"connection": "close"}).json()
            assert body["loop"] == EXPECTED_LOOP[kind]
            assert body["pid"] != svc.proc.pid  # served by a worker process
            seen.add(body["pid"])
        assert seen
    finally:
        out = svc.stop()
    assert out.count("shutdown complete") == 4  # every worker ran its shutdown hook
    assert os.path.exists(EXAMPLE)
