"""`ferroloop.pytest_plugin`: one option makes a suite's asyncio tests run on ferroloop.

Each test writes a small suite of the kind users have (pytest-asyncio, anyio's plugin,
`unittest.IsolatedAsyncioTestCase`, plain `asyncio.run`), runs it with pytest in a
subprocess with and without `-p ferroloop.pytest_plugin`, and checks that every test saw a
ferroloop loop with it and asyncio's own loop without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ferroloop_only, pytest.mark.timeout(120)]

SUITE = """
import asyncio
import unittest

import pytest


def loop_kind() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest.mark.asyncio
async def test_pytest_asyncio():
    assert loop_kind() == EXPECTED


@pytest.mark.anyio
async def test_anyio():
    assert loop_kind() == EXPECTED


@pytest.fixture
def anyio_backend():
    return "asyncio"


class TestIsolated(unittest.IsolatedAsyncioTestCase):
    async def test_isolated(self):
        self.assertEqual(loop_kind(), EXPECTED)


def test_asyncio_run():
    async def main():
        return loop_kind()

    assert asyncio.run(main()) == EXPECTED
"""


def run_suite(tmp_path: Path, expected: str, *options: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(f"EXPECTED = {expected!r}\n" + textwrap.dedent(SUITE))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *options,
            str(tmp_path / "test_suite.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )


def test_plugin_runs_every_kind_of_asyncio_test_on_ferroloop(tmp_path: Path) -> None:
    done = run_suite(tmp_path, "ferroloop", "-p", "ferroloop.pytest_plugin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout


def test_without_the_plugin_the_same_suite_runs_on_asyncio(tmp_path: Path) -> None:
    # The control: the suite's assertions really tell the loops apart.
    done = run_suite(tmp_path, "asyncio")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout
