"""What each CPython version's asyncio adds, on ferroloop and on stock asyncio side by side.

3.12: eager tasks, `shutdown_default_executor(timeout)`, `Server.wait_closed()` waiting for
connections, exception handlers run in the erring object's context, child watchers
deprecated. 3.13: `Server.close_clients()`/`abort_clients()`, `create_unix_server(...,
cleanup_socket=...)`, `_run_forever_setup()`/`_run_forever_cleanup()`. Each test names the
first version that has the behaviour and is skipped (with that reason) before it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pytest

PY = sys.executable

py312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio 3.12 behaviour")
py313 = pytest.mark.skipif(sys.version_info < (3, 13), reason="asyncio 3.13 behaviour")


class Echo(asyncio.Protocol):
    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


# --- every version -----------------------------------------------------------------------


def test_create_task_name_and_context(loop):
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")

    async def read() -> str:
        return var.get()

    async def main() -> tuple[str, str]:
        ctx = contextvars.copy_context()
        ctx.run(var.set, "inner")
        task = loop.create_task(read(), name="reader", context=ctx)
        return task.get_name(), await task

    assert loop.run_until_complete(main()) == ("reader", "inner")


def test_shutdown_default_executor_waits_for_the_threads(loop):
    finished = []

    def work() -> None:
        time.sleep(0.05)
        finished.append(True)

    async def main() -> None:
        loop.run_in_executor(None, work)
        await loop.shutdown_default_executor()

    loop.run_until_complete(main())
    assert finished == [True]
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, work)


# --- 3.12 ------------------------------------------------------------------------------


@py312
def test_eager_task_factory_runs_to_first_suspension_in_create_task(loop):
    steps: list[str] = []

    async def quick(i: int) -> int:
        steps.append(f"quick {i}")
        return i

    async def suspends() -> str:
        steps.append("suspends: before")
        await asyncio.sleep(0)
        steps.append("suspends: after")
        return "late"

    async def main() -> list[object]:
        loop.set_task_factory(asyncio.eager_task_factory)
        done = loop.create_task(quick(1))
        assert done.done() and done.result() == 1  # finished inside create_task
        pending = asyncio.create_task(suspends(), name="eager")
        assert not pending.done() and pending.get_name() == "eager"
        assert steps == ["quick 1", "suspends: before"]
        many = await asyncio.gather(*(loop.create_task(quick(i)) for i in range(100)), pending)
        assert asyncio.current_task().get_loop() is loop
        loop.set_task_factory(asyncio.create_eager_task_factory(asyncio.Task))
        custom = loop.create_task(quick(2))
        assert custom.done()
        return many

    result = loop.run_until_complete(main())
    assert result == [*range(100), "late"]
    assert "suspends: after" in steps


@py312
def test_shutdown_default_executor_timeout_warns_and_returns(loop, loop_kind):
    if loop_kind == "asyncio" and sys.version_info < (3, 13):
        # 3.12's own code awaits the executor's shutdown without the timeout and only bounds
        # the thread join after it, so the timeout never fires; 3.13 bounds the wait, as the
        # documentation says, and ferroloop does so on 3.12 too.
        pytest.skip("asyncio 3.12 does not bound the wait by the timeout")
    release = threading.Event()

    async def main() -> None:
        loop.run_in_executor(None, release.wait, 10)
        with pytest.warns(RuntimeWarning, match="did not finishing joining its threads within"):
            await loop.shutdown_default_executor(timeout=0.05)

    started = time.monotonic()
    try:
        loop.run_until_complete(main())
    finally:
        release.set()
    assert time.monotonic() - started < 5


@py312
def test_asyncio_run_with_loop_factory_and_executor(loop_factory):
    """3.12's Runner.close() passes a timeout to shutdown_default_executor()."""

    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: 42)

    assert asyncio.run(main(), loop_factory=loop_factory) == 42


@py312
def test_server_wait_closed_waits_for_connections(loop):
    async def main() -> list[str]:
        events: list[str] = []
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        server.close()
        waiting = asyncio.ensure_future(server.wait_closed())
        waiting.add_done_callback(lambda _: events.append("wait_closed returned"))
        await asyncio.sleep(0.05)
        events.append("client closes")
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(waiting, 5)
        return events

    assert loop.run_until_complete(main()) == ["client closes", "wait_closed returned"]


@py312
def test_exception_handler_runs_in_the_handle_context(loop):
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="loop")
    seen: list[str] = []
    loop.set_exception_handler(lambda lp, context: seen.append(var.get()))

    def fail() -> None:
        raise ValueError("boom")

    ctx = contextvars.copy_context()
    ctx.run(var.set, "callback")
    loop.call_soon(fail, context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["callback"]


@pytest.mark.ferroloop_only
@py312
def test_subprocesses_emit_no_child_watcher_deprecation(tmp_path):
    """ferroloop watches its own children: no 3.12 child-watcher DeprecationWarning."""
    script = tmp_path / "spawn.py"
    script.write_text(
        "import asyncio, ferroloop, warnings\n"
        "warnings.simplefilter('error')\n"
        "async def main():\n"
        "    p = await asyncio.create_subprocess_exec('true')\n"
        "    assert await p.wait() == 0\n"
        "    p = await asyncio.create_subprocess_shell('exit 3')\n"
        "    assert await p.wait() == 3\n"
        "ferroloop.run(main())\n"
        "asyncio.run(main(), loop_factory=ferroloop.new_event_loop)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [PY, "-W", "error::DeprecationWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.timeout(60)
def test_inactive_explicit_child_watcher_is_called_as_the_version_calls_it(loop):
    """A child watcher set on the policy that is not active refuses the subprocess before
    it starts. 3.11 asks the object its `__enter__` returned (`with ... as watcher`), 3.12
    and 3.13 the watcher itself."""
    from unittest import mock

    with warnings.catch_warnings():  # child watchers are deprecated from 3.12 on
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = mock.create_autospec(asyncio.AbstractChildWatcher)
        watcher.is_active.return_value = False
        watcher.__enter__.return_value.is_active.return_value = False
        policy = asyncio.get_event_loop_policy()
        saved = policy._watcher  # (get_child_watcher() would create one)
        policy.set_child_watcher(watcher)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="not activated"):
            await asyncio.create_subprocess_exec(PY, "-c", "pass")

    try:
        loop.run_until_complete(main())
        calls = list(watcher.mock_calls)
    finally:
        with warnings.catch_warnings():  # (closes the mock watcher)
            warnings.simplefilter("ignore", DeprecationWarning)
            policy.set_child_watcher(saved)
    asked = (
        mock.call.__enter__().is_active() if sys.version_info < (3, 12)
        else mock.call.is_active()
    )  # fmt: skip
    assert calls == [
        mock.call.__enter__(), asked, mock.call.__exit__(RuntimeError, mock.ANY, mock.ANY)
    ]  # fmt: skip


# --- 3.13 ------------------------------------------------------------------------------


@py313
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_server_close_and_abort_clients(loop, method):
    async def main() -> list[bytes]:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        clients = [
            await asyncio.open_connection(*server.sockets[0].getsockname()[:2]) for _ in range(3)
        ]
        for _, writer in clients:
            writer.write(b"ping")
        for reader, _ in clients:
            assert await reader.readexactly(4) == b"ping"
        server.close()
        getattr(server, method)()
        await asyncio.wait_for(server.wait_closed(), 5)
        rest = []
        for reader, writer in clients:
            try:
                rest.append(await asyncio.wait_for(reader.read(), 5))
            except ConnectionResetError:
                rest.append(b"reset")
            writer.close()
        return rest

    rest = loop.run_until_complete(main())
    assert all(r in (b"", b"reset") for r in rest), rest


@py313
@pytest.mark.parametrize("cleanup", [True, False])
def test_unix_server_cleanup_socket(loop, cleanup):
    async def main(path: str) -> bool:
        server = await loop.create_unix_server(Echo, path, cleanup_socket=cleanup)
        assert os.path.exists(path)
        server.close()
        await server.wait_closed()
        return os.path.exists(path)

    with tempfile.TemporaryDirectory() as tmp:
        assert loop.run_until_complete(main(os.path.join(tmp, "s"))) is (not cleanup)


@py313
def test_run_forever_setup_and_cleanup_drive_the_loop(loop):
    """3.13 exposes the halves of run_forever() for loops embedded in a GUI's event loop."""
    ran: list[str] = []
    loop.call_soon(ran.append, "callback")
    loop._run_forever_setup()
    try:
        assert asyncio.get_running_loop() is loop and loop.is_running()
        loop.stop()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if hasattr(loop, "_run_once"):
                loop._run_once()
            else:
                loop._run_forever_native()
    finally:
        loop._run_forever_cleanup()
    assert ran == ["callback"]
    assert not loop.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
