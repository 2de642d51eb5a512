"""Per-loop child watching for `ferroloop.Loop` subprocesses (Linux pidfd, thread fallback).

asyncio 3.11's Unix loop hands every child to the policy's child watcher, by default a
`ThreadedChildWatcher`: one thread per child, blocked in `waitpid(pid)`. A ferroloop loop
watches its own children instead:

* **pidfd** (Linux 5.3+): `os.pidfd_open(pid)` is registered with the loop's native fd
  watcher; it becomes readable when the child has exited, and the child is then reaped with
  `waitpid(pid, WNOHANG)`: only that pid, never `waitpid(-1)`, so other children's statuses
  (a `subprocess.run` in a thread, another library's children) are never stolen. The pidfd
  is closed as soon as the child is reaped. No thread, no signal handler, one fd per child.
* **Thread fallback** when `pidfd_open` is missing or fails (`ENOSYS` on old kernels,
  `EPERM` under seccomp, `EMFILE` when out of fds): a daemon thread blocks in
  `waitpid(pid)` and hands the status back with `call_soon_threadsafe`, as
  `ThreadedChildWatcher` does.

Either way the transport is asyncio's own `_UnixSubprocessTransport` (subclassed by
`SubprocessTransport` below, which changes one thing: when `wait()` returns) and the return
code reaches it exactly as asyncio delivers it: `transp._process_exited(returncode)` with
`os.waitstatus_to_exitcode` (negative for a signal), two loop iterations after the exit is
seen (asyncio's `_child_watcher_callback` skips one iteration so pipe callbacks of the same
iteration run first). Argument checks (`text=True` refused, ...) stay asyncio's, in
`subprocess_exec/_shell` and `Popen`.

`wait()` returns once the child has exited (`SubprocessTransport`): asyncio 3.11-3.13.0 wake
`Process.wait()` only in `_call_connection_lost`, after every pipe has closed, so a
grandchild that inherited the child's stdin, stdout or stderr kept `wait()` pending after the
child was reaped and `returncode` was known (CPython gh-119710).

Races and lifetimes:

* A child that exits before its pidfd is registered is a zombie until reaped, so
  `pidfd_open` still succeeds and the pidfd is readable at once. If it was already reaped by
  someone else (`ProcessLookupError`), or `waitpid` finds nothing (`ChildProcessError`: e.g.
  `transport.close()` calls `Popen.poll()`, or the user called `Popen.wait()`), the status
  `Popen` recorded is reported when it has one, otherwise 255 with asyncio's warning.
* Loop closed while children run: the loop's pidfds are all closed (no fd outlives the
  loop). A child that already exited is reaped there and then; one still running is handed
  to a daemon thread that reaps it whenever it exits (what `ThreadedChildWatcher`'s thread
  would do), so no zombie is left behind; its status has nowhere to go, and is logged as
  asyncio logs it. Children on the thread fallback keep their thread, which does the same.
* Fork: a loop that crossed `os.fork()` refuses to run in the child (native core). Closing it
  there closes the child's copies of the pidfds, removes the watchers without touching the
  parent's epoll registrations, and waits for nothing: those children are the parent's.
* An explicitly installed child watcher (`asyncio.set_child_watcher(SafeChildWatcher())`, a
  `FastChildWatcher`, a custom one) is honoured: asyncio's own steps then run through it
  (`with watcher`, `is_active()`, `add_child_handler(pid, self._child_watcher_callback, ...)`,
  the running version's callback), with the same transport class, so programs and tests that
  choose a watcher get it. This matters most for the watchers that
  call `waitpid(-1)` (Fast, MultiLoop), which would otherwise steal our children's statuses.
  The policy's default `ThreadedChildWatcher`, created lazily by `get_child_watcher()`, is
  replaced by the loop's own watching.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from asyncio import events, unix_events
from typing import Any

logger = logging.getLogger("asyncio")

# What `_reap_nohang` returns while the child is still running.
_NOT_EXITED = object()


def _explicit_child_watcher() -> Any:
    """The child watcher set on asyncio's policy, unless it is the default one.

    Reads the policy's attribute rather than calling `get_child_watcher()`, which would
    create a `ThreadedChildWatcher` (and warns from Python 3.12 on)."""
    policy = getattr(events, "_event_loop_policy", None)
    watcher = getattr(policy, "_watcher", None)
    if watcher is None or type(watcher) in _DEFAULT_WATCHERS:
        return None
    return watcher


# The watchers asyncio's policy creates by itself: 3.11 a ThreadedChildWatcher; 3.12 and 3.13
# a PidfdChildWatcher where pidfd_open works, else a ThreadedChildWatcher (the policy's
# `_init_watcher`). Neither depends on a loop, and ferroloop's own watching does what they do
# (pidfd, else a thread per child), so a default one left on the policy by any earlier
# `get_child_watcher()` call does not take over. 3.14 removed child watchers (not run here).
_DEFAULT_WATCHERS = tuple(
    getattr(unix_events, name)
    for name in ("ThreadedChildWatcher", "PidfdChildWatcher")
    if hasattr(unix_events, name)
)


def _reap_nohang(pid: int) -> Any:
    """`waitpid(pid, WNOHANG)`: the return code, `_NOT_EXITED`, or None if the child was
    already reaped elsewhere."""
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if wpid == 0:
        return _NOT_EXITED
    return os.waitstatus_to_exitcode(status)


def _returncode_reaped_elsewhere(pid: int, transp: Any) -> int:
    """The return code of a child whose status someone else consumed."""
    proc = getattr(transp, "_proc", None)
    returncode = None if proc is None else proc.returncode
    if returncode is None:
        # asyncio's child watchers report the same.
        logger.warning("Unknown child process pid %d, will report returncode 255", pid)
        return 255
    return int(returncode)


def _wait_blocking(pid: int) -> int | None:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def _reap_orphan(loop: Any, pid: int) -> None:
    """Thread body: reap a child whose loop was closed while it ran."""
    returncode = _wait_blocking(pid)
    logger.warning(
        "Loop %r that handles pid %r is closed (the child exited with returncode %r)",
        loop,
        pid,
        returncode,
    )


def _start_daemon(name: str, target: Any, *args: Any) -> None:
    threading.Thread(target=target, args=args, name=name, daemon=True).start()


def _policy_child_watcher() -> Any:
    """`asyncio.get_child_watcher()`, as asyncio's `_make_subprocess_transport` calls it."""
    if sys.version_info >= (3, 12):
        # 3.12 deprecated child watchers; asyncio's own call silences the warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return events.get_child_watcher()
    return events.get_child_watcher()


class SubprocessTransport(unix_events._UnixSubprocessTransport):
    """asyncio's Unix subprocess transport, with `wait()` returning when the child exits.

    asyncio 3.11.7, 3.12.1 and 3.13.0 (`base_subprocess.BaseSubprocessTransport`, the same in
    all three for what follows) resolve the futures `_wait()` hands out in
    `_call_connection_lost` only, which runs once the child has exited *and* every pipe has
    closed. A grandchild that inherited the child's stdin, stdout or stderr keeps a pipe open
    after the child is reaped, so `Process.wait()` stayed pending although `returncode` was
    known, while a `wait()` called after the exit returned at once (`_wait` checks
    `_returncode` first). The documentation says `wait()` waits for the process to
    terminate; uvloop and `subprocess.Popen.wait()` return at exit. CPython gh-119710 (a later
    release) moved the wake-up into `_process_exited`; this does the same on every version.

    Order is asyncio's: `_process_exited` schedules the protocol's `process_exited` (and,
    when no pipe is left open, `connection_lost`) before the waiters are resolved, so a task
    awaiting `wait()` resumes after those callbacks. `connection_lost` itself still waits for
    the pipes, and `Process.communicate()` still reads them to EOF before it waits.

    Resolving the waiters here, not through `_call()`, also covers a transport whose
    `_connect_pipes` failed or was cancelled: its pending calls never run, so asyncio's own
    wake-up never came and `_make_subprocess_transport`'s `await transp._wait()` could hang
    (CPython gh-125502, gh-140805). Only waiters that are not done are resolved, so releases
    that already wake them (gh-140805's `_try_finish`, gh-119710) are left as they are.
    """

    def _process_exited(self, returncode: int) -> None:
        super()._process_exited(returncode)
        waiters = self._exit_waiters
        if waiters:
            # A fresh list: `_call_connection_lost` calls set_result() on every waiter it
            # finds there that is not cancelled, which raises InvalidStateError for one
            # already resolved (CPython gh-145541).
            self._exit_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(self._returncode)

    async def _wait(self) -> Any:
        """asyncio's `_wait`, which also forgets the future of a cancelled call (asyncio keeps
        each one until the child exits, so `wait_for(proc.wait(), t)` in a loop grows the
        list)."""
        if self._returncode is not None:
            return self._returncode
        waiter = self._loop.create_future()
        self._exit_waiters.append(waiter)
        try:
            return await waiter
        finally:
            waiters = self._exit_waiters
            if waiter.cancelled() and waiters and waiter in waiters:
                waiters.remove(waiter)


class ProcessMixin:
    """`_make_subprocess_transport` with the loop's own child watching (see the module)."""

    # Declared for type checkers; provided by LoopCore / NetworkingMixin.
    _add_reader: Any
    _remove_reader: Any
    call_soon: Any
    call_soon_threadsafe: Any
    create_future: Any
    get_debug: Any

    # pid -> (pidfd or None for the thread fallback, transport). Created on first use, with
    # the pid of the process that created it (children belong to that process only).
    _child_watches: dict[int, tuple[int | None, Any]] | None = None
    _child_watches_owner = 0

    async def _make_subprocess_transport(
        self,
        protocol: Any,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: Any = None,
        **kwargs: Any,
    ) -> Any:
        if _explicit_child_watcher() is None:
            return await self._start_subprocess(
                None, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
            )
        # asyncio's steps (unix_events `_make_subprocess_transport`) through the chosen watcher.
        watcher = _policy_child_watcher()
        with watcher as entered:
            if sys.version_info < (3, 12):
                # 3.11 uses what `__enter__` returns (`with get_child_watcher() as watcher`);
                # 3.12 and 3.13 the watcher itself.
                watcher = entered
            if not watcher.is_active():
                raise RuntimeError(
                    "asyncio.get_child_watcher() is not activated, "
                    "subprocess support is not installed."
                )
            return await self._start_subprocess(
                watcher, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
            )

    async def _start_subprocess(
        self,
        watcher: Any,
        protocol: Any,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: Any,
        kwargs: dict[str, Any],
    ) -> Any:
        waiter = self.create_future()
        transp = SubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs,
        )  # fmt: skip
        if watcher is None:
            self._watch_child(transp.get_pid(), transp)
        else:
            watcher.add_child_handler(transp.get_pid(), self._child_watcher_callback, transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    # ------------------------------------------------------------------ watching

    def _watch_child(self, pid: int, transp: Any) -> None:
        watches = self._child_watches
        if watches is None:
            watches = self._child_watches = {}
            self._child_watches_owner = os.getpid()
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Reaped by someone else between Popen and here.
            self._child_exited(pid, transp, _returncode_reaped_elsewhere(pid, transp))
            return
        except (AttributeError, OSError):
            # No pidfd_open (not Linux), or refused (ENOSYS, EPERM, EMFILE...).
            self._watch_child_in_thread(pid, transp)
            return
        watches[pid] = (pidfd, transp)
        try:
            self._add_reader(pidfd, self._child_pidfd_ready, pid)
        except BaseException as exc:
            del watches[pid]
            os.close(pidfd)
            if not isinstance(exc, OSError):
                raise
            self._watch_child_in_thread(pid, transp)  # epoll refused it (ENOMEM, ENOSPC)

    def _watch_child_in_thread(self, pid: int, transp: Any) -> None:
        assert self._child_watches is not None
        self._child_watches[pid] = (None, transp)
        _start_daemon(f"ferroloop-waitpid-{pid}", self._wait_child_thread, pid)

    def _wait_child_thread(self, pid: int) -> None:
        """Thread body of the fallback: block in waitpid(pid), report to the loop."""
        returncode = _wait_blocking(pid)
        try:
            self.call_soon_threadsafe(self._child_thread_done, pid, returncode)
        except RuntimeError:  # the loop was closed meanwhile
            logger.warning("Loop %r that handles pid %r is closed", self, pid)

    def _child_thread_done(self, pid: int, returncode: int | None) -> None:
        watches = self._child_watches
        entry = None if watches is None else watches.pop(pid, None)
        if entry is None:
            return
        transp = entry[1]
        if returncode is None:
            returncode = _returncode_reaped_elsewhere(pid, transp)
        self._child_exited(pid, transp, returncode)

    def _child_pidfd_ready(self, pid: int) -> None:
        watches = self._child_watches
        entry = None if watches is None else watches.pop(pid, None)
        if entry is None:
            return
        pidfd, transp = entry
        assert pidfd is not None
        self._remove_reader(pidfd)
        os.close(pidfd)
        returncode = _reap_nohang(pid)
        if returncode is _NOT_EXITED:
            # Readable but not reapable: not expected from the kernel; never spin on it.
            self._watch_child_in_thread(pid, transp)
            return
        if returncode is None:
            returncode = _returncode_reaped_elsewhere(pid, transp)
        self._child_exited(pid, transp, returncode)

    def _child_exited(self, pid: int, transp: Any, returncode: int) -> None:
        if self.get_debug():
            logger.debug("process %s exited with returncode %s", pid, returncode)
        # As asyncio's _child_watcher_callback: skip one iteration for callbacks to run.
        self.call_soon(self.call_soon, transp._process_exited, returncode)

    # ------------------------------------------------------------------- closing

    def _close_networking(self) -> None:
        """Part of close() (the hook Loop.close calls): stop watching children."""
        self._close_child_watches()
        super()._close_networking()  # type: ignore[misc]

    def _close_child_watches(self) -> None:
        watches = self._child_watches
        if not watches:
            return
        self._child_watches = None
        ours = self._child_watches_owner == os.getpid()  # False in a forked child
        for pid, (pidfd, _transp) in watches.items():
            if pidfd is None:
                continue  # the fallback thread reaps it and finds the loop closed
            self._remove_reader(pidfd)
            os.close(pidfd)
            if not ours:
                continue
            returncode = _reap_nohang(pid)
            if returncode is _NOT_EXITED:
                _start_daemon(f"ferroloop-reap-{pid}", _reap_orphan, self, pid)
            elif self.get_debug():
                logger.debug(
                    "process %s exited with returncode %s (reaped as the loop closed)",
                    pid,
                    returncode,
                )
