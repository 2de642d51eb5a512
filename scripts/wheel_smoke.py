"""Smoke program for an installed ferroloop (a wheel or the sdist), run by scripts/wheel_smoke.sh
in a fresh venv, from outside the checkout.

Checks that the package imported is the installed one, then runs the same coroutine (a TCP echo
over loopback, timers, subprocesses) three ways: ``ferroloop.run(main())``,
``asyncio.run(main(), loop_factory=ferroloop.new_event_loop)`` (3.12+) and
``python -m ferroloop <this file> --script``, which runs it under plain ``asyncio.run``. Prints one
line per check and a traceback for each failure; exits 1 if any check failed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import subprocess
import sys
import traceback

import ferroloop

TIMEOUT = 10.0  # seconds, per coroutine, so that a hang fails instead of stalling CI


async def tcp_echo() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping\n")
    assert await reader.readline() == b"ping\n"
    assert await reader.read() == b"", "the server closed: EOF expected"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def timers() -> None:
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    start = loop.time()
    loop.call_later(0.05, fired.set_result, "fired")
    assert await fired == "fired"
    elapsed = loop.time() - start
    # asyncio may run a timer up to one clock resolution early.
    assert 0.04 <= elapsed < 5, elapsed
    await asyncio.sleep(0.01)


async def subprocesses() -> None:
    proc = await asyncio.create_subprocess_exec("true")
    assert await proc.wait() == 0
    proc = await asyncio.create_subprocess_exec("echo", "hello", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert (out, proc.returncode) == (b"hello\n", 0), (out, proc.returncode)


async def main() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ferroloop.Loop), f"running loop is {loop!r}, not a ferroloop loop"
    for check in (tcp_echo, timers, subprocesses):
        await asyncio.wait_for(check(), TIMEOUT)


def installed_package() -> None:
    native = ferroloop._ferroloop.__file__ or ""
    for path in (ferroloop.__file__ or "", native):
        assert path.startswith(sys.prefix + os.sep), f"{path} is not inside this venv {sys.prefix}"
    assert native.endswith(".so"), native
    dist_version = importlib.metadata.version("ferroloop")
    assert ferroloop.__version__ == dist_version, (ferroloop.__version__, dist_version)


def ferroloop_run() -> None:
    ferroloop.run(main())


def asyncio_run_loop_factory() -> None:
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)


def python_m_ferroloop() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ferroloop", __file__, "--script"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "script ok\n"), (
        f"exit status {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def checks() -> int:
    todo = [installed_package, ferroloop_run]
    if sys.version_info >= (3, 12):  # asyncio.run's loop_factory is new in 3.12
        todo.append(asyncio_run_loop_factory)
    todo.append(python_m_ferroloop)
    failed = 0
    for check in todo:
        try:
            check()
        except Exception:
            failed += 1
            print(f"{check.__name__}: FAILED")
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"{check.__name__}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--script"]:
        # Under `python -m ferroloop`: plain asyncio.run must create a ferroloop loop.
        asyncio.run(main())
        print("script ok")
    else:
        sys.exit(checks())
