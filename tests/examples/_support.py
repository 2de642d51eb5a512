"""Shared helpers of the example tests (imported as `_support`: pytest puts this folder on
sys.path, as it has no __init__.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as module `example_<name>` (registered in sys.modules,
    which dataclasses need to resolve annotations); imported once per process."""
    module_name = f"example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def example_command(name: str, loop_kind: str, *args: str) -> list[str]:
    """The command running examples/<name>.py as a program: `python -m ferroloop <file>` on
    ferroloop, plain `python <file>` on stock asyncio."""
    runner = ["-m", "ferroloop"] if loop_kind == "ferroloop" else []
    return [sys.executable, *runner, str(EXAMPLES / f"{name}.py"), *args]
