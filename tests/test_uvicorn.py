"""uvicorn (with httptools) serving a real ASGI app on ferroloop, selected with uvicorn's own
loop setting (`--loop ferroloop:new_event_loop`), single-process and with workers; stock
asyncio as the reference. Real HTTP requests over loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.timeout(90)

APP = textwrap.dedent(
    """
    import asyncio

    state = {"started": False}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["started"] = True
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await asyncio.sleep(0.001)
        loop = type(asyncio.get_running_loop()).__module__
        text = f"{loop} started={state['started']} pid={__import__('os').getpid()} len={len(body)}"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": text.encode()})
    """
)

LOOPS = {
    "asyncio": ("asyncio", "asyncio."),
    "ferroloop": ("ferroloop:new_event_loop", "ferroloop."),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_uvicorn(tmp_path, loop_setting: str, *extra: str) -> tuple[subprocess.Popen, str]:
    (tmp_path / "asgi_app.py").write_text(APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "asgi_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            loop_setting,
            "--http",
            "httptools",
            "--lifespan",
            "on",
            *extra,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    output = proc.communicate()[0].decode(errors="replace")
    raise AssertionError(f"uvicorn did not start:\n{output}")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)  # graceful: lifespan shutdown, exit status 0
    output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, output
    return output


@pytest.mark.parametrize("kind", list(LOOPS))
def test_uvicorn_serves_requests(tmp_path, kind):
    setting, module_prefix = LOOPS[kind]
    proc, url = start_uvicorn(tmp_path, setting)
    try:
        with httpx.Client() as client:
            responses = [client.post(url, content=b"x" * i) for i in range(300)]
        assert all(r.status_code == 200 for r in responses)
        assert all(r.text.startswith(module_prefix) for r in responses)
        assert all("started=True" in r.text for r in responses)
        assert [int(r.text.rsplit("len=", 1)[1]) for r in responses] == list(range(300))
    finally:
        output = stop(proc)
    assert "Application shutdown complete" in output


@pytest.mark.parametrize("kind", list(LOOPS))
def test_uvicorn_workers(tmp_path, kind):
    setting, module_prefix = LOOPS[kind]
    proc, url = start_uvicorn(tmp_path, setting, "--workers", "4")
    try:
        # Every worker process serves on the selected loop (which worker accepts a given
        # connection is up to the kernel: the workers share one listening socket).
        pids = set()
        with httpx.Client(headers={"connection": "close"}) as client:
            responses = [client.get(url) for _ in range(200)]
        for r in responses:
            assert r.status_code == 200 and r.text.startswith(module_prefix)
            pid = int(r.text.split("pid=", 1)[1].split()[0])
            assert pid != proc.pid  # served by a worker, not the supervisor
            pids.add(pid)
    finally:
        output = stop(proc)
    # Four worker processes started and shut down cleanly; more than one of them served.
    workers = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", output)}
    assert len(workers) == 4, output
    assert output.count("Application shutdown complete") == 4, output
    assert pids <= workers and len(pids) > 1, (pids, workers)
