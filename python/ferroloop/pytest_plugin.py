"""A pytest plugin that runs a test suite's asyncio tests on ferroloop loops.

Enable it with one line, for one run or for good::

    pytest -p ferroloop.pytest_plugin
    # pytest.ini / pyproject.toml [tool.pytest.ini_options]:  addopts = "-p ferroloop.pytest_plugin"

What then runs on ferroloop, on every supported CPython:

* pytest-asyncio tests: through its `pytest_asyncio_loop_factories` hook (pytest-asyncio
  1.3+; the test ids are unchanged when it is the only factory), and through the event loop
  policy for older versions;
* anyio tests on the asyncio backend (anyio's own pytest plugin), and
  `unittest.IsolatedAsyncioTestCase`: both make their loop with `asyncio.Runner`, which asks
  the policy;
* anything else that calls `asyncio.run()` or `asyncio.new_event_loop()`.

The policy is ferroloop's `EventLoopPolicy`, installed when pytest configures and the
previous one restored when it unconfigures. Policies are deprecated from Python 3.14 (still
there until 3.16); the plugin sets it through asyncio's private setter there, without the
deprecation warning (3.14 code, not run here). A test that sets its own policy or passes its
own loop factory still gets what it asks for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

import ferroloop

_PREVIOUS_POLICY = pytest.StashKey[Any]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_PREVIOUS_POLICY] = asyncio.events._event_loop_policy
    ferroloop._install_quietly()


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_PREVIOUS_POLICY, None)
    ferroloop._set_policy(previous)


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio (1.3+): every asyncio test's loop comes from ferroloop."""
    return {"ferroloop": ferroloop.new_event_loop}
