"""Run unmodified upstream test suites on stock asyncio and on ferroloop, and compare them.

Usage (through the wrapper, which makes the tooling venv and builds ferroloop's wheel)::

    bash scripts/upstream.sh                 # every suite below, on python3.11
    bash scripts/upstream.sh anyio uvicorn   # only these suites
    PYTHON_MINOR=3.12 bash scripts/upstream.sh anyio

or directly, given a built wheel: ``python scripts/upstream.py --wheel WHEEL [SUITE ...]``.

For each suite (table ``SUITES``): the sdist at the pinned version is fetched from PyPI with
``pip download --no-deps --no-binary :all:`` into ``.cache/upstream/sdists`` (git-ignored) and
unpacked; a venv of its own, ``.venv-upstream-3.X-<suite>`` (git-ignored, never the main
``.venv``), gets ferroloop's wheel, the package from the sdist and its test dependencies (the
sdist's own dependency group where it has one, else the list written here); then the suite's
tests run twice with pytest from the unpacked sdist: plain (stock asyncio) and with
``-p ferroloop.pytest_plugin`` (pytest-asyncio, anyio's plugin on the asyncio backend and
``IsolatedAsyncioTestCase`` then run on ferroloop). Both runs use ``-p no:cacheprovider``,
pytest-timeout's per-test ``--timeout`` and ``--junitxml``; results are compared per test id
(``suite::tests/file.py::Class::test[param]``).

A suite that needs a database (``Suite.needs_postgres``: asyncpg) gets, for each of its two
runs, a throw-away PostgreSQL cluster of its own from Debian's ``postgresql`` package (initdb
and pg_ctl under /usr/lib/postgresql/*/bin; as root they run as the ``postgres`` user, since
PostgreSQL refuses root): trust authentication, listening on a free 127.0.0.1 port only, its
libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE) in the run's environment; it is stopped
and removed after the run, whatever the run did (its log is kept in the run folder).

Deselected: only what the suite itself marks as needing the Internet (``-m "not network"``),
per suite what is listed in ``Suite.deselect`` with the reason beside it, and where this
machine's "localhost" has no IPv6 address (no ``::1 localhost`` in /etc/hosts), the suite's
IPv6-localhost tests (``Suite.no_ipv6_localhost_k``), which fail on both loops there.

A test that passes on stock asyncio and fails or errors on ferroloop is a ferroloop-only
failure. ``tests/upstream-expected.txt`` lists the accepted ones (``suite::test_id  reason``,
one a line, ``#`` comments); the script exits 1 on any ferroloop-only failure not listed there
(or a run that reported no tests), and prints a table per suite: tests, passed on both, failed on both, ferroloop-only and
stock-only failures, skipped (on either side) and missing (in one run only), with run times.
``--markdown FILE`` appends the table and the failures to a results file.

Run logs and junit files: ``.cache/upstream/runs/<suite>/{stock,ferroloop}.{log,xml}``.
Recorded figures and the causes found: ``bench/results/upstream-<date>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "upstream"
EXPECTED = ROOT / "tests" / "upstream-expected.txt"


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    version: str
    # pip requirements for the tests, besides the package itself ("." = the unpacked sdist).
    requirements: tuple[str, ...] = ()
    # PEP 735 dependency groups of the sdist's pyproject.toml to install (pip --group).
    groups: tuple[str, ...] = ()
    # Packages removed after the install, with why (in the comment where the suite is listed).
    uninstall: tuple[str, ...] = ()
    pytest_args: tuple[str, ...] = ()
    # (node id or -k expression, reason): tests that need the network beyond loopback.
    deselect: tuple[tuple[str, str], ...] = ()
    # -k expression deselecting the tests that bind or connect to "localhost" over IPv6, used
    # only when this machine's "localhost" has no IPv6 address (no "::1 localhost" line in
    # /etc/hosts): those fail on both loops, and the sockets their fixtures leave open then
    # raise ResourceWarnings (errors under the suites' filterwarnings) in whichever later
    # test the garbage collector happens to run, on one loop or the other.
    no_ipv6_localhost_k: str = ""
    timeout: int = 60
    # Whole-run limit (seconds) for one pytest run.
    run_timeout: int = 1800
    tests_in_sdist: bool = True
    # Environment variables for the install and the runs.
    env: tuple[tuple[str, str], ...] = ()
    # Each run gets a throw-away PostgreSQL server of its own (postgres_server()) and the
    # libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE) that point clients at it.
    needs_postgres: bool = False


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        # anyio: its own "test" dependency group. uvloop is removed again so that the suite's
        # own "asyncio+uvloop" parameters skip ("uvloop not available"): they run uvloop in
        # both runs and say nothing about ferroloop. The trio backend is not installed, so
        # the "trio" parameters skip ("trio is not available"); its config has
        # -p no:trio. "-m 'not network'": its marker for Internet access.
        Suite(
            "anyio",
            "4.16.0",
            groups=("test",),
            uninstall=("uvloop",),
            pytest_args=("-m", "not network"),
            no_ipv6_localhost_k="not ipv6 and not dualstack",
        ),
        # uvicorn: its "dev" dependency group (test tools, uvicorn[standard], plus lint and
        # packaging tools it lists there too). Its addopts has "-n 8" (xdist): "-n 0" runs
        # it in one process (2 cores here). Its tests run servers with loop="auto", which
        # picks uvloop when installed: uvloop is removed so that "auto" means asyncio's
        # policy (ferroloop with the plugin), and its uvloop-only tests skip on both sides.
        Suite(
            "uvicorn",
            "0.54.0",
            groups=("dev",),
            uninstall=("uvloop",),
            pytest_args=("-n", "0"),
        ),
        # httpx: the sdist has tests but not the requirements file its repository installs
        # them from; this list is that file's test part. trio is needed only because its
        # pytest config's filterwarnings names trio's warning class and tests/concurrency.py
        # imports it: its tests run on anyio's default backend, asyncio, only.
        Suite(
            "httpx",
            "0.28.1",
            requirements=(
                ".[brotli,zstd,cli,http2,socks]",
                "pytest",
                "pytest-timeout",
                "trustme",
                "uvicorn",
                "chardet",
                "cryptography",
                "anyio",
                "trio",
            ),
            pytest_args=("-m", "not network"),
        ),
        # aiohttp: its requirements/test.in (the unpinned list its lock file is made from).
        # AIOHTTP_NO_EXTENSIONS=1: the pure-Python build; the tests import aiohttp from the
        # unpacked sdist (the rootdir is on sys.path) where no C extension is built anyway.
        # Its addopts: "--numprocesses=auto" (xdist) -> "-n 0", and coverage -> "--no-cov".
        # Its own "loop" fixture (aiohttp.pytest_plugin, --aiohttp-loop=pyloop) makes loops
        # with asyncio.new_event_loop(), hence ferroloop's policy under the plugin.
        Suite(
            "aiohttp",
            "3.14.5",
            requirements=("-r", "requirements/test.in"),
            pytest_args=("-n", "0", "--no-cov"),
            env=(("AIOHTTP_NO_EXTENSIONS", "1"),),
        ),
        # asyncpg: its "test" dependency group is lint and type tools (flake8, mypy: the
        # code-quality tests skip without them), uvloop (used only with USE_UVLOOP=1),
        # gssapi and k5test (Kerberos tests, which skip without k5test) and pytest: only
        # pytest and distro (imported by test_connect.py) are needed. Its harness makes a
        # cluster of its own with pg_ctl, which PostgreSQL refuses as root; with PGHOST set
        # it uses the running server it is pointed at (asyncpg.cluster.RunningCluster), and
        # the classes that need a cluster of their own or edit its pg_hba.conf skip
        # ("unmanaged cluster": SSL, authentication, connection loss through its fuzzing
        # proxy, large OIDs, pool reconnect), except TestConnectionAttributes, which makes
        # its two clusters without asking and errors on both loops as root. The
        # sdist's asyncpg/ has no compiled extensions: PYTHONSAFEPATH=1 keeps "python -m
        # pytest" from putting it first on sys.path, so the tests import the built package.
        Suite(
            "asyncpg",
            "0.32.0",
            requirements=("pytest", "distro"),
            env=(("PYTHONSAFEPATH", "1"),),
            needs_postgres=True,
        ),
        # websockets: its sdist ships no tests (only src/), so there is nothing to run.
        Suite("websockets", "17.4", tests_in_sdist=False),
    )
}

OUTCOMES_ORDER = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def log(message: str) -> None:
    print(f"[upstream {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def fetch(suite: Suite) -> Path:
    """The unpacked sdist's folder, downloading and unpacking it once."""
    sdists = CACHE / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    folder = sdists / f"{suite.name}-{suite.version}"
    if folder.is_dir():
        return folder
    archive = sdists / f"{suite.name}-{suite.version}.tar.gz"
    if not archive.exists():
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{suite.name}=={suite.version}",
                "-d",
                str(sdists),
            ]
        )
    with tarfile.open(archive) as tar:
        tar.extractall(sdists, filter="data")
    return folder


def venv_for(suite: Suite, source: Path, wheel: Path) -> Path:
    """The suite's venv python, made and filled once (a marker file records it is done)."""
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    venv = ROOT / f".venv-upstream-{minor}-{suite.name}"
    python = venv / "bin" / "python"
    # Made again when what the suite installs changes; ferroloop's wheel is installed every
    # time (a rebuilt wheel keeps its file name).
    installs = repr((suite.version, suite.requirements, suite.groups, suite.uninstall, suite.env))
    digest = hashlib.sha256(installs.encode()).hexdigest()[:12]
    marker = venv / f".ready-{digest}"
    if marker.exists():
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        run([*pip, "--force-reinstall", "--no-deps", str(wheel)])
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    if not python.exists():
        run([base, "-m", "venv", str(venv)])
    env = {**os.environ, **dict(suite.env)}
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, "--upgrade", "pip"])  # pip 25.1+ for --group
    run([*pip, "--force-reinstall", "--no-deps", str(wheel)])
    run([*pip, ".", "pytest-timeout"], cwd=source, env=env)
    for group in suite.groups:
        run([*pip, "--group", f"pyproject.toml:{group}"], cwd=source, env=env)
    if suite.requirements:
        run([*pip, *suite.requirements], cwd=source, env=env)
    # The group may pull the package again from PyPI (uvicorn[standard]): the sdist's wins.
    run([*pip, "--no-deps", "--force-reinstall", "."], cwd=source, env=env)
    if suite.uninstall:
        run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", *suite.uninstall])
    marker.touch()
    return python


def node_id(source: Path, classname: str, name: str) -> str:
    """pytest's node id from a junit testcase: the longest dotted prefix that is a file."""
    parts = classname.split(".") if classname else []
    for cut in range(len(parts), 0, -1):
        path = Path(*parts[:cut])
        if (source / path.with_suffix(".py")).is_file():
            return "::".join([path.with_suffix(".py").as_posix(), *parts[cut:], name])
    return "::".join([*parts, name])


def parse_junit(source: Path, xml_file: Path) -> dict[str, str]:
    results: dict[str, str] = {}
    for case in ET.parse(xml_file).iter("testcase"):
        test = node_id(source, case.get("classname", ""), case.get("name", ""))
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                found = "failed" if child.tag == "failure" else child.tag
                if OUTCOMES_ORDER[found] > OUTCOMES_ORDER[outcome]:
                    outcome = found
        previous = results.get(test)
        if previous is None or OUTCOMES_ORDER[outcome] > OUTCOMES_ORDER[previous]:
            results[test] = outcome
    return results


VERBOSE_LINE = re.compile(r"^(\S+::\S.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_log(log_file: Path) -> dict[str, str]:
    """Fallback when a run was killed before writing its junit file: pytest -v's lines."""
    names = {
        "PASSED": "passed",
        "FAILED": "failed",
        "ERROR": "error",
        "SKIPPED": "skipped",
        "XFAIL": "skipped",
        "XPASS": "failed",
    }
    results: dict[str, str] = {}
    for line in log_file.read_text(errors="replace").splitlines():
        match = VERBOSE_LINE.match(line)
        if match:
            outcome = names[match.group(2)]
            previous = results.get(match.group(1))
            if previous is None or OUTCOMES_ORDER[outcome] > OUTCOMES_ORDER[previous]:
                results[match.group(1)] = outcome
    return results


def ipv6_localhost() -> bool:
    try:
        return bool(socket.getaddrinfo("localhost", 0, socket.AF_INET6, socket.SOCK_STREAM))
    except socket.gaierror:
        return False


@contextlib.contextmanager
def postgres_server(log_copy: Path) -> Iterator[dict[str, str]]:
    """A throw-away PostgreSQL cluster (Debian's postgresql package) on a free 127.0.0.1 port
    with trust authentication; yields the libpq variables pointing at it, and stops and removes
    it afterwards (its log copied to log_copy). PostgreSQL refuses to run as root, so as root
    the cluster belongs to the postgres user."""
    pg_ctls = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(Path(path).parent.parent.name.split(".")[0]),
    )
    if not pg_ctls:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(pg_ctls[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    datadir = tempfile.mkdtemp(prefix="ferroloop-upstream-pg-")
    if as_postgres:
        shutil.chown(datadir, "postgres", "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", datadir]
    try:
        run(
            [*as_postgres, str(bindir / "initdb"), "-D", datadir, "-A", "trust", "-U", "postgres"],
            stdout=subprocess.DEVNULL,
        )
        # The settings asyncpg's harness gives the clusters it starts (log_connections, no
        # JIT, which upsets timing tests), and no fsync: the data is thrown away.
        options = (
            f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c jit=off -c log_connections=on"
        )
        run(
            [*pg_ctl, "-o", options, "-w", "-l", f"{datadir}/server.log", "start"],
            stdout=subprocess.DEVNULL,
        )
        log(f"PostgreSQL ({bindir.parent.name}) on 127.0.0.1:{port}, data in {datadir}")
        yield {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port),
            "PGUSER": "postgres",
            "PGDATABASE": "postgres",
        }
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        with contextlib.suppress(OSError):
            log_copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f"{datadir}/server.log", log_copy)
        shutil.rmtree(datadir, ignore_errors=True)


def run_tests(
    suite: Suite, python: Path, source: Path, loop: str, extra_env: dict[str, str]
) -> tuple[dict[str, str], float]:
    out = CACHE / "runs" / suite.name
    out.mkdir(parents=True, exist_ok=True)
    xml_file, log_file = out / f"{loop}.xml", out / f"{loop}.log"
    xml_file.unlink(missing_ok=True)
    cmd = [
        str(python),
        "-m",
        "pytest",
        "-v",
        "-p",
        "no:cacheprovider",
        f"--timeout={suite.timeout}",
        f"--junitxml={xml_file}",
        *suite.pytest_args,
    ]
    keywords = [test for test, _reason in suite.deselect if "::" not in test]
    cmd += [arg for test, _r in suite.deselect if "::" in test for arg in ("--deselect", test)]
    if suite.no_ipv6_localhost_k and not ipv6_localhost():
        keywords.append(suite.no_ipv6_localhost_k)
    if keywords:
        cmd += ["-k", " and ".join(f"({k})" for k in keywords)]
    if loop == "ferroloop":
        cmd += ["-p", "ferroloop.pytest_plugin"]
    log(f"{suite.name} on {loop}: {' '.join(cmd[1:])}")
    started = time.monotonic()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **dict(suite.env), **extra_env}
    env.pop("PYTHONPATH", None)
    if extra_env:  # no other libpq variable of this shell (PGPASSWORD, PGSSLMODE...)
        env = {k: v for k, v in env.items() if not k.startswith("PG") or k in extra_env}
    with log_file.open("w") as handle:
        try:
            subprocess.run(
                cmd,
                cwd=source,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=suite.run_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log(f"{suite.name} on {loop}: killed after {suite.run_timeout} s")
    elapsed = time.monotonic() - started
    if xml_file.exists():
        results = parse_junit(source, xml_file)
    else:
        log(f"{suite.name} on {loop}: no junit file, reading {log_file}")
        results = parse_log(log_file)
    log(f"{suite.name} on {loop}: {len(results)} tests in {elapsed:.0f} s")
    return results, elapsed


def load_expected() -> dict[str, str]:
    expected: dict[str, str] = {}
    if EXPECTED.exists():
        for line in EXPECTED.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                test, _, reason = line.partition("  ")
                expected[test.strip()] = reason.strip()
    return expected


@dataclasses.dataclass
class Comparison:
    suite: str
    tests: int = 0
    passed_both: int = 0
    failed_both: int = 0
    skipped: int = 0
    missing: int = 0
    ferroloop_only: list[str] = dataclasses.field(default_factory=list)
    stock_only: list[str] = dataclasses.field(default_factory=list)
    stock_seconds: float = 0.0
    ferroloop_seconds: float = 0.0
    note: str = ""


def compare(name: str, stock: dict[str, str], ferro: dict[str, str]) -> Comparison:
    result = Comparison(name)
    for test in sorted(stock.keys() | ferro.keys()):
        result.tests += 1
        a, b = stock.get(test), ferro.get(test)
        if a is None or b is None:
            result.missing += 1
        elif a == "skipped" or b == "skipped":
            result.skipped += 1
        elif a == "passed" and b == "passed":
            result.passed_both += 1
        elif a == "passed":
            result.ferroloop_only.append(f"{name}::{test}  ({b})")
        elif b == "passed":
            result.stock_only.append(f"{name}::{test}  ({a})")
        else:
            result.failed_both += 1
    return result


HEADER = (
    "suite",
    "tests",
    "passed both",
    "failed both",
    "ferroloop-only",
    "stock-only",
    "skipped",
    "missing",
    "stock s",
    "ferroloop s",
)


def table(rows: list[Comparison]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for r in rows:
        cells = (
            r.suite,
            r.tests,
            r.passed_both,
            r.failed_both,
            len(r.ferroloop_only),
            len(r.stock_only),
            r.skipped,
            r.missing,
            f"{r.stock_seconds:.0f}",
            f"{r.ferroloop_seconds:.0f}",
        )
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suites", nargs="*", default=list(SUITES))
    parser.add_argument("--wheel", type=Path, required=True, help="ferroloop wheel to install")
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args()
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suites {unknown}; known: {list(SUITES)}")
    expected = load_expected()
    unexpected: list[str] = []
    rows: list[Comparison] = []
    for name in args.suites:
        suite = SUITES[name]
        if not suite.tests_in_sdist:
            log(f"{name} {suite.version}: the sdist ships no tests, nothing to run")
            rows.append(Comparison(name, note="sdist has no tests"))
            continue
        source = fetch(suite)
        python = venv_for(suite, source, args.wheel.resolve())
        outcomes: dict[str, tuple[dict[str, str], float]] = {}
        for loop in ("stock", "ferroloop"):
            # A server per run: what a test leaves in it (databases, roles, settings, when it
            # fails before its cleanup) cannot change the other loop's results.
            server = (
                postgres_server(CACHE / "runs" / name / f"{loop}-postgres.log")
                if suite.needs_postgres
                else contextlib.nullcontext({})
            )
            with server as extra_env:
                outcomes[loop] = run_tests(suite, python, source, loop, extra_env)
        (stock, stock_seconds), (ferro, ferro_seconds) = outcomes["stock"], outcomes["ferroloop"]
        row = compare(name, stock, ferro)
        row.stock_seconds, row.ferroloop_seconds = stock_seconds, ferro_seconds
        if not stock or not ferro:
            row.note = "a run reported no tests (pytest failed to start? see its log)"
            unexpected.append(f"{name}: no results")
        rows.append(row)

    report = [
        f"python {sys.version.split()[0]}; versions: "
        + ", ".join(f"{SUITES[r.suite].name} {SUITES[r.suite].version}" for r in rows),
        "",
    ]
    report += table([r for r in rows if r.tests])
    for r in rows:
        if r.note:
            report.append(f"\n{r.suite}: {r.note}")
        if r.ferroloop_only:
            report.append(f"\n{r.suite}: ferroloop-only failures")
            for entry in r.ferroloop_only:
                test = entry.split("  ")[0]
                reason = expected.get(test)
                report.append(f"- {entry}" + (f"  accepted: {reason}" if reason else ""))
                if reason is None:
                    unexpected.append(entry)
        if r.stock_only:
            report.append(f"\n{r.suite}: stock-only failures (pass on ferroloop)")
            report += [f"- {entry}" for entry in r.stock_only]
    print("\n".join(report))
    if args.markdown:
        with args.markdown.open("a") as handle:
            handle.write("\n".join(report) + "\n")
    if unexpected:
        print(
            f"\n{len(unexpected)} problem(s): ferroloop-only failures not in "
            f"{EXPECTED.relative_to(ROOT)}, or runs with no results"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
