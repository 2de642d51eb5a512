"""`python -m ferroloop script.py [args…]` / `python -m ferroloop -m module [args…]`.

Runs an unmodified asyncio program with ferroloop's policy installed, so every loop that
asyncio creates (asyncio.run, asyncio.new_event_loop, get_event_loop) is a ferroloop loop.
`sys.argv`, `sys.path[0]`, `__name__ == "__main__"` and the exit status are what
`python script.py` / `python -m module` would give.
"""

from __future__ import annotations

import os
import runpy
import sys

from . import install

USAGE = "usage: python -m ferroloop script.py [args...]\n       python -m ferroloop -m module [args...]\n"


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        raise SystemExit(0 if argv else 2)
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.stderr.write(USAGE)
            raise SystemExit(2)
        sys.argv = argv[1:]
        # Like `python -m`: sys.argv[0] becomes the module's path, sys.path[0] the cwd.
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        # Since 3.9 `python script.py` gives __main__ an absolute __file__; argv[0] stays as typed.
        script = os.path.abspath(argv[0])
        sys.argv = argv
        sys.path[0] = os.path.dirname(script)
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
