"""pytest plugin for scripts/valgrind.sh: the command line's `--timeout` wins over every
`@pytest.mark.timeout(N)` of the tests (pytest-timeout lets a marker win), since under valgrind
everything runs 20-50 times slower than the timeouts were chosen for.

Loaded with `-p valgrind_timeouts` and scripts/ on PYTHONPATH.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    timeout = config.getoption("timeout")
    if not timeout:
        return
    for item in items:
        # Prepended, so it is the closest marker, the one pytest-timeout reads.
        item.add_marker(pytest.mark.timeout(float(timeout)), append=False)
