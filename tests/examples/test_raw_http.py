"""examples/raw_http.py against real clients, on both loops.

The server runs in-process on the test's loop (``loop`` fixture); clients are real and
independent of it: httpx's blocking client and plain blocking sockets, each run in the
loop's default executor, plus an asyncio-streams client on the same loop for pipelining.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from _support import example_command, load_example

pytestmark = pytest.mark.timeout(10)

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
HEADER_TIMEOUT = 0.5


raw_http = load_example("raw_http")


def with_server(
    loop: asyncio.AbstractEventLoop, body: Callable[[int], Awaitable[object]]
) -> object:
    """Start the example server on ``loop``, run ``body(port)``, then stop the server and
    check that every connection handler has finished (no leaked connection)."""

    async def scenario() -> object:
        outer = asyncio.all_tasks()  # this task and the wait_for() wrapping it
        server = await raw_http.start(HOST, 0, HEADER_TIMEOUT)
        port = server.sockets[0].getsockname()[1]
        try:
            result = await body(port)
        finally:
            server.close()
            await server.wait_closed()
        others = asyncio.all_tasks() - outer
        if others:
            _, pending = await asyncio.wait(others, timeout=2)
            assert not pending, f"connection handlers still running: {pending}"
        return result

    return loop.run_until_complete(asyncio.wait_for(scenario(), 8))


def in_thread(func: Callable[..., object], *args: object) -> Awaitable[object]:
    return asyncio.get_running_loop().run_in_executor(None, func, *args)


def raw_exchange(port: int, data: bytes, limit: float = 3.0) -> tuple[bytes, float, bool]:
    """Blocking client: send ``data``, then read until the server closes (or ``limit``).
    Returns (everything received, seconds from the send to EOF, whether EOF was seen)."""
    with socket.create_connection((HOST, port), timeout=limit) as sock:
        start = time.monotonic()
        if data:
            sock.sendall(data)
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
            eof = True
        except TimeoutError:
            eof = False
        except ConnectionResetError:
            eof = True
        return bytes(received), time.monotonic() - start, eof


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], object]]:
    """Split a byte stream into (status, headers, json body) responses by Content-Length."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data!r}"
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        assert len(rest) >= length, "truncated body"
        out.append((int(status), headers, json.loads(rest[:length])))
        data = rest[length:]
    return out


def test_keep_alive_with_httpx(loop: asyncio.AbstractEventLoop) -> None:
    def client(port: int) -> list[httpx.Response]:
        base = f"http://{HOST}:{port}"
        with httpx.Client(base_url=base, timeout=3) as c:
            return [
                c.get("/"),
                c.get("/echo", params={"q": "ferro", "n": ["1", "2"]}),
                c.post("/echo", json={"symbol": "ACME", "qty": 3}),
                c.get("/missing"),
                c.get("/echo", headers={"X-Trace": "abc"}),
            ]

    async def body(port: int) -> list[httpx.Response]:
        return await in_thread(client, port)  # type: ignore[return-value]

    hello, echo, post, missing, last = with_server(loop, body)  # type: ignore[misc]

    assert hello.status_code == 200
    assert hello.headers["content-type"] == "application/json"
    assert hello.headers["connection"] == "keep-alive"
    assert hello.json() == {"message": "hello"}

    assert echo.status_code == 200
    data = echo.json()
    assert data["method"] == "GET" and data["path"] == "/echo"
    assert data["query"] == {"q": ["ferro"], "n": ["1", "2"]}
    assert data["headers"]["host"] == f"{HOST}:{echo.url.port}"
    assert data["request_number"] == 2  # same connection as the first request

    data = post.json()
    assert data["method"] == "POST"
    assert json.loads(data["body"]) == {"symbol": "ACME", "qty": 3}
    assert data["headers"]["content-type"] == "application/json"
    assert data["request_number"] == 3

    assert missing.status_code == 404
    assert missing.json() == {"error": "not found", "path": "/missing"}

    assert last.json()["headers"]["x-trace"] == "abc"
    assert last.json()["request_number"] == 5  # all five requests on one connection


def test_pipelined_requests_on_streams(loop: asyncio.AbstractEventLoop) -> None:
    async def body(port: int) -> bytes:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(
            b"GET /echo?i=1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /echo?i=2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /echo?i=3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 3)  # until the server closes
        writer.close()
        await writer.wait_closed()
        return data

    responses = parse_responses(with_server(loop, body))  # type: ignore[arg-type]
    assert [r[0] for r in responses] == [200, 200, 200]
    assert [r[2]["query"] for r in responses] == [{"i": ["1"]}, {"i": ["2"]}, {"i": ["3"]}]
    assert [r[2]["request_number"] for r in responses] == [1, 2, 3]
    assert responses[1][2]["body"] == "hello"
    assert [r[1]["connection"] for r in responses] == ["keep-alive", "keep-alive", "close"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"GET /\r\nHost: a\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET no-slash HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nthis is not a header\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: ten\r\n\r\n",
    ],
    ids=[
        "garbage",
        "two-part-line",
        "bad-version",
        "bad-target",
        "bad-method",
        "bad-header",
        "no-host",
        "bad-length",
    ],
)
def test_malformed_request_gets_400(loop: asyncio.AbstractEventLoop, request_bytes: bytes) -> None:
    async def body(port: int) -> tuple[bytes, float, bool]:
        return await in_thread(raw_exchange, port, request_bytes)  # type: ignore[return-value]

    data, elapsed, eof = with_server(loop, body)  # type: ignore[misc]
    assert eof, "server must close the connection after a 400"
    assert elapsed < HEADER_TIMEOUT  # answered at once, not by the header timeout
    [(status, headers, payload)] = parse_responses(data)
    assert status == 400
    assert headers["connection"] == "close"
    assert payload["error"] == "Bad Request"


def test_connection_close(loop: asyncio.AbstractEventLoop) -> None:
    request = b"GET /echo?x=1 HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"

    async def body(port: int) -> tuple[bytes, float, bool]:
        return await in_thread(raw_exchange, port, request)  # type: ignore[return-value]

    data, elapsed, eof = with_server(loop, body)  # type: ignore[misc]
    assert eof and elapsed < HEADER_TIMEOUT  # closed right after the response
    [(status, headers, payload)] = parse_responses(data)
    assert status == 200
    assert headers["connection"] == "close"
    assert payload["query"] == {"x": ["1"]}
    assert payload["headers"]["connection"] == "close"


def test_http10_defaults_to_close(loop: asyncio.AbstractEventLoop) -> None:
    async def body(port: int) -> tuple[bytes, float, bool]:
        return await in_thread(raw_exchange, port, b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[return-value]

    data, elapsed, eof = with_server(loop, body)  # type: ignore[misc]
    assert eof and elapsed < HEADER_TIMEOUT
    [(status, headers, payload)] = parse_responses(data)
    assert (status, headers["connection"], payload) == (200, "close", {"message": "hello"})


@pytest.mark.parametrize(
    "sent",
    [b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1", b"GE", b""],
    ids=["partial-headers", "partial-line", "nothing"],
)
def test_slowloris_partial_request_is_dropped(loop: asyncio.AbstractEventLoop, sent: bytes) -> None:
    async def body(port: int) -> tuple[bytes, float, bool]:
        return await in_thread(raw_exchange, port, sent)  # type: ignore[return-value]

    data, elapsed, eof = with_server(loop, body)  # type: ignore[misc]
    assert eof, "server kept a slow client open"
    assert data == b""  # dropped without a response
    assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 1.0


def trickle(port: int, payload: bytes, interval: float, limit: float) -> tuple[float, int]:
    """Slowloris proper: keep sending one byte every ``interval`` (the connection is never
    idle). Returns (seconds until the server closed, bytes sent)."""
    with socket.create_connection((HOST, port), timeout=limit) as sock:
        sock.settimeout(interval)
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < limit:
            try:
                sock.send(payload[sent % len(payload) : sent % len(payload) + 1])
                sent += 1
                if sock.recv(1) == b"":
                    return time.monotonic() - start, sent
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start, sent
        raise AssertionError(f"server still accepting bytes after {limit}s")


def test_slowloris_trickling_headers_is_dropped(loop: asyncio.AbstractEventLoop) -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"a" * 1000

    async def body(port: int) -> tuple[float, int]:
        return await in_thread(trickle, port, head, 0.05, 3.0)  # type: ignore[return-value]

    elapsed, sent = with_server(loop, body)  # type: ignore[misc]
    assert sent >= 3  # it really was trickling
    assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 1.0


def test_idle_keep_alive_connection_is_dropped(loop: asyncio.AbstractEventLoop) -> None:
    async def body(port: int) -> tuple[bytes, float, bool]:
        return await in_thread(raw_exchange, port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # type: ignore[return-value]

    data, elapsed, eof = with_server(loop, body)  # type: ignore[misc]
    [(status, headers, _)] = parse_responses(data)
    assert (status, headers["connection"]) == (200, "keep-alive")
    assert eof and HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


@pytest.mark.parametrize("runner", ["asyncio", "ferroloop"])
def test_script_serves_a_request(runner: str) -> None:
    port = _free_port()
    cmd = example_command("raw_http", runner, "--port", str(port))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    ) as proc:
        try:
            line = _readline(proc, 5)
            assert line.strip() == f"serving on http://{HOST}:{port} ({runner} loop)", (
                line,
                proc.poll(),
            )
            response = httpx.get(f"http://{HOST}:{port}/echo?from=test", timeout=3)
            assert response.status_code == 200
            assert response.json()["query"] == {"from": ["test"]}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
