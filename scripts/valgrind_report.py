"""Summarises memcheck logs for scripts/valgrind.sh and decides the verdict.

    python scripts/valgrind_report.py LOG...

Each error record of a log is classified as an invalid access (read, write, free, overlap), a
use of an uninitialised value, or a definite leak, and attributed to ferroloop when a frame of
its stack is in ferroloop's native module (the `_ferroloop` .so, a `ferroloop::` function or
Rust source: the only Rust code in the process is ferroloop's, PyO3 and std included).

Exit status 1 if any invalid access or uninitialised value was reported anywhere (with
PYTHONMALLOC=malloc, a refcount error of ferroloop's shows up as an invalid read in CPython's
frames), or any definite leak attributed to ferroloop; CPython's own definite leaks at exit are
counted but do not fail. Each failing record is printed with its stack.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PREFIX = re.compile(r"^==\d+== ?")
KINDS = (
    ("invalid", re.compile(r"^(Invalid (read|write|free)|Mismatched free|Source and destination)")),
    ("uninitialised", re.compile(r"uninitialised")),
    ("definite-leak", re.compile(r"are definitely lost in loss record")),
)
FERROLOOP_FRAME = re.compile(r"_ferroloop|ferroloop::|\.rs:\d+\)")
SUMMARY = re.compile(
    r"ERROR SUMMARY: ([\d,]+) errors from ([\d,]+) contexts \(suppressed: ([\d,]+)"
)
STACK_LINES = 30
SHOWN = 10  # failing records printed with their stack, per log


@dataclass
class Record:
    kind: str
    lines: list[str]

    @property
    def in_ferroloop(self) -> bool:
        return any(FERROLOOP_FRAME.search(line) for line in self.lines[1:])

    @property
    def fails(self) -> bool:
        return self.kind != "definite-leak" or self.in_ferroloop


def blocks(text: str) -> list[list[str]]:
    """The log's blank-line separated blocks, without the ==PID== prefix."""
    out: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = PREFIX.sub("", raw)
        if line.strip():
            out[-1].append(line)
        elif out[-1]:
            out.append([])
    return [b for b in out if b]


def records(text: str) -> list[Record]:
    found = []
    for block in blocks(text):
        for kind, pattern in KINDS:
            if pattern.search(block[0]):
                found.append(Record(kind, block))
                break
    return found


def report(path: Path) -> tuple[int, int]:
    """Prints one log's summary: (failing records, all records)."""
    text = path.read_text(errors="replace")
    found = records(text)
    summary = SUMMARY.search(text)
    totals = "no ERROR SUMMARY (did the process end?)"
    if summary:
        errors, contexts, suppressed = summary.groups()
        totals = f"{errors} errors from {contexts} contexts, {suppressed} suppressed"
    counts = Counter(f"{r.kind}{' in ferroloop' if r.in_ferroloop else ''}" for r in found)
    detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no error record"
    print(f"{path.name}: {totals}; records: {detail}")
    failing = [r for r in found if r.fails]
    for r in failing[:SHOWN]:
        print("\n    " + "\n    ".join(r.lines[:STACK_LINES]))
    if len(failing) > SHOWN:
        print(f"\n    ... and {len(failing) - SHOWN} more failing records in {path}")
    return len(failing), len(found)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    failing = 0
    for name in argv:
        failing += report(Path(name))[0]
    verdict = "FAIL" if failing else "ok"
    print(f"valgrind: {verdict}: {failing} failing record(s) in {len(argv)} log(s)")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
