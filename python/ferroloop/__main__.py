"""`python -m ferroloop script.py [args…]` / `python -m ferroloop -m module [args…]`.

Runs an unmodified asyncio program with ferroloop's policy installed, so every loop that
asyncio creates (asyncio.run, asyncio.new_event_loop, get_event_loop) is a ferroloop loop.
`sys.argv`, `sys.path[0]`, `__name__ == "__main__"` and the exit status are what
`python script.py` / `python -m module` would give.

``--metrics-port PORT [--metrics-host HOST]`` (before the script) also serves
``GET /metrics``, the Prometheus text exposition of every ferroloop loop of the process
(`ferroloop.prometheus`), from a daemon thread (so a scrape is answered while the loop is
blocked), and makes new loops measure at level ``"callbacks"`` unless ``FERROLOOP_METRICS``
is set.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import io
import os
import runpy
import sys
import types
from typing import NoReturn

from . import _install_quietly

USAGE = (
    "usage: python -m ferroloop [--metrics-port PORT [--metrics-host HOST]] script.py [args...]\n"
    "       python -m ferroloop [--metrics-port PORT [--metrics-host HOST]] -m module [args...]\n"
    "\n"
    "  --metrics-port PORT  serve Prometheus metrics of the program's loops at\n"
    "                       http://HOST:PORT/metrics (0: a free port; the URL is printed)\n"
    "  --metrics-host HOST  address to bind (default 127.0.0.1)\n"
)

_OPTIONS = ("--metrics-port", "--metrics-host")


def _usage_error(message: str) -> NoReturn:
    sys.stderr.write(f"ferroloop: {message}\n{USAGE}")
    raise SystemExit(2)


def parse_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Splits ferroloop's own options (before the script or ``-m``) from the program's
    command line: ``({"--metrics-port": "8000", ...}, rest)``. Exits with status 2 (after a
    message) on an option missing its value or given twice."""
    options: dict[str, str] = {}
    while argv and argv[0].startswith("--metrics-"):
        name, eq, value = argv[0].partition("=")
        if name not in _OPTIONS:
            _usage_error(f"unknown option {name}")
        if not eq:
            if len(argv) < 2:
                _usage_error(f"{name} needs a value")
            value, argv = argv[1], argv[2:]
        else:
            argv = argv[1:]
        if name in options:
            _usage_error(f"{name} given twice")
        options[name] = value
    if "--metrics-host" in options and "--metrics-port" not in options:
        _usage_error("--metrics-host needs --metrics-port")
    return options, argv


def start_metrics(options: dict[str, str]) -> None:
    """Tracks the program's loops and serves their metrics (see the module documentation);
    prints the URL to stderr. Exits with status 2 on a bad port or address."""
    text = options["--metrics-port"]
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        _usage_error(f"--metrics-port must be a port number from 0 to 65535, not {text!r}")
    from . import metrics
    from ._metrics_server import serve

    host = options.get("--metrics-host", "127.0.0.1")
    try:
        url = serve(metrics.loops, host, port)
    except OSError as exc:
        sys.stderr.write(f"ferroloop: cannot serve metrics on {host} port {port}: {exc}\n")
        raise SystemExit(2) from None
    # Lag and slow callbacks for every loop the program makes (FERROLOOP_METRICS wins).
    metrics.set_default_level("callbacks")
    sys.stderr.write(f"ferroloop: metrics on {url}\n")
    sys.stderr.flush()


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        raise SystemExit(0 if argv else 2)
    options, argv = parse_options(argv)
    if not argv:
        _usage_error("no script or -m module given")
    if options:
        start_metrics(options)
    _install_quietly()
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.stderr.write(USAGE)
            raise SystemExit(2)
        sys.argv = argv[1:]
        # Like `python -m`: sys.argv[0] becomes the module's path, sys.path[0] the cwd.
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        run_script(os.path.abspath(argv[0]))


def run_script(path: str) -> None:
    """Run a file as `python path` does: a fresh `__main__` module whose `__file__` is the
    absolute path (Python 3.9+), with `sys.argv[0]` left as the user typed it (which
    `runpy.run_path` would overwrite)."""
    sys.path[0] = os.path.dirname(path)
    with io.open_code(path) as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=path,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __builtins__=builtins,
    )
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


if __name__ == "__main__":
    main(sys.argv[1:])
