"""The metrics exporters: `ferroloop.prometheus` (text exposition and the prometheus_client
collector), `ferroloop.opentelemetry` (observable instruments), and
`python -m ferroloop --metrics-port` serving GET /metrics. Values are checked against work
the tests did; expositions are parsed with prometheus_client's own parser. Loopback only."""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ferroloop import _exporting, prometheus
from ferroloop._metrics_server import serve

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = [pytest.mark.ferroloop_only, pytest.mark.timeout(60)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, Any], Samples]:
    """Families by name and every sample by (name, labels), through prometheus_client."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples
    }
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def loop(ferroloop: Any) -> Iterator[Any]:
    loop = ferroloop.new_event_loop()
    loop.set_metrics_level("callbacks")
    yield loop
    loop.close()


def label(loop: Any) -> str:
    return _exporting.loop_label(loop)


# ------------------------------------------------------------------ exposition


EXPECTED = {
    # parsed name (without _total): type
    "ferroloop_loop_utilization": "gauge",
    "ferroloop_loop_iterations": "counter",
    "ferroloop_callbacks": "counter",
    "ferroloop_loop_busy_seconds": "counter",
    "ferroloop_loop_poll_seconds": "counter",
    "ferroloop_loop_longest_iteration_seconds": "gauge",
    "ferroloop_callback_running_seconds": "gauge",
    "ferroloop_callback_lag_seconds": "histogram",
    "ferroloop_slow_callbacks": "counter",
    "ferroloop_slow_callback_seconds": "counter",
    "ferroloop_ready_callbacks": "gauge",
    "ferroloop_timers": "gauge",
    "ferroloop_timers_cancelled": "gauge",
    "ferroloop_fds": "gauge",
    "ferroloop_transports": "gauge",
    "ferroloop_transports_opened": "counter",
    "ferroloop_transport_received_bytes": "counter",
    "ferroloop_transport_sent_bytes": "counter",
    "ferroloop_transport_reads": "counter",
    "ferroloop_transport_writes": "counter",
    "ferroloop_tasks": "gauge",
    "ferroloop_slow_callback_recent_seconds": "gauge",
}


def test_exposition_is_valid_and_counts_callbacks(loop: Any) -> None:
    n = 500
    families, before = parse(prometheus.exposition(loop))
    assert {name: f.type for name, f in families.items()} == EXPECTED
    assert all(f.documentation for f in families.values())
    ran = []
    for i in range(n):
        loop.call_soon(ran.append, i)
    loop.run_until_complete(asyncio.sleep(0))
    assert len(ran) == n
    text = prometheus.exposition(loop)
    assert text.endswith("\n")
    _, after = parse(text)
    lbl = label(loop)
    diff = value(after, "ferroloop_callbacks_total", loop=lbl) - value(
        before, "ferroloop_callbacks_total", loop=lbl
    )
    assert diff >= n
    assert value(after, "ferroloop_loop_iterations_total", loop=lbl) >= 1
    assert 0.0 <= value(after, "ferroloop_loop_utilization", loop=lbl) <= 1.0
    lag_count = value(after, "ferroloop_callback_lag_seconds_count", loop=lbl)
    assert lag_count >= n
    assert value(after, "ferroloop_callback_lag_seconds_bucket", loop=lbl, le="+Inf") == lag_count
    # Buckets are cumulative: never decreasing.
    buckets = sorted(
        (float(dict(key[1])["le"]), v)
        for key, v in after.items()
        if key[0] == "ferroloop_callback_lag_seconds_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert value(after, "ferroloop_tasks", loop=lbl) == 0


def blocker() -> None:
    time.sleep(0.05)  # BLOCKING LINE


async def blocking_task() -> None:
    blocker()


def test_slow_callback_is_named(loop: Any) -> None:
    loop.slow_callback_duration = 0.02
    _, before = parse(prometheus.exposition(loop))
    loop.run_until_complete(loop.create_task(blocking_task(), name="the-slow-one"))
    _, after = parse(prometheus.exposition(loop))
    lbl = label(loop)
    assert (
        value(after, "ferroloop_slow_callbacks_total", loop=lbl)
        - value(before, "ferroloop_slow_callbacks_total", loop=lbl)
        >= 1
    )
    assert value(after, "ferroloop_slow_callback_seconds_total", loop=lbl) >= 0.05
    line = (
        inspect.getsource(blocker).splitlines().index("    time.sleep(0.05)  # BLOCKING LINE")
        + inspect.getsourcelines(blocker)[1]
    )
    slow = {
        dict(key[1])["location"]: (dict(key[1]), v)
        for key, v in after.items()
        if key[0] == "ferroloop_slow_callback_recent_seconds"
    }
    where = f"{__file__}:{line} in blocker"
    assert where in slow, slow
    labels, seconds = slow[where]
    assert labels["task"] == "the-slow-one"
    assert labels["coroutine"] == "blocking_task"
    assert labels["loop"] == lbl
    assert seconds >= 0.05


def test_lag_rises_under_a_cpu_bound_callback(loop: Any) -> None:
    lbl = label(loop)
    _, before = parse(prometheus.exposition(loop))

    def spin() -> None:
        loop.call_soon(lambda: None)  # waits behind the rest of this callback
        end = time.perf_counter() + 0.06
        while time.perf_counter() < end:
            pass

    loop.call_soon(spin)
    loop.run_until_complete(asyncio.sleep(0))
    _, after = parse(prometheus.exposition(loop))

    def above(samples: Samples, bound: str) -> float:
        total = value(samples, "ferroloop_callback_lag_seconds_count", loop=lbl)
        return total - value(samples, "ferroloop_callback_lag_seconds_bucket", loop=lbl, le=bound)

    assert above(after, "0.05") - above(before, "0.05") >= 1
    lag_sum = "ferroloop_callback_lag_seconds_sum"
    assert value(after, lag_sum, loop=lbl) - value(before, lag_sum, loop=lbl) >= 0.06
    assert value(after, "ferroloop_loop_longest_iteration_seconds", loop=lbl) >= 0.06


def test_tcp_transports_and_bytes(loop: Any) -> None:
    payload = os.urandom(200_000)
    lbl = label(loop)
    seen: dict[str, Samples] = {}

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> bytes:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, seen["before"] = parse(prometheus.exposition(loop))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        got = await reader.read(-1)
        _, seen["open"] = parse(prometheus.exposition(loop))  # the server side may be closing
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        return got

    got = asyncio.wait_for(main(), 20)
    assert loop.run_until_complete(got) == payload
    _, end = parse(prometheus.exposition(loop))
    before, during = seen["before"], seen["open"]

    def diff(name: str, samples: Samples = end, **labels: str) -> float:
        return value(samples, name, loop=lbl, **labels) - value(before, name, loop=lbl, **labels)

    assert value(during, "ferroloop_transports", loop=lbl, kind="tcp") >= 1
    assert value(before, "ferroloop_transports", loop=lbl, kind="tcp") == 0
    assert diff("ferroloop_transports_opened_total", kind="tcp") == 2  # client and server side
    assert value(end, "ferroloop_transports", loop=lbl, kind="tcp") == 0
    # Both ends are on this loop: each byte is sent and received twice (request and echo).
    assert diff("ferroloop_transport_received_bytes_total") == 2 * len(payload)
    assert diff("ferroloop_transport_sent_bytes_total") == 2 * len(payload)
    assert diff("ferroloop_transport_reads_total") >= 2
    assert diff("ferroloop_transport_writes_total") >= 2


def test_label_values_are_escaped(loop: Any) -> None:
    name = 'we"ird\\name\nnext line'
    loop.slow_callback_duration = 0.01

    async def napper() -> None:
        time.sleep(0.02)

    loop.run_until_complete(loop.create_task(napper(), name=name))
    text = prometheus.exposition({'a "loop"\\': loop})
    _, samples = parse(text)
    tasks = [dict(k[1]) for k in samples if k[0] == "ferroloop_slow_callback_recent_seconds"]
    assert [t["task"] for t in tasks] == [name]
    assert tasks[0]["loop"] == 'a "loop"\\'
    # No raw newline inside a sample line.
    assert all(
        line.startswith(("# HELP ferroloop_", "# TYPE ferroloop_", "ferroloop_"))
        for line in text.splitlines()
    )


def test_several_loops_in_threads(ferroloop: Any) -> None:
    loops: dict[str, Any] = {}
    ready = threading.Barrier(3)
    done = threading.Event()

    def run(name: str, n: int) -> None:
        loop = ferroloop.new_event_loop()
        for _ in range(n):
            loop.call_soon(lambda: None)
        loop.run_until_complete(asyncio.sleep(0))
        loops[name] = loop
        ready.wait()
        done.wait(10)
        loop.close()

    threads = [threading.Thread(target=run, args=(f"worker-{n}", n)) for n in (10, 300)]
    for t in threads:
        t.start()
    try:
        ready.wait(10)
        by_name = parse(prometheus.exposition(loops))[1]
        assert value(by_name, "ferroloop_callbacks_total", loop="worker-300") >= 300
        assert value(by_name, "ferroloop_callbacks_total", loop="worker-10") < 300
        numbered = parse(prometheus.exposition(list(loops.values())))[1]
        labels = {dict(k[1])["loop"] for k in numbered if k[0] == "ferroloop_callbacks_total"}
        assert labels == {label(loops["worker-10"]), label(loops["worker-300"])}
        assert len(labels) == 2
    finally:
        done.set()
        for t in threads:
            t.join(10)
    # Closed loops are left out; HELP and TYPE lines remain.
    families, samples = parse(prometheus.exposition(loops))
    assert not samples
    assert set(families) == set(EXPECTED)


def test_loop_sources(ferroloop: Any, loop: Any) -> None:
    keys = set(parse(prometheus.exposition([loop]))[1])
    assert set(parse(prometheus.exposition(lambda: [loop]))[1]) == keys
    assert set(parse(prometheus.exposition(lambda: loop))[1]) == keys
    assert set(parse(prometheus.exposition(loop))[1]) == keys
    # None: every open loop of the process, oldest first (ferroloop.metrics.loops).
    other = ferroloop.new_event_loop()
    assert ferroloop.metrics.loops()[-2:] == [loop, other]
    other.close()
    assert other not in ferroloop.metrics.loops()
    assert set(parse(prometheus.exposition())[1]) >= keys
    with pytest.raises(TypeError):
        prometheus.exposition(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        prometheus.exposition([object()])  # type: ignore[list-item]


# --------------------------------------------------------- prometheus_client


def test_prometheus_client_collector(loop: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    loop.slow_callback_duration = 0.01
    loop.run_until_complete(loop.create_task(blocking_task(), name="collected"))
    registry = CollectorRegistry()
    registry.register(prometheus.FerroloopCollector(lambda: [loop]))
    ours = parse(prometheus.exposition(loop))
    theirs = parse(generate_latest(registry).decode())
    # The loop is not running: both snapshots have the same values.
    assert theirs[1] == ours[1]
    assert {n: f.type for n, f in theirs[0].items()} == EXPECTED
    assert {n: f.documentation for n, f in theirs[0].items()} == {
        n: f.documentation for n, f in ours[0].items()
    }
    # A second collector with the same names is refused by the registry (describe works).
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(prometheus.FerroloopCollector([loop]))


def test_missing_libraries_are_named(monkeypatch: pytest.MonkeyPatch, loop: Any) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match="pip install prometheus-client"):
        prometheus.FerroloopCollector([loop])
    from ferroloop import opentelemetry as fotel

    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match="pip install opentelemetry-api"):
        fotel.instrument(loop)


# ----------------------------------------------------------------- OpenTelemetry


def otel_points(reader: Any) -> dict[str, tuple[str, str, list[tuple[dict[str, Any], float]]]]:
    """name -> (data type, unit, [(attributes, value)])."""
    out: dict[str, tuple[str, str, list[tuple[dict[str, Any], float]]]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            assert sm.scope.name == "ferroloop"
            for m in sm.metrics:
                points = [(dict(p.attributes), p.value) for p in m.data.data_points]
                kind = type(m.data).__name__
                if kind == "Sum":
                    kind += "/monotonic" if m.data.is_monotonic else "/updown"
                out[m.name] = (kind, m.unit, points)
    return out


def test_opentelemetry_instruments(loop: Any) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from ferroloop.opentelemetry import INSTRUMENTS, instrument
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    handle = instrument({"main": loop}, meter_provider=provider)
    assert set(handle.instruments) == {i[0] for i in INSTRUMENTS}
    first = otel_points(reader)
    n = 300
    for _ in range(n):
        loop.call_soon(lambda: None)
    loop.slow_callback_duration = 0.02
    loop.run_until_complete(loop.create_task(blocking_task(), name="otel-slow"))
    second = otel_points(reader)

    def only(points: dict[str, Any], name: str, **attributes: str) -> float:
        matches = [
            v for a, v in points[name][2] if a == {"ferroloop.loop.id": "main", **attributes}
        ]
        assert len(matches) == 1, points[name]
        return matches[0]

    assert second["ferroloop.callback.runs"][:2] == ("Sum/monotonic", "{callback}")
    assert only(second, "ferroloop.callback.runs") - only(first, "ferroloop.callback.runs") >= n
    assert second["ferroloop.loop.utilization"][:2] == ("Gauge", "1")
    assert 0 <= only(second, "ferroloop.loop.utilization") <= 1
    assert second["ferroloop.loop.busy_time"][:2] == ("Sum/monotonic", "s")
    assert only(second, "ferroloop.loop.busy_time") >= 0.05
    assert second["ferroloop.transport.open"][:2] == ("Sum/updown", "{transport}")
    assert only(second, "ferroloop.transport.open", **{"transport.kind": "tcp"}) == 0
    assert only(second, "ferroloop.transport.io", **{"network.io.direction": "receive"}) == 0
    count = only(second, "ferroloop.callback.lag.count")
    assert count >= n
    assert only(second, "ferroloop.callback.lag.bucket", le="+Inf") == count
    bounds = [a["le"] for a, _ in second["ferroloop.callback.lag.bucket"][2]]
    assert bounds[-1] == "+Inf" and all(not math.isnan(float(b)) for b in bounds)
    assert only(second, "ferroloop.callback.slow.count") >= 1
    slow = second["ferroloop.callback.slow.recent"][2]
    assert any(
        a["ferroloop.task.name"] == "otel-slow"
        and a["ferroloop.coroutine"] == "blocking_task"
        and a["ferroloop.callback.location"].startswith(f"{__file__}:")
        and v >= 0.05
        for a, v in slow
    ), slow
    handle.close()
    assert "ferroloop.callback.runs" not in otel_points(reader)


# ----------------------------------------------------- the HTTP endpoint and CLI


def scrape(url: str, timeout: float = 10) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_scrape_while_the_loop_is_blocked(ferroloop: Any) -> None:
    loop = ferroloop.new_event_loop()
    loop.set_metrics_level("callbacks")
    url = serve(lambda: [loop], "127.0.0.1", 0)
    blocked = threading.Event()

    def block() -> None:
        blocked.set()
        time.sleep(3)

    def run() -> None:
        loop.call_soon(block)
        loop.run_until_complete(asyncio.sleep(0))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert blocked.wait(10)
        content_type, text = scrape(url)
        assert thread.is_alive(), "the scrape was answered only after the block ended"
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        families, _ = parse(text)
        assert set(families) == set(EXPECTED)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
        assert err.value.code == 404
    finally:
        thread.join(10)
        loop.close()


def run_cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FERROLOOP_METRICS"}
    return subprocess.run(
        [sys.executable, "-m", "ferroloop", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("port", ["abc", "-1", "65536", ""])
def test_cli_bad_port(tmp_path: Path, port: str) -> None:
    (tmp_path / "prog.py").write_text("print('ran')\n")
    result = run_cli("--metrics-port", port, "prog.py", cwd=tmp_path)
    assert result.returncode == 2
    assert "--metrics-port must be a port number from 0 to 65535" in result.stderr
    assert "ran" not in result.stdout


def test_cli_port_in_use_and_option_errors(tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text("print('ran')\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = run_cli("--metrics-port", port, "prog.py", cwd=tmp_path)
    assert result.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1 port {port}" in result.stderr
    for args in (["--metrics-port"], ["--metrics-host", "::1", "prog.py"], ["--metrics-x", "1"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, args
        assert result.stderr.startswith("ferroloop: "), result.stderr
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and "--metrics-port PORT" in result.stderr


SELF_SCRAPE = textwrap.dedent(
    """
    import asyncio, os, sys, threading, urllib.request

    async def main():
        loop = asyncio.get_running_loop()
        print(type(loop).__module__, loop.get_metrics_level())
        # The program scrapes itself from a thread: the URL printed to stderr, which the
        # test writes to a file.
        path = os.environ["SCRAPE_URL_FILE"]
        while not os.path.exists(path + ".done"):
            await asyncio.sleep(0.01)
        got = await loop.run_in_executor(None, lambda: urllib.request.urlopen(
            open(path).read().strip(), timeout=10).read().decode())
        print("callbacks_total" in got, 'ferroloop_loop_utilization{loop="1"}' in got)

    asyncio.run(main())
    """
)


def test_cli_metrics_port_zero_with_asyncio_run(tmp_path: Path) -> None:
    """`-m module` form, a program using plain asyncio.run(); the level is "callbacks" unless
    FERROLOOP_METRICS says otherwise."""
    (tmp_path / "selfscrape.py").write_text(SELF_SCRAPE)
    url_file = tmp_path / "url"
    env = {k: v for k, v in os.environ.items() if k != "FERROLOOP_METRICS"}
    env["SCRAPE_URL_FILE"] = str(url_file)
    for extra_env, level in (({}, "callbacks"), ({"FERROLOOP_METRICS": "loop"}, "loop")):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferroloop", "--metrics-port=0", "-m", "selfscrape"],
            cwd=tmp_path,
            env={**env, **extra_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
            assert first.startswith("ferroloop: metrics on http://127.0.0.1:"), first
            url_file.write_text(first.split(" on ", 1)[1])
            Path(f"{url_file}.done").touch()
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait(10)
            Path(f"{url_file}.done").unlink(missing_ok=True)
        assert proc.returncode == 0, err
        assert out.split() == ["ferroloop._loop", level, "True", "True"], (out, err)


FASTAPI_APP = textwrap.dedent(
    """
    import sys
    import time

    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()


    @app.get("/")
    async def index():
        return {"ok": True}


    @app.get("/slow")
    async def slow_endpoint():
        time.sleep(0.2)  # SLOW LINE
        return {"slow": True}


    @app.get("/block")
    async def block_endpoint():
        time.sleep(3)
        return {"blocked": True}


    if __name__ == "__main__":
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop=sys.argv[2],
                    log_level="warning")
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(path: Path, prefix: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith(prefix):
                return line
        assert proc.poll() is None, path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"no {prefix!r} in: {path.read_text()}")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("loop_setting", ["none", "ferroloop:new_event_loop"])
def test_fastapi_app_scraped_over_http(tmp_path: Path, loop_setting: str) -> None:
    """The issue's "done when": a FastAPI app run with `python -m ferroloop --metrics-port 0
    app.py`, scraped over real HTTP, reports utilisation, lag and the slow endpoint's
    callback by function and line. uvicorn's loop setting "none" lets asyncio.run() use the
    policy; "ferroloop:new_event_loop" is imported by uvicorn. Either way the loop is in
    the process's registry (ferroloop.metrics.loops)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    app = tmp_path / "app.py"
    app.write_text(FASTAPI_APP)
    slow_line = FASTAPI_APP.splitlines().index("    time.sleep(0.2)  # SLOW LINE") + 1
    port = free_port()
    stderr_path = tmp_path / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "FERROLOOP_METRICS"}
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferroloop",
                "--metrics-port",
                "0",
                "app.py",
                str(port),
                loop_setting,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        line = wait_for_line(stderr_path, "ferroloop: metrics on ", proc, 30)
        metrics_url = line.split(" on ", 1)[1].strip()
        assert metrics_url.startswith("http://127.0.0.1:") and metrics_url.endswith("/metrics")
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get(base + "/").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, stderr_path.read_text()
                assert time.monotonic() < deadline, stderr_path.read_text()
                time.sleep(0.1)
            for _ in range(20):
                assert client.get(base + "/").json() == {"ok": True}
            assert client.get(base + "/slow").json() == {"slow": True}

            # While /block holds the loop for 3 s, a scrape is still answered.
            blocked = threading.Thread(target=lambda: httpx.get(base + "/block", timeout=20))
            blocked.start()
            time.sleep(0.5)
            response = client.get(metrics_url)
            assert blocked.is_alive(), "the scrape waited for the blocked loop"
            blocked.join(20)

        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        families, samples = parse(response.text)
        assert set(families) == set(EXPECTED)
        loops = {dict(k[1])["loop"] for k in samples if k[0] == "ferroloop_callbacks_total"}
        assert len(loops) == 1, loops
        (lbl,) = loops
        assert 0 < value(samples, "ferroloop_loop_utilization", loop=lbl) <= 1
        assert value(samples, "ferroloop_callbacks_total", loop=lbl) > 20
        assert value(samples, "ferroloop_callback_lag_seconds_count", loop=lbl) > 0
        assert value(samples, "ferroloop_callback_lag_seconds_sum", loop=lbl) > 0
        assert value(samples, "ferroloop_transports_opened_total", loop=lbl, kind="tcp") >= 2
        assert value(samples, "ferroloop_transport_received_bytes_total", loop=lbl) > 0
        assert value(samples, "ferroloop_slow_callbacks_total", loop=lbl) >= 1
        assert value(samples, "ferroloop_loop_longest_iteration_seconds", loop=lbl) >= 0.2
        # Scraped while /block held the loop: the callback running now shows it.
        assert value(samples, "ferroloop_callback_running_seconds", loop=lbl) >= 0.3
        slow = [
            (dict(k[1]), v)
            for k, v in samples.items()
            if k[0] == "ferroloop_slow_callback_recent_seconds"
        ]
        where = f"{app}:{slow_line} in slow_endpoint"
        assert any(labels["location"] == where and v >= 0.2 for labels, v in slow), slow
        # The asyncio logger names it too.
        assert f"blocked at {where}" in stderr_path.read_text()
    finally:
        proc.kill()  # its graceful shutdown is not what this tests
        proc.wait(10)


# ------------------------------------------------- loop.metrics() behind them


def test_snapshot_gauges_follow_the_queue_and_timers(loop: Any) -> None:
    handles = [loop.call_later(60, lambda: None) for _ in range(5)]
    handles[0].cancel()
    handles[1].cancel()
    loop.call_soon(lambda: None)
    m = loop.metrics()
    assert (m.ready, m.timers, m.timers_cancelled) == (1, 3, 2)
    for h in handles:
        h.cancel()


def test_level_off_counts_nothing(loop: Any) -> None:
    loop.set_metrics_level("off")
    before = loop.metrics()
    for _ in range(10):
        loop.call_soon(lambda: None)
    loop.run_until_complete(asyncio.sleep(0))
    after = loop.metrics()
    assert after.level == "off"
    assert after.callbacks == before.callbacks
    assert after.lag.count == before.lag.count


def test_snapshot_from_another_thread_while_blocked(loop: Any) -> None:
    """While the loop is blocked in a callback, another thread's snapshot still answers (the
    GIL-holding loop thread waits in join for it)."""
    got: list[Any] = []

    def block() -> None:
        t = threading.Thread(target=lambda: got.append(loop.metrics()))
        t.start()
        t.join(10)
        time.sleep(0.05)

    loop.call_soon(block)
    loop.run_until_complete(asyncio.sleep(0))
    assert len(got) == 1 and got[0].running
    assert loop.metrics().busy_seconds >= 0.05
