"""The checked-in test-id lists (excluded.txt, passing.txt) and id matching.

Test ids are unittest ids without the ``test.test_asyncio.`` prefix, e.g.
``test_events.EventLoopTests.test_call_soon``.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

ID_PREFIX = "test.test_asyncio."


def short_id(unittest_id: str) -> str:
    return unittest_id.removeprefix(ID_PREFIX)


def id_matches(test_id: str, pattern: str) -> bool:
    """True if ``pattern`` names this test, its class or its module; globs allowed."""
    return fnmatchcase(test_id, pattern) or fnmatchcase(test_id, pattern + ".*")


def k_matches(test_id: str, patterns: list[str]) -> bool:
    """unittest's ``-k`` semantics: substring, or fnmatch if the pattern has a wildcard."""
    if not patterns:
        return True
    return any(fnmatchcase(test_id, p if "*" in p else f"*{p}*") for p in patterns)


def _entries(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_excluded(path: Path) -> list[tuple[str, str]]:
    """(pattern, reason) pairs; every entry must carry a ``  # reason``."""
    excluded = []
    for entry in _entries(path):
        pattern, sep, reason = entry.partition(" # ")
        if not sep or not reason.strip():
            raise ValueError(f"{path}: entry without ' # reason': {entry!r}")
        excluded.append((pattern.strip(), reason.strip()))
    return excluded


def read_ids(path: Path) -> list[str]:
    return [entry.split(" # ")[0].strip() for entry in _entries(path)]
