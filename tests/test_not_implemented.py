"""TRACKING MISSING FEATURES - not a specification.

Networking, subprocess and signal methods that ferroloop does not implement yet must
fail loudly with a NotImplementedError naming the method, never silently misbehave.
This file shrinks as the corresponding issues land: when a method is implemented,
delete its entry here and cover it with real tests (and CPython's suite in
tests/conformance).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket

import pytest

pytestmark = [pytest.mark.ferroloop_only, pytest.mark.timeout(10)]


def protocol_factory():
    return asyncio.Protocol()


def missing_calls(loop, sock, rfile, wfile):
    """method name -> a call with plausible arguments."""
    return {
        "connect_read_pipe": lambda: loop.connect_read_pipe(protocol_factory, rfile),
        "connect_write_pipe": lambda: loop.connect_write_pipe(protocol_factory, wfile),
        "subprocess_exec": lambda: loop.subprocess_exec(
            asyncio.SubprocessProtocol, "true"
        ),
        "subprocess_shell": lambda: loop.subprocess_shell(
            asyncio.SubprocessProtocol, "true"
        ),
        "add_signal_handler": lambda: loop.add_signal_handler(10, print),
        "remove_signal_handler": lambda: loop.remove_signal_handler(10),
    }


MISSING = list(missing_calls(None, None, None, None))


@pytest.fixture
def ferro_loop(ferroloop):
    loop = ferroloop.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("name", MISSING)
def test_missing_method_raises_not_implemented(ferro_loop, name):
    sock = socket.socket()
    sock.setblocking(False)
    r, w = os.pipe()
    rfile, wfile = os.fdopen(r, "rb"), os.fdopen(w, "wb")
    try:
        call = missing_calls(ferro_loop, sock, rfile, wfile)[name]

        async def attempt():
            result = call()
            if inspect.isawaitable(result):
                await result

        with pytest.raises(NotImplementedError, match=name):
            ferro_loop.run_until_complete(attempt())
        assert not ferro_loop.is_closed()
        # The loop is still fine afterwards.
        assert ferro_loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        sock.close()
        rfile.close()
        wfile.close()
