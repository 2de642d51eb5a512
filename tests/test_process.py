"""Subprocesses, pipes and signal handlers on ferroloop and stock asyncio."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import threading

import pytest

pytestmark = pytest.mark.timeout(60)

PY = sys.executable


def test_exec_communicate_and_exit_code(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]);"
            " sys.stderr.write('err'); sys.exit(3)",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(b"hello")
        return out, err, proc.returncode

    assert loop.run_until_complete(main()) == (b"olleh", b"err", 3)


def test_many_concurrent_short_processes(loop):
    """200 concurrent children: every return code right, no zombie left."""

    async def main():
        procs = [await asyncio.create_subprocess_shell(f"exit {i % 7}") for i in range(200)]
        return await asyncio.gather(*(p.wait() for p in procs)), [p.pid for p in procs]

    codes, pids = loop.run_until_complete(main())
    assert codes == [i % 7 for i in range(200)]
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped: not a zombie of ours


def test_child_killed_by_signal(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(30)")
        proc.kill()
        return await proc.wait()

    assert loop.run_until_complete(main()) == -signal.SIGKILL


def test_child_closes_stdout_early(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os, time; os.close(1); time.sleep(0.2)",
            stdout=asyncio.subprocess.PIPE,
        )
        data = await proc.stdout.read()
        return data, await proc.wait()

    assert loop.run_until_complete(main()) == (b"", 0)


def test_stdin_drain_to_slow_child(loop):
    payload = b"x" * (4 * 1024 * 1024)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys, time; time.sleep(0.2); print(len(sys.stdin.buffer.read()))",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        proc.stdin.write(payload)
        await proc.stdin.drain()
        proc.stdin.close()
        out = await proc.stdout.read()
        await proc.wait()
        return int(out)

    assert loop.run_until_complete(main()) == len(payload)


def test_text_mode_refused(loop):
    async def main():
        with pytest.raises(ValueError):
            await asyncio.create_subprocess_exec(PY, "-c", "pass", text=True)
        with pytest.raises(ValueError):
            await asyncio.create_subprocess_shell("true", universal_newlines=True)

    loop.run_until_complete(main())


def test_read_and_write_pipes(loop):
    class Reader(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = bytearray()
            self.done = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            self.data += data

        def connection_lost(self, exc):  # type: ignore[override]
            self.done.set_result(exc)

    async def main():
        r, w = os.pipe()
        rfile, wfile = os.fdopen(r, "rb", 0), os.fdopen(w, "wb", 0)
        read_t, reader = await loop.connect_read_pipe(Reader, rfile)
        write_t, _ = await loop.connect_write_pipe(asyncio.Protocol, wfile)
        assert isinstance(read_t, asyncio.ReadTransport)
        assert isinstance(write_t, asyncio.WriteTransport)
        assert read_t.get_extra_info("pipe") is rfile
        write_t.write(b"through the pipe")
        write_t.close()  # EOF reaches the reader as connection_lost(None)
        assert await asyncio.wait_for(reader.done, 5) is None
        return bytes(reader.data)

    assert loop.run_until_complete(main()) == b"through the pipe"


def test_regular_file_refused_as_pipe(loop):
    async def main():
        with tempfile.TemporaryFile() as f:
            with pytest.raises(ValueError):
                await loop.connect_read_pipe(asyncio.Protocol, f)

    loop.run_until_complete(main())


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_signal_handler_runs_in_loop_and_wakes_it(loop):
    async def main():
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, threading.get_ident())
        # Sent from another thread while the loop waits: the handler must run promptly,
        # in the loop's thread.
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        ident = await asyncio.wait_for(got, 5)
        assert loop.remove_signal_handler(signal.SIGUSR1)
        assert not loop.remove_signal_handler(signal.SIGUSR1)
        return ident

    assert loop.run_until_complete(main()) == threading.get_ident()


def test_signal_handler_checks(loop):
    async def coro() -> None:
        pass

    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, print)
    with pytest.raises(ValueError):
        loop.add_signal_handler(-1, print)
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGUSR1", print)
    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro)

    errors = []

    def other_thread() -> None:
        try:
            loop.add_signal_handler(signal.SIGUSR2, print)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(errors) == 1


def test_signal_storm_during_io(loop):
    """Hundreds of signals while data moves through a socket pair: nothing lost, the
    handler runs for them (coalesced by the kernel at most), the loop survives."""
    import socket

    async def main():
        seen = 0

        def on_signal() -> None:
            nonlocal seen
            seen += 1

        loop.add_signal_handler(signal.SIGUSR1, on_signal)
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        payload = os.urandom(2 * 1024 * 1024)
        stop = threading.Event()

        def storm() -> None:
            # Paced a little: an unpaced storm fills CPython's signal wake-up socket, which
            # CPython then reports as "Exception ignored" on any loop.
            while not stop.wait(0.0002):
                os.kill(os.getpid(), signal.SIGUSR1)

        t = threading.Thread(target=storm)
        t.start()
        try:
            sender = loop.create_task(loop.sock_sendall(a, payload))
            got = bytearray()
            while len(got) < len(payload):
                got += await loop.sock_recv(b, 65536)
            await sender
            for _ in range(200):  # the storm goes on until handlers have run
                if seen:
                    break
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            t.join()
            a.close()
            b.close()
        await asyncio.sleep(0.05)
        loop.remove_signal_handler(signal.SIGUSR1)
        return bytes(got) == payload, seen

    intact, seen = loop.run_until_complete(main())
    assert intact
    assert seen > 0


@pytest.mark.ferroloop_only
def test_fork_child_cannot_use_inherited_loop_and_parent_keeps_watchers(ferroloop):
    """The child shares the parent's epoll instance: using the inherited loop there raises a
    clear RuntimeError, closing it does not deregister the parent's fds, and a new loop in
    the child works."""
    import socket
    import warnings

    loop = ferroloop.new_event_loop()
    a, b = socket.socketpair()
    hits: list[bytes] = []
    loop.add_reader(a, lambda: hits.append(a.recv(100)))
    pid = os.fork()
    if pid == 0:  # child: report through the exit code only
        code = 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    loop.run_until_complete(asyncio.sleep(0))
                    code = 10
                except RuntimeError as exc:
                    code = 0 if "os.fork()" in str(exc) else 11
                loop.remove_reader(a)
                loop.close()
            fresh = ferroloop.new_event_loop()
            if fresh.run_until_complete(asyncio.sleep(0, "ok")) != "ok":
                code = 12
            fresh.close()
        except BaseException:
            code = 13
        os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        b.send(b"still watched")
        loop.run_until_complete(asyncio.sleep(0.05))
        assert hits == [b"still watched"]
    finally:
        loop.close()
        a.close()
        b.close()
