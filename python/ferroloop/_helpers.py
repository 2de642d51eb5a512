"""Python helpers the native core calls on cold paths (debug mode, reprs, errors).

Nothing here runs per callback in normal (non-debug) operation."""

from __future__ import annotations

import sys
import warnings
from asyncio import coroutines, format_helpers, tasks
from typing import Any


def capture_stack() -> Any:
    """The caller's stack as asyncio records it for `_source_traceback` (debug mode)."""
    # Frame 0 is this helper; frame 1 is the Python code that called into the loop
    # (native frames do not appear in the stack).
    return format_helpers.extract_stack(sys._getframe(1))


def check_callback(callback: Any, method: str) -> None:
    """asyncio's debug-mode check that a coroutine was not passed as a callback."""
    if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
        raise TypeError(f"coroutines cannot be used with {method}()")


def set_task_name(task: Any, name: Any) -> None:
    """Names a task made by a task factory, as asyncio's `_set_task_name` does."""
    try:
        set_name = task.set_name
    except AttributeError:
        warnings.warn(
            "Task.set_name() was added in Python 3.8, the method support will be "
            "mandatory for third-party task implementations since 3.13.",
            DeprecationWarning,
            stacklevel=3,
        )
    else:
        set_name(name)


def handle_repr(handle: Any) -> str:
    """`<Handle cb() at file:line>` / `<TimerHandle when=... cb()>`, like asyncio's reprs."""
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    when = getattr(handle, "_when", None)
    if when is not None:
        info.append(f"when={when}")
    callback = handle._callback
    if callback is not None:
        info.append(format_helpers._format_callback_source(callback, handle._args))
    source = handle._source_traceback
    if source:
        frame = source[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def format_handle(handle: Any) -> str:
    """A handle for the slow-callback warning: a task step shows the task instead."""
    callback = handle._callback
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, tasks.Task):
        return repr(owner)
    return str(handle)
