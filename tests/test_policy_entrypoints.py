"""ferroloop's own entry points: EventLoopPolicy, install(), run(), and `python -m ferroloop`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

pytestmark = [pytest.mark.ferroloop_only, pytest.mark.timeout(60)]


@pytest.fixture
def restore_policy():
    saved = asyncio.events._event_loop_policy
    yield
    policy = asyncio.events._event_loop_policy
    current = getattr(getattr(policy, "_local", None), "_loop", None)
    if current is not None and not current.is_closed():
        current.close()
    asyncio.set_event_loop_policy(saved)


def is_ferroloop_loop(loop):
    return any(cls.__module__.startswith("ferroloop") for cls in type(loop).__mro__)


# --- EventLoopPolicy ------------------------------------------------------------------


def test_policy_new_event_loop(ferroloop):
    policy = ferroloop.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert not loop.is_running()
        assert not loop.is_closed()
    finally:
        loop.close()


def test_policy_get_set_event_loop(ferroloop):
    policy = ferroloop.EventLoopPolicy()
    first = policy.get_event_loop()  # created lazily in the main thread
    other = ferroloop.new_event_loop()
    try:
        assert isinstance(first, ferroloop.Loop)
        assert policy.get_event_loop() is first
        policy.set_event_loop(other)
        assert policy.get_event_loop() is other
        policy.set_event_loop(None)
        with pytest.raises(RuntimeError, match="no current event loop"):
            policy.get_event_loop()
    finally:
        first.close()
        other.close()


def test_policy_get_event_loop_outside_main_thread(ferroloop):
    policy = ferroloop.EventLoopPolicy()
    errors = []

    def worker():
        try:
            policy.get_event_loop()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1


def test_install(ferroloop, restore_policy):
    ferroloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)

    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()

    async def running_loop():
        return asyncio.get_running_loop()

    used = asyncio.run(running_loop())
    assert isinstance(used, ferroloop.Loop)
    assert used.is_closed()

    with asyncio.Runner() as runner:
        assert isinstance(runner.get_loop(), ferroloop.Loop)


def test_runner_with_loop_factory(ferroloop):
    async def main():
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert isinstance(runner.run(main()), ferroloop.Loop)
        assert runner.run(asyncio.sleep(0, "again")) == "again"


# --- ferroloop.run --------------------------------------------------------------------


def test_run_returns_result_and_closes_loop(ferroloop):
    async def main():
        await asyncio.sleep(0.001)
        return asyncio.get_running_loop(), "result"

    loop, value = ferroloop.run(main())
    assert value == "result"
    assert isinstance(loop, ferroloop.Loop)
    assert loop.is_closed()
    assert asyncio.events._get_running_loop() is None


@pytest.mark.parametrize("debug", [True, False])
def test_run_debug(ferroloop, debug):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert ferroloop.run(main(), debug=debug) is debug


def test_run_propagates_exception(ferroloop):
    async def main():
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        ferroloop.run(main())


def test_run_cancels_leftover_tasks(ferroloop):
    cancelled = []

    async def leftover():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.get_running_loop().create_task(leftover())
        await asyncio.sleep(0)

    ferroloop.run(main())
    assert cancelled == [True]


@pytest.mark.parametrize("outer", ["outer_stock", "outer_ferroloop"])
def test_run_inside_running_loop_raises(ferroloop, outer):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            ferroloop.run(coro)
        finally:
            coro.close()

    loop = asyncio.SelectorEventLoop() if outer == "outer_stock" else ferroloop.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            loop.run_until_complete(main())
    finally:
        loop.close()


def test_run_rejects_non_coroutine(ferroloop):
    with pytest.raises(ValueError, match="coroutine was expected"):
        ferroloop.run(lambda: None)


# --- python -m ferroloop --------------------------------------------------------------

PROBE = """
import asyncio, dataclasses, json, pickle, sys
import sibling

@dataclasses.dataclass
class Point:  # dataclasses and pickle look the class up in sys.modules["__main__"]
    x: int

assert pickle.loads(pickle.dumps(Point(1))) == Point(1)

async def main():
    return type(asyncio.get_running_loop())

def cls_names(cls):
    return [c.__module__ + "." + c.__qualname__ for c in cls.__mro__]

new_loop = asyncio.new_event_loop()
print(json.dumps({
    "argv": sys.argv,
    "name": __name__,
    "file": __file__,
    "path0": sys.path[0],
    "spec": None if __spec__ is None else __spec__.name,
    "sibling": sibling.VALUE,
    "running_loop": cls_names(asyncio.run(main())),
    "new_event_loop": cls_names(type(new_loop)),
}))
new_loop.close()
"""


def python(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=50,
        cwd=cwd,
        env=env,
    )


def probe_output(proc):
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    loops = {key: data.pop(key) for key in ("running_loop", "new_event_loop")}
    uses_ferroloop = {
        key: any(name.startswith("ferroloop") for name in mro) for key, mro in loops.items()
    }
    return data, uses_ferroloop


@pytest.fixture
def project(tmp_path):
    """A small program tree: app/script.py, app/sibling.py, app/pkg/__main__.py, app/climod.py."""
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "script.py").write_text(PROBE)
    (app / "climod.py").write_text(PROBE)
    (app / "pkg" / "__init__.py").write_text("")
    (app / "pkg" / "__main__.py").write_text(PROBE)
    (app / "sibling.py").write_text("VALUE = 'sibling imported'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return app, elsewhere


def test_cli_script_matches_plain_python(ferroloop, project):
    app, elsewhere = project
    script = str(app / "script.py")
    plain, plain_loops = probe_output(python(script, "a", "-m", "--flag", cwd=elsewhere))
    ours, our_loops = probe_output(
        python("-m", "ferroloop", script, "a", "-m", "--flag", cwd=elsewhere)
    )
    assert ours == plain
    assert ours["argv"] == [script, "a", "-m", "--flag"]
    assert ours["name"] == "__main__"
    assert plain_loops == {"running_loop": False, "new_event_loop": False}
    assert our_loops == {"running_loop": True, "new_event_loop": True}


def test_cli_relative_script_path(ferroloop, project):
    app, _ = project
    plain, _ = probe_output(python("script.py", "x", cwd=app))
    ours, our_loops = probe_output(python("-m", "ferroloop", "script.py", "x", cwd=app))
    assert ours == plain
    assert ours["argv"] == ["script.py", "x"]
    assert our_loops["running_loop"]


@pytest.mark.parametrize("module", ["climod", "pkg"])
def test_cli_module_matches_plain_python(ferroloop, project, module):
    app, _ = project
    plain, _ = probe_output(python("-m", module, "a", "b", cwd=app))
    ours, our_loops = probe_output(python("-m", "ferroloop", "-m", module, "a", "b", cwd=app))
    assert ours == plain
    assert ours["argv"][1:] == ["a", "b"]
    assert ours["name"] == "__main__"
    assert our_loops == {"running_loop": True, "new_event_loop": True}


EXIT_BODIES = {
    "return": "pass",
    "sys_exit_3": "sys.exit(3)",
    "sys_exit_message": "sys.exit('bye message')",
    "uncaught": "raise ValueError('boom from script')",
    "keyboard_interrupt": "raise KeyboardInterrupt",
}


@pytest.mark.parametrize("case", list(EXIT_BODIES))
def test_cli_exit_status_matches_plain_python(ferroloop, tmp_path, case):
    script = tmp_path / "exits.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys

            async def main():
                await asyncio.sleep(0)
                {EXIT_BODIES[case]}

            asyncio.run(main())
            """
        )
    )
    plain = python(str(script), cwd=tmp_path)
    ours = python("-m", "ferroloop", str(script), cwd=tmp_path)
    assert ours.returncode == plain.returncode, ours.stderr
    assert {"return": 0, "sys_exit_3": 3, "sys_exit_message": 1, "uncaught": 1}.get(
        case, plain.returncode
    ) == ours.returncode
    if case == "uncaught":
        assert "Traceback (most recent call last)" in ours.stderr
        assert "ValueError: boom from script" in ours.stderr
        assert str(script) in ours.stderr
    if case == "sys_exit_message":
        assert ours.stderr.strip() == "bye message"


CTRL_C_SCRIPT = """
import asyncio

async def main():
    try:
        print("started", flush=True)
        await asyncio.sleep(30)
    finally:
        print("cleanup ran", flush=True)

asyncio.run(main())
"""


def ctrl_c(args, cwd):
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out, err


def test_cli_ctrl_c_matches_plain_python(ferroloop, tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    plain = ctrl_c([str(script)], tmp_path)
    ours = ctrl_c(["-m", "ferroloop", str(script)], tmp_path)
    assert ours[:2] == plain[:2], ours[2]
    assert ours[1] == "cleanup ran\n"
    assert "KeyboardInterrupt" in ours[2]


def test_cli_plain_sync_script(ferroloop, tmp_path):
    script = tmp_path / "sync.py"
    script.write_text("import sys\nprint('no asyncio here', sys.argv[1:])\n")
    proc = python("-m", "ferroloop", str(script), "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "no asyncio here ['1']\n"


def test_cli_missing_script(ferroloop, tmp_path):
    proc = python("-m", "ferroloop", str(tmp_path / "nope.py"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "nope.py" in proc.stderr
