"""`ferroloop.Loop`: the native `LoopCore` plus the per-loop logic asyncio keeps in Python.

The hot paths (ready queue, timers, polling, `call_soon*`, `time`, `create_future`,
`create_task`, fd watchers, the run loop itself) are native, in `LoopCore`. This module adds
what runs once per loop or per error: running and stopping, exception handling, executors,
async generator hooks, debug-mode bookkeeping. Semantics are CPython 3.11's
`asyncio.base_events.BaseEventLoop`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import sys
import threading
import time
import traceback
import warnings
import weakref
from asyncio import base_events, constants, coroutines, events, format_helpers, futures, tasks
from asyncio import timeout as _timeout
from collections.abc import Callable
from typing import Any

from . import metrics as _metrics
from ._ferroloop import LoopCore
from ._helpers import format_handle
from ._net import NetworkingMixin
from ._process import ProcessMixin
from ._sock import SocketMixin

logger = logging.getLogger("asyncio")

_ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


if sys.version_info >= (3, 12):

    def _run_exception_handler(
        handler: _ExceptionHandler, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
    ) -> None:
        """3.12+: a custom handler runs in the context of the task, future or handle the
        error came from (asyncio 3.12's `call_exception_handler`, gh-91994)."""
        thing = context.get("task")
        if thing is None:
            thing = context.get("future")
        if thing is None:
            thing = context.get("handle")
        ctx = thing.get_context() if thing is not None and hasattr(thing, "get_context") else None
        if ctx is not None and hasattr(ctx, "run"):
            ctx.run(handler, loop, context)
        else:
            handler(loop, context)

else:

    def _run_exception_handler(
        handler: _ExceptionHandler, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
    ) -> None:
        handler(loop, context)


def _set_exception_unless_done(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _own_stop_when_done(fut: asyncio.Future[Any]) -> None:
    """Done callback of `run_until_complete`: stop the future's loop."""
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # run_forever() re-raises these itself; stopping here would swallow them.
            return
    futures._get_loop(fut).stop()


# asyncio's own done callback (3.11-3.14 have it, with the code above): libraries find the
# task `run_until_complete` runs by it (anyio looks for `_run_until_complete_cb` among the
# task's callbacks to identify its main task).
_stop_when_done = getattr(base_events, "_run_until_complete_cb", _own_stop_when_done)


class Loop(ProcessMixin, SocketMixin, NetworkingMixin, LoopCore, asyncio.AbstractEventLoop):
    """A drop-in replacement for asyncio's event loop, with a native core."""

    def __init__(self) -> None:
        self._exception_handler: _ExceptionHandler | None = None
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth: int | None = None
        self._old_agen_hooks: Any = None
        self._recent_slow_callbacks: collections.deque[_metrics.SlowCallback] = collections.deque(
            maxlen=_metrics.RECENT_SLOW_CALLBACKS
        )
        self._watchdog: _metrics.SlowCallbackWatchdog | None = None
        self._set_metrics_level(_metrics.default_level())
        _metrics.register(self)
        self._init_networking()
        self.set_debug(coroutines._is_debug_mode())
        # A subclass with its own clock: timers follow it, as asyncio's follow `self.time()`.
        self._set_time_overridden(type(self).time is not LoopCore.time)
        if sys.version_info < (3, 12) and type(self).call_soon is LoopCore.call_soon:
            # CPython 3.11's C Task and Future look `loop.call_soon` up as an attribute for
            # every step and done callback, allocating a bound method each time. An instance
            # attribute is found first and allocates nothing (3.12 calls the method directly).
            # The cost: the loop is in a reference cycle, so it is freed by the cycle
            # collector rather than at once (close() still releases everything at once).
            self.call_soon = LoopCore.call_soon.__get__(self, type(self))

    if sys.version_info >= (3, 13, 3):

        def create_task(self, coro: Any, **kwargs: Any) -> Any:
            """3.13.3+ and 3.14: every keyword argument goes to the task factory, or to
            `asyncio.Task` (gh-128308, backported to 3.13.3; written from the source, not run
            here: this machine has 3.13.0). The common case (no factory; name/context at
            most) stays native."""
            factory = self.get_task_factory()
            if factory is None and kwargs.keys() <= {"name", "context"}:
                return LoopCore.create_task(self, coro, **kwargs)
            self._check_closed()
            if factory is not None:
                return factory(self, coro, **kwargs)
            return tasks.Task(coro, loop=self, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        # `loop.time` replaced on the instance (`mock.patch.object(loop, "time")`, virtual
        # clocks in test tools): the native core then reads the loop's time through it.
        object.__setattr__(self, name, value)
        if name == "time":
            self._set_time_overridden(True)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        if name == "time":
            self._set_time_overridden(type(self).time is not LoopCore.time)

    @property
    def _closed(self) -> bool:
        """asyncio's (and uvloop's) private `_closed`, which tests and libraries read."""
        return bool(self.is_closed())

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # ----------------------------------------------------------------- running

    def _check_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def _run_forever_setup(self) -> None:
        """Everything run_forever() does before it starts polling (3.13 made this a method of
        its own, for loops that embed asyncio in a GUI's event loop; present on every version
        here)."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._set_running_thread(True)
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        # Before the loop counts as running: starting a thread waits on a lock, which tools
        # that flag blocking calls in a running loop (blockbuster) would report.
        self._start_watchdog()
        events._set_running_loop(self)

    def _run_forever_cleanup(self) -> None:
        """Everything run_forever() does after it stops (3.13's counterpart of the above)."""
        self._set_running_thread(False)
        events._set_running_loop(None)
        self._stop_watchdog()
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def run_forever(self) -> None:
        """Run until stop() is called."""
        self._run_forever_setup()
        try:
            self._run_forever_native()
        finally:
            self._run_forever_cleanup()

    def run_until_complete(self, future: Any) -> Any:
        """Run until the future (or coroutine, wrapped in a task) is done; return its result."""
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # An exception here is re-raised to the caller: don't also log it as lost.
            future._log_destroy_pending = False
        future.add_done_callback(_stop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                # The caller sees the exception raised out of run_forever(); mark the task's
                # own exception retrieved so it is not reported a second time.
                future.exception()
            raise
        finally:
            future.remove_done_callback(_stop_when_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self) -> None:
        """Close the loop: drop pending callbacks, release the poller, shut the default
        executor down without waiting. Idempotent; not allowed while running."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        self._close_networking()
        self._close_native()
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    # ------------------------------------------------------------------ debug

    def set_debug(self, enabled: bool) -> None:
        self._set_debug_flag(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(constants.DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(
                self._coroutine_origin_tracking_saved_depth or 0
            )
        self._coroutine_origin_tracking_enabled = enabled

    # ---------------------------------------------------------------- metrics

    def metrics(self) -> _metrics.LoopMetrics:
        """A snapshot of what the loop measured (`ferroloop.metrics.LoopMetrics`). Cheap,
        and safe to call from any thread, also while the loop is blocked in a callback."""
        return _metrics.snapshot(self, tuple(self._recent_slow_callbacks))

    def get_metrics_level(self) -> str:
        """``"off"``, ``"loop"`` or ``"callbacks"`` (see `ferroloop.metrics`)."""
        return self._get_metrics_level()

    def set_metrics_level(self, level: str) -> None:
        """How much the loop measures: ``"off"``, ``"loop"`` (the default) or
        ``"callbacks"`` (see `ferroloop.metrics`). Raises ValueError for another value and
        TypeError for a non-str. Counters keep their values across changes; the
        slow-callback watchdog follows a change at the next `run_forever`."""
        if not isinstance(level, str):
            raise TypeError(f"metrics level must be a str, not {type(level).__name__}")
        self._set_metrics_level(level)

    def _times_callbacks(self) -> bool:
        return self.get_debug() or self._get_metrics_level() == "callbacks"

    def _start_watchdog(self) -> None:
        """Starts the slow-callback watchdog for this run if the loop times callbacks."""
        if self._watchdog is None and self._times_callbacks():
            self._watchdog = _metrics.SlowCallbackWatchdog(self, threading.get_ident())
            self._watchdog.start()

    def _stop_watchdog(self) -> None:
        """Ends the watchdog and waits for its thread (at once: it waits on an event), so no
        thread of the loop outlives the run (tests count threads). Called once the loop no
        longer counts as running, where tools that flag blocking calls do not look."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.stop()
            watchdog.join(1.0)

    def _on_slow_callback(self, handle: Any, seconds: float, seq: int) -> None:
        """Called by the core for a callback that ran at least slow_callback_duration
        (debug mode, or metrics level "callbacks"): records it, and logs asyncio's warning
        with the line the loop was blocked at."""
        try:
            watchdog = self._watchdog
            stack = watchdog.take_sample(seq) if watchdog is not None else None
            text = format_handle(handle)
            record = _metrics.describe_slow_callback(handle, text, seconds, time.monotonic(), stack)
        except Exception:  # never let reporting break the loop
            logger.exception("ferroloop: recording a slow callback failed")
            return
        if self._get_metrics_level() != "off":
            self._recent_slow_callbacks.append(record)
        if record.stack:
            where = f"; blocked at {record.location}"
        elif record.location is not None:
            where = f"; the task is now at {record.location}"
        else:
            where = ""
        logger.warning("Executing %s took %.3f seconds%s", text, seconds, where)

    # ------------------------------------------------------------- exceptions

    def _report_callback_exception(self, handle: Any, exc: BaseException) -> None:
        """Called by the core when a callback raised (asyncio's Handle._run)."""
        callback = format_helpers._format_callback_source(handle._callback, handle._args)
        context: dict[str, Any] = {
            "message": f"Exception in callback {callback}",
            "exception": exc,
            "handle": handle,
        }
        source = handle._source_traceback
        if source:
            context["source_traceback"] = source
        self.call_exception_handler(context)

    def get_exception_handler(self) -> _ExceptionHandler | None:
        return self._exception_handler

    def set_exception_handler(self, handler: _ExceptionHandler | None) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log the context at ERROR level on the 'asyncio' logger, as asyncio does."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = False
        if exception is not None:
            exc_info = (type(exception), exception, exception.__traceback__)
        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            lines.append(f"{key}: {self._format_context_value(key, context[key])}")
        logger.error("\n".join(lines), exc_info=exc_info)

    @staticmethod
    def _format_context_value(key: str, value: Any) -> str:
        titles = {
            "source_traceback": "Object created at (most recent call last):\n",
            "handle_traceback": "Handle created at (most recent call last):\n",
        }
        if key in titles:
            return titles[key] + "".join(traceback.format_list(value)).rstrip()
        return repr(value)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Pass the context to the handler set with set_exception_handler() (or the default
        one); a handler that fails is itself reported, never propagated (but SystemExit and
        KeyboardInterrupt are)."""
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            _run_exception_handler(handler, self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )

    # -------------------------------------------------------------- executors

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        self._check_closed()
        if self.get_debug():
            if coroutines.iscoroutine(func) or coroutines.iscoroutinefunction(func):
                raise TypeError("coroutines cannot be used with run_in_executor()")
            if not callable(func):
                raise TypeError(
                    f"a callable object was expected by run_in_executor(), got {func!r}"
                )
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: Any) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Shut the default executor down, waiting for its threads in a helper thread.

        `timeout` (seconds, or None to wait for ever) is 3.12's parameter; 3.11 callers never
        pass it. When it expires, a RuntimeWarning is issued and the executor is shut down
        without waiting (asyncio 3.13's `base_events.shutdown_default_executor`, whose
        timeout also bounds the wait for the future, where 3.12.1 only bounds the join).
        """
        self._executor_shutdown_called = True
        if self._default_executor is None:
            return
        done = self.create_future()
        waiter = threading.Thread(target=self._shutdown_executor_in_thread, args=(done,))
        waiter.start()
        try:
            async with _timeout(timeout):
                await done
        except TimeoutError:
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._default_executor.shutdown(wait=False)
        else:
            waiter.join()

    def _shutdown_executor_in_thread(self, done: asyncio.Future[None]) -> None:
        executor = self._default_executor
        try:
            if executor is not None:
                executor.shutdown(wait=True)
        except Exception as exc:
            if not self.is_closed() and not done.cancelled():
                self.call_soon_threadsafe(_set_exception_unless_done, done, exc)
        else:
            if not self.is_closed():
                self.call_soon_threadsafe(futures._set_result_unless_cancelled, done, None)

    # ------------------------------------------------------ async generators

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
                stacklevel=1,  # as asyncio: the warning names the hook, the source names us
            )
        self._asyncgens.add(agen)

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self) -> None:
        """Close every async generator still alive (asyncio.run calls this at the end)."""
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[agen.aclose() for agen in closing], return_exceptions=True)
        for result, agen in zip(results, closing, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )
