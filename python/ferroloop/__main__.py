"""`python -m ferroloop script.py [args…]` / `python -m ferroloop -m module [args…]`.

Runs an unmodified asyncio program with ferroloop's policy installed, so every loop that
asyncio creates (asyncio.run, asyncio.new_event_loop, get_event_loop) is a ferroloop loop.
`sys.argv`, `sys.path[0]`, `__name__ == "__main__"` and the exit status are what
`python script.py` / `python -m module` would give.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import io
import os
import runpy
import sys
import types

from . import _install_quietly

USAGE = "usage: python -m ferroloop script.py [args...]\n       python -m ferroloop -m module [args...]\n"


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        raise SystemExit(0 if argv else 2)
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
