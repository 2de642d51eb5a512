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
            PY,
            "-c",
            "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]);"
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
            PY,
            "-c",
            "import os, time; os.close(1); time.sleep(0.2)",
            stdout=asyncio.subprocess.PIPE,
        )
        data = await proc.stdout.read()
        return data, await proc.wait()

    assert loop.run_until_complete(main()) == (b"", 0)


def test_stdin_drain_to_slow_child(loop):
    payload = b"x" * (4 * 1024 * 1024)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import sys, time; time.sleep(0.2); print(len(sys.stdin.buffer.read()))",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
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


def test_bulk_transfer_through_pipe_transports(loop):
    """32 MiB through our own write and read pipe transports, checksummed: exercises the
    queued-write path, the bulk read path and (on ferroloop) the pipe capacity raise."""
    import fcntl
    import hashlib

    payload = os.urandom(1 << 20) * 32
    expected = hashlib.sha256(payload).hexdigest()

    class Reader(asyncio.Protocol):
        def __init__(self) -> None:
            self.digest = hashlib.sha256()
            self.size = 0
            self.done = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            self.digest.update(data)
            self.size += len(data)

        def connection_lost(self, exc):  # type: ignore[override]
            self.done.set_result(exc)

    async def main():
        r, w = os.pipe()
        rfile, wfile = os.fdopen(r, "rb", 0), os.fdopen(w, "wb", 0)
        _, reader = await loop.connect_read_pipe(Reader, rfile)
        write_t, _ = await loop.connect_write_pipe(asyncio.Protocol, wfile)
        view = memoryview(payload)
        for start in range(0, len(payload), 1 << 20):
            write_t.write(view[start : start + (1 << 20)])
            while write_t.get_write_buffer_size() > 4 << 20:
                await asyncio.sleep(0.001)
        capacity = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        write_t.close()
        assert await asyncio.wait_for(reader.done, 30) is None
        return reader.size, reader.digest.hexdigest(), capacity

    size, digest, capacity = loop.run_until_complete(main())
    assert (size, digest) == (len(payload), expected)
    if type(loop).__module__.startswith("ferroloop"):
        assert capacity == 1 << 20  # raised once the transfer proved to be bulk


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


# -- child watching: many children, signals, pidfd and its fallback, loop close, fork ------


def _children() -> dict[int, str]:
    """{pid: state} of this process's children, from /proc (state 'Z' is a zombie)."""
    me = os.getpid()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == me:
            found[int(name)] = fields[0]
    return found


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _expected_code(i: int) -> int:
    return -signal.SIGKILL if i % 10 == 9 else i % 120


def _command(i: int) -> str:
    return "kill -9 $$" if i % 10 == 9 else f"exit {i % 120}"


@pytest.mark.timeout(120)
def test_thousand_concurrent_processes_no_zombie_no_fd_left(loop):
    """1,000 short children spawned at once (no concurrency bound: spawning is synchronous
    and cheap, about 0.7 s for all of them on 2 cores): every return code right (exit codes
    and deaths by signal), no zombie left, as many open fds afterwards as before."""

    async def one(i: int) -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", _command(i))
        return proc.pid, await proc.wait()

    async def main(n: int) -> list[tuple[int, int]]:
        return await asyncio.gather(*(one(i) for i in range(n)))

    loop.run_until_complete(main(3))  # first use: lazily created fds and threads
    fds_before = _open_fds()
    results = loop.run_until_complete(main(1000))
    assert [code for _, code in results] == [_expected_code(i) for i in range(1000)]
    pids = {pid for pid, _ in results}
    assert len(pids) == 1000
    children = _children()
    assert not pids & set(children), "children of this loop not reaped"
    assert "Z" not in children.values(), f"zombie children: {children}"
    assert _open_fds() == fds_before


def test_child_ignoring_sigterm_is_killed(loop):
    async def main() -> tuple[int | None, int]:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(30)",
            stdout=asyncio.subprocess.PIPE,
        )
        assert await proc.stdout.readline() == b"ready\n"
        proc.terminate()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.3)  # SIGTERM ignored: still running
        still_running = proc.returncode
        proc.kill()
        return still_running, await proc.wait()

    assert loop.run_until_complete(main()) == (None, -signal.SIGKILL)


def _waitpid_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "waitpid" in t.name]


def _spawn_and_wait(loop, n: int, seen_threads: list[list[str]]) -> list[int]:
    """Spawn n children that wait for EOF on stdin, note the waitpid threads alive while
    they all run, release them; return their return codes."""

    async def main() -> list[int]:
        procs = [
            await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", f"read x; {_command(i)}", stdin=asyncio.subprocess.PIPE
            )
            for i in range(n)
        ]
        seen_threads.append(_waitpid_threads())
        for proc in procs:
            proc.stdin.close()
        return await asyncio.gather(*(proc.wait() for proc in procs))

    return loop.run_until_complete(main())


@pytest.mark.ferroloop_only
def test_children_watched_through_pidfds(ferroloop, monkeypatch):
    """On Linux each child is watched through a pidfd on the loop: no thread, and every
    pidfd is closed once its child is reaped."""
    opened: list[int] = []
    real_pidfd_open = os.pidfd_open

    def pidfd_open(pid: int, flags: int = 0) -> int:
        fd = real_pidfd_open(pid, flags)
        opened.append(fd)
        return fd

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    loop = ferroloop.new_event_loop()
    try:
        fds_before = _open_fds()
        seen: list[list[str]] = []
        codes = _spawn_and_wait(loop, 20, seen)
        assert codes == [_expected_code(i) for i in range(20)]
        assert len(opened) == 20
        assert seen == [[]]  # no waitpid thread
        assert _open_fds() == fds_before
    finally:
        loop.close()


@pytest.mark.ferroloop_only
@pytest.mark.parametrize("failure", ["ENOSYS", "EPERM", "EMFILE", "missing"])
def test_children_watched_by_threads_without_pidfd(ferroloop, monkeypatch, failure):
    """When pidfd_open is unavailable or fails, one thread per child waits for it."""
    import errno

    if failure == "missing":
        monkeypatch.delattr(os, "pidfd_open")
    else:
        code = getattr(errno, failure)

        def pidfd_open(pid: int, flags: int = 0) -> int:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    loop = ferroloop.new_event_loop()
    try:
        seen: list[list[str]] = []
        codes = _spawn_and_wait(loop, 10, seen)
        assert codes == [_expected_code(i) for i in range(10)]
        assert len(seen[0]) == 10
        for _ in range(100):  # the threads end once they have reported
            if not _waitpid_threads():
                break
            threading.Event().wait(0.01)
        assert not _waitpid_threads()
    finally:
        loop.close()


@pytest.mark.ferroloop_only
def test_child_reaped_elsewhere_reports_popen_status(ferroloop):
    """A child reaped by Popen itself (here the user's Popen.wait()) before the loop sees its
    pidfd: the status Popen recorded is reported (asyncio's watchers report 255)."""
    loop = ferroloop.new_event_loop()

    async def main() -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import sys; sys.exit(7)")
        popen = proc._transport.get_extra_info("subprocess")
        assert popen.wait() == 7  # blocking, in the loop thread: reaps the child first
        return popen.returncode, await proc.wait()

    try:
        assert loop.run_until_complete(main()) == (7, 7)
    finally:
        loop.close()


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` is no longer a child of ours (reaped), False if it stays."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid not in _children():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.ferroloop_only
@pytest.mark.parametrize("watch", ["pidfd", "thread"])
def test_loop_closed_while_children_run(ferroloop, caplog, monkeypatch, watch):
    """Closing the loop closes its pidfds at once; a child that already exited is reaped
    then, one still running is reaped by a thread when it exits (no zombie), as
    ThreadedChildWatcher would. Without pidfds, each child's own thread does the same."""
    import errno
    import warnings

    if watch == "thread":

        def pidfd_open(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, "no pidfd")

        monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    fds_before = _open_fds()
    loop = ferroloop.new_event_loop()

    async def start(code: str) -> asyncio.SubprocessTransport:
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, PY, "-c", code, stdin=None, stdout=None, stderr=None
        )
        return transport

    running = loop.run_until_complete(start("import time; time.sleep(0.5)"))
    exited = loop.run_until_complete(start("pass"))
    if watch == "pidfd":
        for _ in range(500):  # let it exit, without running the loop
            if _children().get(exited.get_pid()) == "Z":
                break
            threading.Event().wait(0.01)
        assert _children().get(exited.get_pid()) == "Z"  # a zombie until the loop reaps it
    else:
        assert _wait_gone(exited.get_pid())  # reaped by its thread, not reported yet
    with caplog.at_level("WARNING", logger="asyncio"):
        loop.close()
        assert _open_fds() == fds_before  # the loop's fds and both pidfds closed
        assert exited.get_pid() not in _children()  # reaped by close()
        assert running.get_pid() in _children()
        assert _wait_gone(running.get_pid())  # reaped by the thread once it exited
        for _ in range(100):
            if "is closed" in caplog.text:
                break
            threading.Event().wait(0.01)
    assert f"that handles pid {running.get_pid()} is closed" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        running.close()
        exited.close()


@pytest.mark.ferroloop_only
def test_fork_child_closing_loop_leaves_parent_watching(ferroloop):
    """A forked child that closes the inherited loop closes its copies of the pidfds and
    waits for nothing; the parent still sees its own child exit."""
    loop = ferroloop.new_event_loop()

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            PY, "-c", "import sys, time; time.sleep(0.3); sys.exit(5)"
        )

    try:
        proc = loop.run_until_complete(start())
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                loop.close()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert loop.run_until_complete(asyncio.wait_for(proc.wait(), 10)) == 5
    finally:
        loop.close()


def test_explicit_policy_child_watcher_is_used(loop):
    """A child watcher set on the policy (other than the lazily created default) is used,
    as asyncio uses it: asyncio.set_child_watcher() keeps its meaning on ferroloop."""

    class Recording(asyncio.ThreadedChildWatcher):
        def __init__(self) -> None:
            super().__init__()
            self.pids: list[int] = []

        def add_child_handler(self, pid, callback, *args):  # type: ignore[override]
            self.pids.append(pid)
            super().add_child_handler(pid, callback, *args)

    async def main() -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import sys; sys.exit(4)")
        return proc.pid, await proc.wait()

    policy = asyncio.get_event_loop_policy()
    saved = policy._watcher  # (get_child_watcher() would create one)
    watcher = Recording()
    asyncio.set_child_watcher(watcher)
    try:
        pid, code = loop.run_until_complete(main())
    finally:
        policy.set_child_watcher(saved)
    assert code == 4
    assert watcher.pids == [pid]


# -- wait() returns when the child exits, even while a grandchild holds its pipes -----------
#
# The child starts a grandchild that inherits its stdin, stdout and stderr, prints the
# grandchild's pid, waits for a line on stdin and exits with status 3. Stock asyncio 3.11 to
# 3.13.0 resolve a pending wait() only once every pipe has closed (CPython gh-119710): their
# side asserts that known behaviour. Later stock releases may carry gh-119710's fix, so their
# stock side is skipped. Every test kills the grandchild itself.

STOCK_WAITS_FOR_PIPES = sys.version_info < (3, 13, 1)

GRANDCHILD_SLEEPS = "import time; time.sleep(60)"
GRANDCHILD_WRITES_LATE = (
    "import sys, time; time.sleep(1);"
    " sys.stdout.write('late out\\n'); sys.stdout.flush(); sys.stderr.write('late err\\n')"
)
CHILD_WITH_GRANDCHILD = """
import subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1]])  # inherits fds 0, 1, 2
print(grandchild.pid, flush=True)
sys.stdin.readline()
sys.stderr.write("child err\\n")
sys.exit(3)
"""


def _wait_returns_at_exit(loop_kind: str) -> bool:
    """True where wait() returns when the child is reaped, False for stock asyncio 3.11 to
    3.13.0 (it returns when the pipes close); the stock side of later releases is skipped."""
    if loop_kind == "ferroloop":
        return True
    if not STOCK_WAITS_FOR_PIPES:
        pytest.skip(
            "stock asyncio after 3.13.0: wait() with a pipe held open depends on whether "
            "the release carries the fix of CPython gh-119710"
        )
    return False


async def _start_child_with_grandchild(grandchild: str = GRANDCHILD_SLEEPS, **pipes):
    """(process, grandchild pid) once the grandchild runs; stdin, stdout, stderr are pipes
    unless given."""
    for name in ("stdin", "stdout", "stderr"):
        pipes.setdefault(name, asyncio.subprocess.PIPE)
    proc = await asyncio.create_subprocess_exec(
        PY, "-c", CHILD_WITH_GRANDCHILD, grandchild, **pipes
    )
    return proc, int(await proc.stdout.readline())


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.01)


def _warm_up(loop) -> None:
    """One child first: the loop's lazily made fds and threads are not counted as leaks."""

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "pass", stdout=asyncio.subprocess.PIPE
        )
        await proc.communicate()

    loop.run_until_complete(main())


def test_wait_returns_at_exit_while_grandchild_holds_pipes(loop, loop_kind):
    """wait() pending before the exit returns 3 once the child is reaped, with the grandchild
    still holding stdin, stdout and stderr; returncode is 3 either way. Killing the grandchild
    closes the pipes; no zombie, no fd left."""
    at_exit = _wait_returns_at_exit(loop_kind)
    _warm_up(loop)
    fds_before = _open_fds()

    async def main():
        proc, gpid = await _start_child_with_grandchild()
        try:
            waiting = asyncio.ensure_future(proc.wait())
            await asyncio.sleep(0.05)
            assert not waiting.done() and proc.returncode is None
            proc.stdin.write(b"go\n")
            if at_exit:
                assert await asyncio.wait_for(asyncio.shield(waiting), 10) == 3
            else:
                # gh-119710: the return code is known, wait() stays pending...
                await _until(lambda: proc.returncode is not None)
                await asyncio.sleep(0.2)
                assert not waiting.done()
                # ...while a wait() called after the exit returns at once.
                assert await asyncio.wait_for(proc.wait(), 1) == 3
            assert proc.returncode == 3
            assert proc.pid not in _children()  # reaped: no zombie
            assert _children().get(gpid) is None  # not ours
            assert os.path.exists(f"/proc/{gpid}")  # still running, holding the pipes
        finally:
            _kill(gpid)
        assert await proc.stdout.read() == b""  # EOF: the grandchild is gone
        assert await proc.stderr.read() == b"child err\n"
        assert await asyncio.wait_for(waiting, 10) == 3
        await _until(lambda: proc._transport.is_closing())  # the protocol closes it at EOF
        await asyncio.sleep(0.05)  # the transport's connection_lost
        return proc

    proc = loop.run_until_complete(main())
    assert proc.returncode == 3
    assert _open_fds() == fds_before


def test_communicate_reads_late_output_of_grandchild(loop, loop_kind):
    """communicate() still reads both pipes to EOF: what the grandchild writes a second
    after the child exited is returned. A wait() beside it returns at the exit (ferroloop),
    before communicate() does."""
    _warm_up(loop)
    fds_before = _open_fds()

    async def main():
        proc, gpid = await _start_child_with_grandchild(GRANDCHILD_WRITES_LATE)
        try:
            communicating = asyncio.ensure_future(proc.communicate(b"go\n"))
            code = await asyncio.wait_for(proc.wait(), 10)
            communicate_done_at_exit = communicating.done()
            out, err = await asyncio.wait_for(communicating, 10)
        finally:
            _kill(gpid)
        return code, communicate_done_at_exit, out, err, proc.returncode

    code, communicate_done_at_exit, out, err, returncode = loop.run_until_complete(main())
    assert (code, returncode) == (3, 3)
    assert out == b"late out\n"  # (the pid line was read before communicate())
    assert err == b"child err\nlate err\n"
    if loop_kind == "ferroloop":
        assert not communicate_done_at_exit
    assert _open_fds() == fds_before


class _Recorder(asyncio.SubprocessProtocol):
    def __init__(self) -> None:
        self.events: list = []
        self.lines = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.events.append("connection_made")

    def pipe_data_received(self, fd, data):
        if fd == 1 and not self.lines.done():
            self.lines.set_result(data)

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_connection_lost", fd))

    def process_exited(self):
        self.events.append("process_exited")

    def connection_lost(self, exc):
        self.events.append("connection_lost")


def test_transport_wait_and_callback_order_with_pipe_held(loop, loop_kind):
    """On the transport: `_wait()` resolves after `process_exited` and before the pipes close;
    `get_returncode()` is 3 from the exit on; `connection_lost` still comes last, after every
    `pipe_connection_lost`."""
    at_exit = _wait_returns_at_exit(loop_kind)

    async def main():
        transport, proto = await loop.subprocess_exec(
            _Recorder, PY, "-c", CHILD_WITH_GRANDCHILD, GRANDCHILD_SLEEPS,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        gpid = int(await asyncio.wait_for(proto.lines, 10))
        try:
            waiting = asyncio.ensure_future(transport._wait())
            await asyncio.sleep(0.05)
            transport.get_pipe_transport(0).write(b"go\n")
            if at_exit:
                assert await asyncio.wait_for(asyncio.shield(waiting), 10) == 3
                assert proto.events == ["connection_made", "process_exited"]
            else:  # gh-119710
                await _until(lambda: transport.get_returncode() is not None)
                await asyncio.sleep(0.2)
                assert not waiting.done()
                assert proto.events == ["connection_made", "process_exited"]
            assert transport.get_returncode() == 3
            assert await transport._wait() == 3  # after the exit: at once
        finally:
            _kill(gpid)
        await _until(lambda: "connection_lost" in proto.events)
        assert await asyncio.wait_for(waiting, 10) == 3
        transport.close()
        return proto.events

    events = loop.run_until_complete(main())
    assert events[:2] == ["connection_made", "process_exited"]
    assert sorted(events[2:-1]) == [
        ("pipe_connection_lost", 0), ("pipe_connection_lost", 1), ("pipe_connection_lost", 2)
    ]  # fmt: skip
    assert events[-1] == "connection_lost"


def test_wait_twice_after_exit_and_cancelled(loop, loop_kind):
    """Two pending wait() calls both get 3; a wait() cancelled (directly, or by wait_for's
    timeout) raises CancelledError / TimeoutError and does not disturb the others; wait()
    after the exit returns 3 at once, repeatedly."""
    at_exit = _wait_returns_at_exit(loop_kind)

    async def main():
        proc, gpid = await _start_child_with_grandchild()
        try:
            first = asyncio.ensure_future(proc.wait())
            second = asyncio.ensure_future(proc.wait())
            cancelled = asyncio.ensure_future(proc.wait())
            await asyncio.sleep(0)
            cancelled.cancel()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.1)
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            if loop_kind == "ferroloop":  # cancelled calls leave nothing behind
                assert len(proc._transport._exit_waiters) == 2
            proc.stdin.write(b"go\n")
            if at_exit:
                both = asyncio.gather(first, second)
                assert await asyncio.wait_for(both, 10) == [3, 3]
            else:  # gh-119710
                await _until(lambda: proc.returncode is not None)
                assert not first.done() and not second.done()
            assert [await proc.wait() for _ in range(3)] == [3, 3, 3]
        finally:
            _kill(gpid)
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [3, 3]
        await proc.stdout.read()

    loop.run_until_complete(main())


@pytest.mark.ferroloop_only
@pytest.mark.parametrize("watch", ["thread", "explicit-watcher"])
def test_wait_returns_at_exit_on_every_watching_path(ferroloop, monkeypatch, watch):
    """The thread fallback (no pidfd) and a child watcher set on the policy make the same
    transport: wait() returns at the exit there too."""
    import errno
    import warnings

    policy = asyncio.get_event_loop_policy()
    saved = policy._watcher  # (get_child_watcher() would create one)

    def set_child_watcher(watcher) -> None:
        with warnings.catch_warnings():  # deprecated from 3.12 on
            warnings.simplefilter("ignore", DeprecationWarning)
            policy.set_child_watcher(watcher)

    if watch == "thread":

        def pidfd_open(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, "no pidfd")

        monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            set_child_watcher(asyncio.ThreadedChildWatcher())
    loop = ferroloop.new_event_loop()

    async def main():
        proc, gpid = await _start_child_with_grandchild()
        try:
            proc.stdin.write(b"go\n")
            assert await asyncio.wait_for(proc.wait(), 10) == 3
        finally:
            _kill(gpid)
        assert await proc.stdout.read() == b""
        return proc.pid

    try:
        pid = loop.run_until_complete(main())
        assert pid not in _children()
    finally:
        if watch == "explicit-watcher":
            set_child_watcher(saved)
        loop.close()


def test_wait_pending_when_the_runner_closes(loop_factory, loop_kind):
    """A task still in wait() when asyncio.Runner closes the loop is cancelled cleanly, and
    the child, killed afterwards, is reaped by the loop's reaper thread: no zombie. (Stock
    3.11's ThreadedChildWatcher reaps it too; 3.12+'s PidfdChildWatcher, on the closed loop,
    does not, so the test reaps it there.)"""
    with asyncio.Runner(loop_factory=loop_factory) as runner:

        async def start():
            proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
            waiting = asyncio.ensure_future(proc.wait())
            await asyncio.sleep(0.05)
            return proc, waiting

        proc, waiting = runner.run(start())
    assert waiting.cancelled()
    if hasattr(proc._transport, "_exit_waiters"):
        assert not [w for w in proc._transport._exit_waiters if not w.cancelled()]
    os.kill(proc.pid, signal.SIGKILL)
    if loop_kind == "ferroloop":
        assert _wait_gone(proc.pid)
    elif not _wait_gone(proc.pid, 2):
        try:
            os.waitpid(proc.pid, 0)
        except ChildProcessError:  # reaped meanwhile
            pass
    proc._transport.close()  # no pipes: nothing to schedule on the closed loop


def test_failed_pipe_connection_does_not_hang(loop, loop_kind, monkeypatch):
    """When connecting the child's pipes fails, subprocess_exec closes the transport, waits
    for the child and raises the error. Stock 3.11 to 3.13.0 wait for a wake-up that only
    the never-run pending calls would bring, and hang (CPython gh-125502, fixed by
    gh-140805)."""
    import errno
    import subprocess

    if loop_kind == "asyncio" and not STOCK_WAITS_FOR_PIPES:
        pytest.skip("stock asyncio after 3.13.0: depends on the release carrying gh-140805")
    real = loop.connect_read_pipe
    calls = []

    async def connect_read_pipe(factory, pipe):
        calls.append(pipe)
        if len(calls) == 2:  # stderr, after stdin and stdout connected
            raise OSError(errno.EMFILE, "too many open files")
        return await real(factory, pipe)

    monkeypatch.setattr(loop, "connect_read_pipe", connect_read_pipe)
    popens = []
    real_popen_init = subprocess.Popen.__init__

    def popen_init(self, *args, **kwargs):
        real_popen_init(self, *args, **kwargs)
        popens.append(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)

    async def main():
        return await asyncio.wait_for(
            asyncio.create_subprocess_exec(
                PY, "-c", "import time; time.sleep(60)", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            ),
            5 if loop_kind == "ferroloop" else 1,
        )  # fmt: skip

    if loop_kind == "ferroloop":
        with pytest.raises(OSError) as info:
            loop.run_until_complete(main())
        assert info.value.errno == errno.EMFILE
    else:
        with pytest.raises(asyncio.TimeoutError):  # gh-125502: hangs in transp._wait()
            loop.run_until_complete(main())
    [popen] = popens
    assert _wait_gone(popen.pid)  # killed by the transport's close(), reaped
    popen.stderr.close()  # never connected: asyncio leaves this file to the GC (both loops)


# -- several processes serving one port (SO_REUSEPORT) ---------------------------------------

REUSE_PORT_SERVER = """
import asyncio, os, signal, sys

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(IDENT + b" " + data)
        self.transport.close()

async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print("ready", type(loop).__module__, flush=True)
    await stop
    server.close()
    await server.wait_closed()
    print("stopped", flush=True)

IDENT = sys.argv[2].encode()
asyncio.run(main(int(sys.argv[1])))
"""


@pytest.mark.timeout(60)
def test_create_server_reuse_port_in_several_processes(loop_kind, tmp_path):
    """Three processes (run with `python -m ferroloop`, or plain python for the asyncio
    reference) serve one port with create_server(reuse_port=True): every connection is
    answered, more than one process answers, and all of them stop cleanly on SIGTERM."""
    import socket
    import subprocess

    script = tmp_path / "reuse_port_server.py"
    script.write_text(REUSE_PORT_SERVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = [PY, "-m", "ferroloop"] if loop_kind == "ferroloop" else [PY]
    servers = [
        subprocess.Popen(
            [*runner, str(script), str(port), f"server{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(3)
    ]
    loop_module = "ferroloop._loop" if loop_kind == "ferroloop" else "asyncio.unix_events"
    try:
        for proc in servers:
            line = proc.stdout.readline().decode()
            assert line.split() == ["ready", loop_module], line + proc.stdout.read().decode()
        answered: dict[str, int] = {}
        for i in range(300):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(b"ping %d" % i)
                reply = b""
                while chunk := conn.recv(100):
                    reply += chunk
            ident, _, echoed = reply.decode().partition(" ")
            assert echoed == f"ping {i}"
            answered[ident] = answered.get(ident, 0) + 1
        assert sum(answered.values()) == 300
        assert set(answered) <= {"server0", "server1", "server2"}
        assert len(answered) > 1, answered
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    for proc in servers:
        out = proc.communicate(timeout=20)[0].decode()
        assert proc.returncode == 0 and out.strip().endswith("stopped"), out
    with socket.socket() as s:  # every listener closed (TIME_WAIT connections remain)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
