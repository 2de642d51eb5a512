"""Real servers for the example tests, started on loopback ports chosen at run time."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's `redis-server`, installed by scripts/test.sh)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/test.sh installs Debian's package)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def _pg_bindir() -> str | None:
    import glob

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL server (Debian's `postgresql`, installed by scripts/test.sh) in a
    throw-away cluster on a free loopback port. PostgreSQL refuses to run as root, so as
    root the cluster belongs to the `postgres` user."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (scripts/test.sh installs Debian's package)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    datadir = tempfile.mkdtemp(prefix="ferroloop-pg-")
    if as_postgres:
        shutil.chown(datadir, "postgres", "postgres")
    port = free_port()
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([*as_postgres, f"{bindir}/initdb", "-D", datadir, "-A", "trust", "-U", "postgres"])
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(
        [
            *as_postgres,
            f"{bindir}/pg_ctl",
            "-D",
            datadir,
            "-o",
            opts,
            "-w",
            "-l",
            f"{datadir}/log",
            "start",
        ]
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, f"{bindir}/pg_ctl", "-D", datadir, "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(datadir, ignore_errors=True)
