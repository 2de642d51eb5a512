"""What the benchmark programs print about the machine and the loops they compare."""

from __future__ import annotations

import importlib
import platform
from collections.abc import Mapping


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loop_versions(loops: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Each loop's version: `loops` maps a loop's name to (module name, ...)."""
    out: dict[str, str] = {}
    for name, (module_name, *_) in loops.items():
        if name == "asyncio":
            out[name] = f"stdlib (Python {platform.python_version()})"
            continue
        try:
            module = importlib.import_module(module_name)
            out[name] = str(getattr(module, "__version__", "installed"))
        except ImportError:
            out[name] = "not installed"
    return out
