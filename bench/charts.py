"""Draws the side-by-side benchmark results as PNG charts (matplotlib, Agg backend).

    python bench/charts.py bench/results/versions-2026-11-29/*.json --out DIR

Reads the JSON files that bench/micro.py, bench/http.py and bench/echo.py write (any mix;
one file per Python version or run, told apart by the Python version in each file) and
draws, for the kinds of results given:

    micro-ratios.png  each loop's CPU ns per operation / uvloop's, per case, one bar per
                      Python version, a panel per loop (asyncio, ferroloop, ...)
    micro-ns.png      CPU ns per operation of every loop, per case, a panel per Python version
    http.png          req/s and server CPU µs per request of every loop, per Python version
    echo.png          server CPU per request / the native Rust floor's, per size and server
                      style, every loop, a panel per Python version

A cell that was not measured (a loop not installed or failing, a case a Python version
lacks, no uvloop or floor to divide by) is drawn as "n/a", never as a zero bar. Every
chart's footer carries the date, the machine, the commit and the command of its data.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from _machine import NOISY_PCT

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

DPI = 100
DISTURBED = f"* other processes busy\n  (> {NOISY_PCT:g}% of a core)"
FOOTER_PT = 6.5  # monospace; a character is about 0.6 of that wide
LOOP_COLORS = {
    "asyncio": "#8c8c8c",
    "uvloop": "#3a78b5",
    "ferroloop": "#d95f02",
    "rloop": "#2ca02c",
}
SERIES_COLORS = ("#9ecae1", "#4a98c9", "#1764ab", "#08306b", "#6a51a3", "#cb181d")
Key = tuple[str, str]  # (group, series)


# --------------------------------------------------------------------------
# Result files
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One benchmark's JSON result file."""

    path: Path
    kind: str  # "micro", "http" or "echo"
    doc: dict[str, Any]
    label: str = ""  # the series name: "Python 3.12" (plus the time when that is ambiguous)

    @property
    def machine(self) -> dict[str, Any]:
        machine: dict[str, Any] = self.doc.get("machine", {})
        return machine

    @property
    def python(self) -> str:
        return str(self.machine.get("python", "?"))


def kind_of(doc: dict[str, Any]) -> str | None:
    """Which benchmark wrote `doc` (files written before the "benchmark" field included)."""
    if "benchmark" in doc:
        return str(doc["benchmark"])
    if "cells" in doc and "params" in doc:
        return "echo"
    if "results" in doc and "settings" in doc and "loops" in doc:
        return "micro"
    return None


def load(paths: Iterable[Path]) -> list[Source]:
    """The result files of known kinds, labelled, in Python version order."""
    sources = []
    for path in paths:
        doc = json.loads(path.read_text())
        kind = kind_of(doc) if isinstance(doc, dict) else None
        if kind is None:
            print(f"skipped {path}: not a micro, http or echo result", file=sys.stderr)
            continue
        sources.append(Source(path, kind, doc))
    sources.sort(key=lambda s: (version_key(s.python), s.machine.get("date", "")))
    return label_sources(sources)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def label_sources(sources: list[Source]) -> list[Source]:
    """Series names: the Python version, plus the run's time where a kind has two runs of
    the same version."""
    out = []
    for s in sources:
        twins = [t for t in sources if t.kind == s.kind and t.python == s.python]
        label = f"Python {s.python}"
        if len(twins) > 1:
            label += f" ({str(s.machine.get('date', s.path.stem))[:16]})"
        out.append(Source(s.path, s.kind, s.doc, label))
    return out


def unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def footer(sources: Sequence[Source], width: int) -> str:
    """Date, machine, commit and command of the data: the lines under the chart, at most
    `width` characters each."""
    machines = [s.machine for s in sources]
    dates = unique(str(m.get("date", "?"))[:10] for m in machines)
    hosts = unique(f"{m.get('nproc', '?')} CPUs, {m.get('cpu_model', '?')}" for m in machines)
    commits = unique(str(m.get("git_revision") or "?") for m in machines)
    commands: dict[str, list[str]] = {}
    for s in sources:
        command = s.machine.get("command")
        shown = (
            without_output(command) if command else f"bench/{s.kind}.py (arguments not recorded)"
        )
        commands.setdefault(shown, []).append(s.python.rsplit(".", 1)[0])
    data = "; ".join(f"python{'/'.join(unique(v))} {c}" for c, v in commands.items())
    lines = [f"{', '.join(dates)} · {'; '.join(hosts)} · commit {', '.join(commits)}"]
    return "\n".join(lines + textwrap.wrap(f"data: {data}", width))


def without_output(command: str) -> str:
    """The command less its --output FILE, which differs per run and says nothing of the
    measurement (so that the runs of several versions share one line)."""
    words = shlex.split(command)
    keep = [
        w
        for i, w in enumerate(words)
        if w != "--output" and not w.startswith("--output=") and words[i - 1 : i] != ["--output"]
    ]
    return shlex.join(keep)


# --------------------------------------------------------------------------
# Grouped bars with missing cells
# --------------------------------------------------------------------------


@dataclass
class Bars:
    """Values of (group, series) cells; a cell without a value is drawn as "n/a"."""

    groups: list[str] = field(default_factory=list)  # along the x axis
    series: list[str] = field(default_factory=list)  # side by side within a group
    values: dict[Key, float] = field(default_factory=dict)
    notes: dict[Key, str] = field(default_factory=dict)  # why a cell has no value
    disturbed: set[Key] = field(default_factory=set)  # measured while the machine was busy

    def add(
        self,
        group: str,
        series: str,
        value: float | None,
        note: str = "n/a",
        disturbed: bool = False,
    ) -> None:
        if disturbed:
            self.disturbed.add((group, series))
        if group not in self.groups:
            self.groups.append(group)
        if series not in self.series:
            self.series.append(series)
        if value is None:
            self.notes[group, series] = note
        else:
            self.values[group, series] = value


def series_colors(names: Sequence[str]) -> list[str]:
    """Loops keep their colour in every chart; other series (Python versions) get blues."""
    if all(n in LOOP_COLORS for n in names):
        return [LOOP_COLORS[n] for n in names]
    return [SERIES_COLORS[i % len(SERIES_COLORS)] for i in range(len(names))]


def wrap(label: str, width: int = 14) -> str:
    """A case name over lines at its underscores ("call_soon_\nthreadsafe")."""
    lines = [""]
    for part in label.split("_"):
        if lines[-1] and len(lines[-1]) + len(part) >= width:
            lines.append("")
        lines[-1] += ("_" if lines[-1] else "") + part
    return "_\n".join(lines)


def draw_bars(ax: Axes, bars: Bars, ylabel: str, fmt: str, ref: float | None = None) -> None:
    """Grouped bars labelled with their values; the reason ("n/a", "failed", ...) where a
    cell has no value; a dashed reference line at `ref` (1.0 for ratios)."""
    n = max(len(bars.series), 1)
    width = 0.8 / n
    top = max([*bars.values.values(), ref or 0.0], default=1.0) or 1.0
    colors = series_colors(bars.series)
    for i, (name, color) in enumerate(zip(bars.series, colors, strict=True)):
        for g, group in enumerate(bars.groups):
            x = g - 0.4 + width * (i + 0.5)
            value = bars.values.get((group, name))
            shown = bars.notes.get((group, name), "n/a") if value is None else format(value, fmt)
            shown += "*" if (group, name) in bars.disturbed else ""
            if value is not None:
                ax.bar(x, value, width, color=color)
            y = top * 0.02 if value is None else value
            ax.text(x, y, f" {shown}", rotation=90, ha="center", va="bottom", fontsize=6)
    if ref is not None:
        ax.axhline(ref, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(bars.groups)), [wrap(g) for g in bars.groups], fontsize=7)
    ax.set_xlim(-0.5, len(bars.groups) - 0.5)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_ylim(0, top * 1.25)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", linewidth=0.3)
    handles = [Patch(color=c, label=name) for name, c in zip(bars.series, colors, strict=True)]
    if bars.disturbed:
        handles.append(Patch(color="none", label=DISTURBED))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def figure(
    panels: int, width: float, title: str, sources: Sequence[Source]
) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(panels, 1, figsize=(width, 0.9 + 2.9 * panels), squeeze=False)
    fig.suptitle(title, fontsize=10)
    chars = int(width * 72 / (0.6 * FOOTER_PT)) - 4
    fig.text(
        0.01, 0.005, footer(sources, chars), fontsize=FOOTER_PT, va="bottom", family="monospace"
    )
    return fig, list(axes[:, 0])


def save(fig: Figure, path: Path) -> Path:
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------
# micro.py: CPU ns per operation
# --------------------------------------------------------------------------


def micro_ns(source: Source, case: str, loop: str) -> float | None:
    cell = source.doc["results"].get(case, {}).get(loop, {})
    value = cell.get("cpu_ns_per_op_min")
    return None if cell.get("error") or value is None else float(value)


def micro_missing(source: Source, case: str, loop: str) -> str:
    """Why `loop` has no figure for `case`: "not run", "not installed", "failed"."""
    if case not in source.doc["results"]:
        return "not run"
    probe = source.doc["loops"].get(loop)
    if probe is None:
        return "not run"
    if not probe.get("ok"):
        return str(probe.get("status", "n/a"))
    return "failed" if source.doc["results"][case].get(loop, {}).get("error") else "n/a"


def micro_ratio_note(source: Source, case: str, loop: str) -> str:
    if micro_ns(source, case, loop) is None:
        return micro_missing(source, case, loop)
    return f"uvloop {micro_missing(source, case, 'uvloop')}"


def micro_loops(sources: Sequence[Source]) -> list[str]:
    """Every loop any file reports, in the files' order (asyncio, uvloop, ferroloop, ...)."""
    return unique(loop for s in sources for loop in s.doc["loops"])


def micro_cases(sources: Sequence[Source]) -> list[str]:
    return unique(case for s in sources for case in s.doc["results"])


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def micro_ratio_chart(sources: Sequence[Source], out: Path) -> Path:
    loops = [loop for loop in micro_loops(sources) if loop != "uvloop"]
    fig, axes = figure(
        len(loops), 12, "Micro benchmarks: CPU time per operation relative to uvloop", sources
    )
    for ax, loop in zip(axes, loops, strict=True):
        bars = Bars()
        for case in micro_cases(sources):
            for s in sources:
                value = ratio(micro_ns(s, case, loop), micro_ns(s, case, "uvloop"))
                bars.add(case, s.label, value, micro_ratio_note(s, case, loop))
        draw_bars(ax, bars, f"{loop} / uvloop\n(lower is better)", ".2f", ref=1.0)
        ax.set_title(f"{loop} CPU ns per op ÷ uvloop's (dashed line: uvloop)", fontsize=8)
    return save(fig, out / "micro-ratios.png")


def micro_ns_chart(sources: Sequence[Source], out: Path) -> Path:
    fig, axes = figure(len(sources), 12, "Micro benchmarks: CPU ns per operation", sources)
    for ax, s in zip(axes, sources, strict=True):
        bars = Bars()
        for case in micro_cases(sources):
            for loop in micro_loops(sources):
                bars.add(case, loop, micro_ns(s, case, loop), micro_missing(s, case, loop))
        draw_bars(ax, bars, "CPU ns per op\n(lower is better)", ",.0f")
        ax.set_title(s.label, fontsize=8)
    return save(fig, out / "micro-ns.png")


# --------------------------------------------------------------------------
# http.py: req/s and server CPU per request
# --------------------------------------------------------------------------


def disturbed_run(run: dict[str, Any] | None) -> bool:
    """Whether other processes were busy during the run (http.py and echo.py record it)."""
    return run is not None and float(run.get("other_cpu_pct", 0.0)) > NOISY_PCT


def http_value(source: Source, loop: str, key: str) -> float | None:
    r = source.doc["results"].get(loop, {})
    return None if r.get("error") or not r.get(key) else float(r[key])


def http_missing(source: Source, loop: str) -> str:
    r = source.doc["results"].get(loop)
    return "not run" if r is None else "failed" if r.get("error") else "n/a"


def http_chart(sources: Sequence[Source], out: Path) -> Path:
    loops = unique(loop for s in sources for loop in s.doc["results"])
    fig, axes = figure(2, 8, "HTTP: uvicorn + httptools under wrk", sources)
    panels = (
        ("rps", "requests/s\n(higher is better)", ",.0f"),
        ("cpu_us_per_req", "server CPU µs per request\n(lower is better)", ".1f"),
    )
    for ax, (key, ylabel, fmt) in zip(axes, panels, strict=True):
        bars = Bars()
        for s in sources:
            for loop in loops:
                run = s.doc["results"].get(loop)
                value = http_value(s, loop, key)
                bars.add(s.label, loop, value, http_missing(s, loop), disturbed_run(run))
        draw_bars(ax, bars, ylabel, fmt)
    return save(fig, out / "http.png")


# --------------------------------------------------------------------------
# echo.py: server CPU per request relative to the native floor
# --------------------------------------------------------------------------


def echo_best(cell: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cell's round with the lowest CPU per request (the figure echo.py reports)."""
    ok = [s for s in (cell or {}).get("samples", []) if s["status"] == "ok"]
    return min(ok, key=lambda s: s["cpu_us_per_req"]) if ok else None


def echo_cpu(sample: dict[str, Any] | None) -> float | None:
    return None if sample is None else float(sample["cpu_us_per_req"])


def echo_status(cell: dict[str, Any]) -> str:
    """ "ok" if any round succeeded, else the last round's status ("failed", ...)."""
    statuses = [s["status"] for s in cell["samples"]]
    return "ok" if "ok" in statuses else statuses[-1] if statuses else "not run"


def echo_missing(cell: dict[str, Any], floor: dict[str, Any] | None) -> str:
    """Why a cell has no ratio: its own status ("not implemented", "failed"), or the floor's."""
    if echo_status(cell) != "ok":
        return echo_status(cell)
    return "no floor run" if floor is None else f"floor {echo_status(floor)}"


def echo_group(cell: dict[str, Any], read_sizes: int) -> str:
    name = f"{cell['size'] // 1024} KiB\n{cell['style']}"
    if cell.get("read_size") is not None and read_sizes > 1:
        name += f"\nread {cell['read_size'] // 1024} KiB"
    return name


def echo_bars(source: Source) -> Bars:
    cells = source.doc["cells"]
    floors = {c["size"]: c for c in cells if c["kind"] == "floor"}
    read_sizes = len({c.get("read_size") for c in cells if c.get("read_size") is not None})
    bars = Bars()
    for c in cells:
        if c["kind"] == "floor":
            continue
        floor = floors.get(c["size"])
        best, floor_best = echo_best(c), echo_best(floor)
        value = ratio(echo_cpu(best), echo_cpu(floor_best))
        disturbed = any(disturbed_run(b) for b in (best, floor_best))
        bars.add(echo_group(c, read_sizes), c["loop"], value, echo_missing(c, floor), disturbed)
    return bars


def echo_chart(sources: Sequence[Source], out: Path) -> Path:
    fig, axes = figure(
        len(sources),
        12,
        "TCP echo: server CPU per request relative to a native Rust server",
        sources,
    )
    for ax, s in zip(axes, sources, strict=True):
        draw_bars(ax, echo_bars(s), "CPU per request ÷ floor's\n(lower is better)", ".2f", ref=1.0)
        ax.set_title(f"{s.label} (dashed line: the native floor)", fontsize=8)
    return save(fig, out / "echo.png")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

CHARTS: dict[str, tuple[Callable[[Sequence[Source], Path], Path], ...]] = {
    "micro": (micro_ratio_chart, micro_ns_chart),
    "http": (http_chart,),
    "echo": (echo_chart,),
}


def draw_all(sources: Sequence[Source], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, charts in CHARTS.items():
        of_kind = [s for s in sources if s.kind == kind]
        if of_kind:
            written += [chart(of_kind, out) for chart in charts]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("files", nargs="+", type=Path, help="JSON results of micro/http/echo.py")
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    args = ap.parse_args(argv)
    sources = load(args.files)
    if not sources:
        print("no micro, http or echo results among the files", file=sys.stderr)
        return 2
    for path in draw_all(sources, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
