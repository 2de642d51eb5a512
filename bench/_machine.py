"""What the benchmark programs print about the machine and the loops they compare, and the
progress lines they show on stderr while they run."""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOISY_PCT = 10.0  # other busy CPU in a measured window, % of one core, that marks it disturbed


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


def cpu_us(pid: int) -> float:
    """utime + stime of the whole process (all threads), in µs, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1e6 / CLK_TCK


def machine_busy_us() -> float:
    """CPU time all cores spent not idle (first line of /proc/stat), in µs."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal
    return (sum(fields) - fields[3] - fields[4]) * 1e6 / CLK_TCK


def children_cpu_us() -> float:
    """User + system CPU of this process's children that were waited for, in µs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1e6


def git_revision() -> str | None:
    """The short commit of the checkout this file is in, or None outside git."""
    cmd = ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this benchmark was started, as `bench/NAME.py ARGS` (the interpreter left out:
    the results carry the Python version)."""
    args = sys.argv if argv is None else argv
    script = Path(args[0])
    shown = f"bench/{script.name}" if script.parent.name == "bench" else str(script)
    return shlex.join([shown, *args[1:]])


def machine_info() -> dict[str, Any]:
    """Date, machine, Python and commit, and the command: the header of every JSON result."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "command": command_line(),
    }


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


def fmt_duration(seconds: float) -> str:
    """45s, 1m20s, 1h02m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """One stderr line per finished cell of a long run, with the time spent and an estimate
    of the time left (from the mean time per cell so far):

        [12/45] ferroloop call_soon 83.1 ns (1m20s elapsed, ~2m57s left)
    """

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.stream = stream

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * max(self.total - self.done, 0)
        print(
            f"[{self.done}/{self.total}] {what} "
            f"({fmt_duration(elapsed)} elapsed, ~{fmt_duration(left)} left)",
            file=self.stream or sys.stderr,
            flush=True,
        )
