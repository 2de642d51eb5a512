"""Memory per idle stream connection (issue 11): an `asyncio.start_server` server holding N idle
connections, on stock asyncio, uvloop and ferroloop side by side in one run.

The server is the shape of a chat or WebSocket server: one reader task per connection, which
reads a hello line, answers it, then waits in `reader.readline()` (or `reader.read()`, with
`--wait read`) for data that never comes. Each (loop, N, round) runs in a fresh server
subprocess; the client is another process that opens the N connections on 127.0.0.1 with plain
non-blocking sockets (at most `--inflight` handshakes at a time) and waits for every answer, so
every connection has been accepted and its reader task started before anything is measured.

The figure is the server's RSS growth per connection: VmRSS (/proc/<pid>/status) with the N
connections open, minus VmRSS before they were opened, divided by N. Both are read after a
warm-up (`--warmup` connections opened, answered and closed), `gc.collect()` and a short
settle. Beside it: what the server's RSS kept after the client closed every connection, and
where the growth sits (bytes in pymalloc's blocks: small Python objects; bytes in use in
malloc: larger objects, native heaps, libuv handles). Every loop is measured `--rounds` times
(rounds interleave the loops); the table shows the median and the minimum, the ratio to uvloop
and the issue's target (ferroloop <= 0.8x uvloop's RSS per connection) use the median.

    .venv/bin/python bench/idle.py                          # 10,000 and 15,000, 3 rounds: ~70 s
    .venv/bin/python bench/idle.py --connections 15000 --rounds 5 --markdown
    .venv/bin/python bench/idle.py --mode tracemalloc --top 15  # Python allocations per conn
    .venv/bin/python bench/idle.py --mode objects --connections 10000  # objects per connection

`--mode tracemalloc` (separate server runs: tracing changes RSS) starts tracemalloc after the
baseline and reports the traced bytes still allocated per connection, and the top allocation
sites. `--mode objects` counts every object the garbage collector can see (and what those refer
to) before and after connecting: bytes and objects per connection by type, and the objects
reachable from one connection's task, reader, writer, transport and protocol that did not exist
before (the per-connection object graph, with sys.getsizeof of each).

`--cycles K` (rss mode) has each server connect and close the N connections K times, and
reports RSS and live bytes after every close (a soak: live bytes must not grow).
`--server-exec FILE` runs a Python file in every server process before its loop is made, to
measure a patch (a what-if) without editing the loop.

Loopback only. N is limited by RLIMIT_NOFILE's hard limit (`ulimit -Hn`): both processes raise
their soft limit to it.

Internal entry points: `idle.py --serve LOOP` (server, commands on stdin, JSON lines on stdout)
and `idle.py --client PORT N` (client, same protocol).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import datetime as dt
import errno
import gc
import importlib
import json
import os
import platform
import re
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from _machine import cpu_model, loop_versions

HOST = "127.0.0.1"  # loopback only
HELLO, ACK = b"hi\n", b"ok\n"
BACKLOG = 1024
READ_SIZE = 65536
SETTLE_S = 0.3
STEP_TIMEOUT_S = 180.0
TARGET = 0.80  # ferroloop's RSS per connection <= 0.8x uvloop's (issue 11)
LOOPS: dict[str, tuple[str, str]] = {
    "asyncio": ("asyncio", "new_event_loop"),
    "uvloop": ("uvloop", "new_event_loop"),
    "ferroloop": ("ferroloop", "new_event_loop"),
}
EXIT_NOT_INSTALLED = 4


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# Memory figures (read inside the server)
# --------------------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], int] | None:
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2

    def in_use() -> int:
        m = fn()
        return int(m.uordblks + m.hblkhd)  # all arenas: in-use chunks + mmapped chunks

    return in_use


_MALLOC_IN_USE = _mallinfo2()


def pymalloc_stats() -> dict[str, int]:
    """Bytes in pymalloc's allocated blocks and its arenas, from sys._debugmallocstats()."""
    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    out = {}
    for key, pattern in (
        ("pymalloc_blocks", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
        ("pymalloc_arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
    ):
        m = re.search(pattern, text)
        if m:
            out[key] = int(m.group(1).replace(",", ""))
    return out


def memory() -> dict[str, int]:
    """VmRSS and friends of this process, in bytes, then the allocators' own figures."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    if _MALLOC_IN_USE is not None:
        out["malloc_in_use"] = _MALLOC_IN_USE()
    out.update(pymalloc_stats())
    return out


# --------------------------------------------------------------------------
# Object census (--mode objects)
# --------------------------------------------------------------------------


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


class Census:
    """Every object the GC tracks plus every object reachable from those through untracked
    ones (str, bytes, ints, code objects, tuples of atoms...), kept alive so that ids stay
    unique, with per-type totals."""

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        gc.collect()
        objs = gc.get_objects()
        skip = {id(objs), *exclude}
        seen: dict[int, Any] = {}
        for o in objs:
            if id(o) not in skip:
                seen[id(o)] = o
        stack = [o for o in objs if id(o) not in skip]
        del objs
        while stack:
            o = stack.pop()
            refs = gc.get_referents(o)
            if isinstance(o, types.CodeType):  # not a GC type: no referents of its own
                refs += [o.co_consts, o.co_names, o.co_name, o.co_qualname, o.co_filename]
            for r in refs:
                if id(r) not in seen and id(r) not in skip:
                    seen[id(r)] = r
                    if not gc.is_tracked(r):
                        stack.append(r)
        self.objects = seen
        self.by_type: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for o in seen.values():
            entry = self.by_type[_type_name(o)]
            entry[0] += 1
            entry[1] += sys.getsizeof(o, 0)

    def growth(self, later: Census, n: int, top: int) -> list[dict[str, Any]]:
        rows = []
        for name in set(self.by_type) | set(later.by_type):
            c0, b0 = self.by_type.get(name, (0, 0))
            c1, b1 = later.by_type.get(name, (0, 0))
            if b1 != b0 or c1 != c0:
                rows.append({"type": name, "objects": (c1 - c0) / n, "bytes": (b1 - b0) / n})
        rows.sort(key=lambda r: -r["bytes"])
        return rows[:top]


_LABELLED_ATTRS = (
    "_coro",
    "_fut_waiter",
    "_callbacks",
    "_loop",
    "_context",
    "_result",
    "_exception",
    "_source_traceback",
    "_cancel_message",
)
_MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT (3.11+): attributes kept without a dict


def _values_size(dict_size: int) -> int:
    """3.11 keeps a managed-dict object's attributes in a values array until something asks
    for `__dict__`; the dict made then reports 48 B (PyDictObject) + 16 B (GC header) + one
    pointer per usable slot of the class's shared keys, while the array is that many pointers
    plus a prefix of one byte per slot + 2, rounded up to 8 (dictobject.c, new_values)."""
    if sys.version_info[:2] != (3, 11):
        return dict_size  # other layouts: reported as the dict's own size
    usable = (dict_size - 64) // 8
    return usable * 8 + (usable + 2 + 7) // 8 * 8


def _labelled_referents(obj: Any) -> list[tuple[str, Any]]:
    """Referents of `obj`, each with a label saying how it is reached (best effort; only
    managed-dict instances get their `__dict__` made, see `walk`)."""
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out.append((f"[{k!r}]", v))
            out.append((f"<key {k!r}>", k))
        return out
    if isinstance(obj, (tuple, list)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    refs = gc.get_referents(obj)
    names: dict[int, str] = {}
    if type(obj).__flags__ & _MANAGED_DICT:
        d = obj.__dict__
        if not any(r is d for r in refs):  # made just now: it stands for the values array
            in_dict = {id(v) for v in d.values()}
            refs = [r for r in refs if id(r) not in in_dict] + [d]  # slots, then the values
            names[id(d)] = ".__dict__ (values)"
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                names.setdefault(id(getattr(obj, name)), f".{name}")
            except Exception:  # noqa: BLE001 - unset slots, descriptors that raise
                pass
    if type(obj).__module__ in ("_asyncio", "builtins"):
        for name in _LABELLED_ATTRS:
            try:
                names.setdefault(id(getattr(obj, name)), f".{name}")
            except Exception:  # noqa: BLE001
                pass
    return [(names.get(id(r), f" -> {_type_name(r)}"), r) for r in refs]


def walk(roots: list[tuple[str, Any]], old: dict[int, Any]) -> list[dict[str, Any]]:
    """Objects reachable from `roots` without passing through an object in `old` (alive
    before connecting: the loop, the server, classes, functions, interned names...), breadth
    first, with sys.getsizeof of each. A 3.11 instance's attribute values array is shown as
    its `__dict__ (values)` (made by the walk, after every other measurement), at the array's
    size (`_values_size`)."""
    seen: set[int] = set()
    out = []
    queue = collections.deque(roots)
    while queue:
        label, obj = queue.popleft()
        if id(obj) in seen or id(obj) in old or isinstance(obj, type):
            continue
        seen.add(id(obj))
        size = sys.getsizeof(obj, 0)
        if label.endswith("(values)"):
            size = _values_size(size)
        out.append({"path": label, "type": _type_name(obj), "bytes": size})
        queue.extend((label + sub, child) for sub, child in _labelled_referents(obj))
    return out


# --------------------------------------------------------------------------
# Server (`idle.py --serve LOOP`)
# --------------------------------------------------------------------------


class ServerState:
    def __init__(self) -> None:
        self.open = 0
        self.acked = 0
        self.errors = 0
        self.mark = 0  # `acked` when the last batch of connections started
        self.sample: tuple[Any, ...] | None = None
        self.want_sample = False


def allocation_sites(snapshot: Any, n: int, top: int) -> list[dict[str, Any]]:
    """tracemalloc's traces grouped by traceback (its frames as recorded), per connection:
    bytes, blocks and the commonest block sizes."""
    groups: dict[Any, list[Any]] = {}
    for trace in snapshot.traces:
        g = groups.setdefault(trace.traceback, [0, collections.Counter()])
        g[0] += trace.size
        g[1][trace.size] += 1
    rows = []
    for tb, (size, sizes) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        rows.append(
            {
                "where": " <- ".join(
                    f"{Path(fr.filename).name}:{fr.lineno}" for fr in reversed(tb)
                ),
                "bytes": size / n,
                "blocks": sum(sizes.values()) / n,
                "sizes": " ".join(f"{sz}x{c / n:.2f}" for sz, c in sizes.most_common(4)),
            }
        )
    return rows


async def until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def settled_memory() -> dict[str, int]:
    gc.collect()
    await asyncio.sleep(SETTLE_S)
    gc.collect()
    return memory()


async def server_main(
    loop: asyncio.AbstractEventLoop, wait: str, mode: str, top: int, frames: int
) -> None:
    st = ServerState()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        st.open += 1
        try:
            if await reader.readline() != HELLO:
                st.errors += 1
                return
            if st.want_sample and st.sample is None:
                st.sample = (asyncio.current_task(), reader, writer)
            writer.write(ACK)
            st.acked += 1
            while True:  # idle: nothing more comes until the client closes
                data = await (reader.readline() if wait == "readline" else reader.read(READ_SIZE))
                if not data:
                    break
        except OSError:
            st.errors += 1
        finally:
            writer.close()
            st.open -= 1

    server = await asyncio.start_server(handle, HOST, 0, backlog=BACKLOG)
    commands: asyncio.Queue[str] = asyncio.Queue()
    pending = bytearray()

    def on_stdin() -> None:
        chunk = os.read(0, 4096)
        if not chunk:
            commands.put_nowait("exit")
            return
        pending.extend(chunk)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            commands.put_nowait(line.decode())

    loop.add_reader(0, on_stdin)
    emit("port", port=server.sockets[0].getsockname()[1], pid=os.getpid())
    base_census: Census | None = None
    traced0 = 0
    n_warm = 0
    while True:
        cmd, *args = (await commands.get()).split()
        if cmd == "exit":
            break
        if cmd == "baseline":  # the warm-up connections are answered and closed
            n_warm = int(args[0])
            ok = await until(lambda w=n_warm: st.acked >= w and st.open == 0, STEP_TIMEOUT_S)
            mem = await settled_memory()
            st.mark = st.acked
            emit("baseline", ok=ok, errors=st.errors, **mem)
            if mode == "objects":
                base_census = Census()
                st.want_sample = True
            elif mode == "tracemalloc":
                tracemalloc.start(frames)
                traced0 = tracemalloc.get_traced_memory()[0]
        elif cmd == "measure":
            n = int(args[0])
            ok = await until(lambda n=n: st.acked - st.mark >= n and st.open == n, STEP_TIMEOUT_S)
            mem = await settled_memory()
            extra: dict[str, Any] = {}
            if mode == "tracemalloc":
                snap = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)]
                )
                extra["traced"] = tracemalloc.get_traced_memory()[0] - traced0
                extra["sites"] = allocation_sites(snap, n, top)
                del snap
            elif mode == "objects" and base_census is not None and st.sample is not None:
                later = Census(exclude={id(base_census), id(base_census.objects)})
                extra["types"] = base_census.growth(later, n, top)
                task, reader, writer = st.sample
                roots = [
                    ("task", task),
                    ("reader", reader),
                    ("writer", writer),
                    ("transport", writer.transport),
                    ("protocol", getattr(writer, "_protocol", None)),
                ]
                extra["walk"] = walk(roots, base_census.objects)
                del later
            emit("measure", ok=ok, open=st.open, errors=st.errors, **mem, **extra)
        elif cmd == "closed":
            ok = await until(lambda: st.open == 0, STEP_TIMEOUT_S)
            st.sample = None
            st.mark = st.acked
            mem = await settled_memory()
            emit("closed", ok=ok, errors=st.errors, **mem)
    loop.remove_reader(0)
    server.close()


def serve(
    loop_name: str, wait: str, mode: str, top: int, frames: int, server_exec: str | None
) -> int:
    raise_nofile()
    if server_exec:  # e.g. a patch to try (--server-exec)
        code = Path(server_exec).read_text()
        exec(compile(code, server_exec, "exec"), {"__name__": "__server_exec__"})
    module_name, attr = LOOPS[loop_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        sys.stderr.write(f"NOT_INSTALLED: {exc}\n")
        return EXIT_NOT_INSTALLED
    loop: asyncio.AbstractEventLoop = getattr(module, attr)()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(server_main(loop, wait, mode, top, frames))
    finally:
        loop.close()
    return 0


# --------------------------------------------------------------------------
# Client (`idle.py --client PORT N`): plain non-blocking sockets
# --------------------------------------------------------------------------


def open_connections(port: int, n: int, inflight: int, timeout: float) -> list[socket.socket]:
    """N connections to the server, each one having sent HELLO and received ACK."""
    ep = select.epoll()
    pending: dict[int, tuple[socket.socket, bytearray]] = {}
    done: list[socket.socket] = []
    started = 0
    deadline = time.monotonic() + timeout
    try:
        while len(done) < n:
            while started < n and len(pending) < inflight:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex((HOST, port))
                if err not in (0, errno.EINPROGRESS):
                    raise OSError(err, f"connect: {os.strerror(err)} ({started} opened)")
                pending[s.fileno()] = (s, bytearray())
                ep.register(s.fileno(), select.EPOLLOUT)
                started += 1
            events = ep.poll(1.0)
            if not events and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(done)} of {n} connections answered, {len(pending)} waiting"
                )
            for fd, ev in events:
                s, buf = pending[fd]
                if ev & select.EPOLLOUT:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"connect: {os.strerror(err)}")
                    s.send(HELLO)  # 3 bytes into an empty send buffer
                    ep.modify(fd, select.EPOLLIN)
                    continue
                data = s.recv(16)
                if not data:
                    raise ConnectionError("the server closed a connection before answering")
                buf += data
                if len(buf) >= len(ACK):
                    if bytes(buf) != ACK:
                        raise ConnectionError(f"unexpected answer {bytes(buf)!r}")
                    ep.unregister(fd)
                    del pending[fd]
                    done.append(s)
    except BaseException:
        for s, _ in pending.values():
            s.close()
        for s in done:
            s.close()
        raise
    finally:
        ep.close()
    return done


def client(port: int, n: int, warmup: int, inflight: int) -> int:
    hard = raise_nofile()
    if n + 16 > hard:
        emit(
            "error",
            message=f"{n} connections need more than RLIMIT_NOFILE's hard limit "
            f"{hard} (ulimit -Hn)",
        )
        return 2
    try:
        for s in open_connections(port, warmup, inflight, STEP_TIMEOUT_S):
            s.close()
        emit("warm")
        socks: list[socket.socket] = []
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "go":
                t0 = time.monotonic()
                socks = open_connections(port, n, inflight, STEP_TIMEOUT_S)
                emit("ready", connections=len(socks), seconds=time.monotonic() - t0)
            elif cmd == "close":
                for s in socks:
                    s.close()
                socks = []
                emit("closed")
            elif cmd == "exit":
                break
    except (OSError, TimeoutError) as exc:
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


class Peer:
    """A subprocess spoken to with lines on stdin, answering JSON lines on stdout."""

    def __init__(self, cmd: list[str]) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr
        )
        assert self.proc.stdout is not None
        self.out: IO[bytes] = self.proc.stdout
        self.buf = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float = STEP_TIMEOUT_S + 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("event") == event:
                    return dict(msg)
                if msg.get("event") == "error":
                    raise RuntimeError(msg.get("message"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {event!r}")
            ready, _, _ = select.select([self.out], [], [], left)
            if ready:
                chunk = os.read(self.out.fileno(), 1 << 20)
                if not chunk:
                    raise RuntimeError(
                        f"exited (status {self.proc.wait()}) before {event!r}: {self.stderr_tail()}"
                    )
                self.buf += chunk

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("exit")
                self.proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.stderr.close()


def run_one(loop: str, n: int, opts: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One fresh server for `loop` holding `n` idle connections; its figures."""
    me = str(Path(__file__).resolve())
    res: dict[str, Any] = {"loop": loop, "n": n, "mode": mode}
    server = Peer(
        [
            sys.executable,
            me,
            "--serve",
            loop,
            "--wait",
            opts.wait,
            "--mode",
            mode,
            "--top",
            str(opts.top),
            "--frames",
            str(opts.frames),
        ]
        + (["--server-exec", str(opts.server_exec)] if opts.server_exec else [])
    )
    peer: Peer | None = None
    try:
        port = server.expect("port")["port"]
        peer = Peer(
            [
                sys.executable,
                me,
                "--client",
                str(port),
                str(n),
                "--warmup",
                str(opts.warmup),
                "--inflight",
                str(opts.inflight),
            ]
        )
        peer.expect("warm")
        server.send(f"baseline {opts.warmup}")
        res["baseline"] = server.expect("baseline")
        res["cycles"] = []
        for _ in range(opts.cycles if mode == "rss" else 1):
            peer.send("go")
            connect_s = peer.expect("ready")["seconds"]
            server.send(f"measure {n}")
            measure = server.expect("measure")
            peer.send("close")
            peer.expect("closed")
            server.send("closed")
            res["cycles"].append(
                {"connect_s": connect_s, "measure": measure, "closed": server.expect("closed")}
            )
        res.update(res["cycles"][0])
        if any(
            c["measure"]["errors"] or not (c["measure"]["ok"] and c["closed"]["ok"])
            for c in res["cycles"]
        ):
            raise RuntimeError("the server did not see every connection open and close")
        if not res["baseline"]["ok"]:
            raise RuntimeError("the server did not see the warm-up connections open and close")
        res["per_conn"] = {
            key: (res["measure"][key] - res["baseline"][key]) / n
            for key, value in res["measure"].items()
            if type(value) is int and key in res["baseline"] and key not in ("open", "errors")
        }
        res["kept_per_conn"] = (res["closed"]["VmRSS"] - res["baseline"]["VmRSS"]) / n
        live = ("pymalloc_blocks", "malloc_in_use")
        for c in res["cycles"]:
            c["kept_per_conn"] = (c["closed"]["VmRSS"] - res["baseline"]["VmRSS"]) / n
            c["live_kept_per_conn"] = (
                sum(c["closed"].get(k, 0) - res["baseline"].get(k, 0) for k in live) / n
            )
        res["live_kept_per_conn"] = res["cycles"][0]["live_kept_per_conn"]
    except RuntimeError as exc:
        res["error"] = str(exc)
    finally:
        if peer is not None:
            peer.stop()
        server.stop()
    return res


def kb(x: float) -> str:
    return f"{x / 1024:.2f}"


def render(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [headers, *rows])


def rss_report(
    results: list[dict[str, Any]], loops: list[str], ns: list[int], markdown: bool
) -> tuple[str, bool | None]:
    rows, detail, verdicts = [], [], []
    med: dict[tuple[str, int], float] = {}
    for n in ns:
        for loop in loops:
            runs = [r for r in results if r["loop"] == loop and r["n"] == n]
            good = [r for r in runs if "error" not in r]
            if not good:
                err = runs[0].get("error", "not run") if runs else "not run"
                rows.append([f"{n:,}", loop, "FAILED", err[:60], "", "", ""])
                continue
            per = [r["per_conn"]["VmRSS"] for r in good]
            med[loop, n] = statistics.median(per)
            rows.append(
                [
                    f"{n:,}",
                    loop,
                    kb(med[loop, n]),
                    kb(min(per)),
                    " ".join(kb(p) for p in per),
                    kb(statistics.median(r["kept_per_conn"] for r in good)),
                    "",
                ]
            )
            mid = sorted(good, key=lambda r: r["per_conn"]["VmRSS"])[len(good) // 2]
            pc = mid["per_conn"]
            detail.append(
                [
                    f"{n:,}",
                    loop,
                    f"{pc['VmRSS']:.0f}",
                    f"{pc.get('RssAnon', 0):.0f}",
                    f"{pc.get('pymalloc_blocks', 0):.0f}",
                    f"{pc.get('malloc_in_use', 0):.0f}",
                    f"{mid['live_kept_per_conn']:.0f}",
                    f"{mid['connect_s']:.1f}",
                ]
            )
        base = med.get(("uvloop", n))
        for row in rows[-len(loops) :]:
            if base and (row[1], n) in med:
                row[6] = f"{med[row[1], n] / base:.2f}x"
        if base and ("ferroloop", n) in med:
            verdicts.append((n, med["ferroloop", n] / base))
    out = [
        "Server RSS growth per idle connection, KB (1024 B): median and minimum over the "
        "rounds, every round, the RSS still held after the client closed them all, and the "
        "median's ratio to uvloop's.",
        "",
        render(
            ["N", "loop", "median", "min", "rounds", "kept after close", "vs uvloop"],
            rows,
            markdown,
        ),
        "",
        "Where the growth sits (median round), bytes per connection: VmRSS, its anonymous "
        "part, bytes in pymalloc's allocated blocks (small Python objects), bytes in use "
        "in malloc (larger objects, native heaps), what those two still held after the "
        "client closed every connection (a leak shows here), and the seconds the client "
        "took to connect all N.",
        "",
        render(
            [
                "N",
                "loop",
                "VmRSS",
                "RssAnon",
                "pymalloc blocks",
                "malloc in use",
                "live after close",
                "connect s",
            ],
            detail,
            markdown,
        ),
    ]
    soak = [r for r in results if "error" not in r and len(r.get("cycles", ())) > 1]
    if soak:
        out += [
            "",
            "Soak: the same server connects N, then closes them all, again and again. "
            "Per connection of one batch, each time: RSS above the baseline with the "
            "N open (KB) / the same after they closed (KB) / bytes still live in "
            "pymalloc + malloc after they closed.",
            "",
        ]
        out.append(
            render(
                ["N", "loop", "round", *[f"cycle {i + 1}" for i in range(len(soak[0]["cycles"]))]],
                [
                    [
                        f"{r['n']:,}",
                        r["loop"],
                        str(r["round"]),
                        *[
                            f"{kb((c['measure']['VmRSS'] - r['baseline']['VmRSS']) / r['n'])} / "
                            f"{kb(c['kept_per_conn'])} / {c['live_kept_per_conn']:.0f}"
                            for c in r["cycles"]
                        ],
                    ]
                    for r in soak
                ],
                markdown,
            )
        )
    met: bool | None = None
    if verdicts:
        met = all(ratio <= TARGET for _, ratio in verdicts)
        worst = max(verdicts, key=lambda v: v[1])
        out += [
            "",
            f"target (ferroloop <= {TARGET:.2f}x uvloop's RSS per connection, median, "
            f"at every N): {'met' if met else 'not met'} "
            f"(worst {worst[1]:.2f}x at {worst[0]:,})",
        ]
    return "\n".join(out), met


def tracemalloc_report(
    results: list[dict[str, Any]], loops: list[str], top: int, markdown: bool
) -> str:
    out = []
    rows = []
    for r in results:
        if "error" in r:
            rows.append([f"{r['n']:,}", r["loop"], "FAILED", r["error"][:60]])
            continue
        m = r["measure"]
        rows.append(
            [
                f"{r['n']:,}",
                r["loop"],
                f"{m['traced'] / r['n']:.0f}",
                f"{r['per_conn']['VmRSS']:.0f}",
            ]
        )
    out.append(render(["N", "loop", "traced B/conn", "VmRSS B/conn (tracing on)"], rows, markdown))
    if top:
        for r in results:
            if "error" in r:
                continue
            out += [
                "",
                f"{r['loop']}, N={r['n']:,}: top {top} allocation sites still alive, "
                f"per connection",
            ]
            out.append(
                render(
                    ["bytes", "blocks", "block sizes (B x per conn)", "where (innermost first)"],
                    [
                        [f"{s['bytes']:.0f}", f"{s['blocks']:.2f}", s["sizes"], s["where"]]
                        for s in r["measure"]["sites"]
                    ],
                    markdown,
                )
            )
    return "\n".join(out)


def objects_report(results: list[dict[str, Any]], markdown: bool) -> str:
    out = []
    for r in results:
        if "error" in r:
            out.append(f"{r['loop']}: FAILED: {r['error']}")
            continue
        m = r["measure"]
        total = sum(t["bytes"] for t in m.get("types", []))
        out += [
            "",
            f"{r['loop']}, N={r['n']:,}: growth per connection by type "
            f"(sys.getsizeof; top rows sum to {total:.0f} B)",
        ]
        out.append(
            render(
                ["type", "objects/conn", "bytes/conn"],
                [
                    [t["type"], f"{t['objects']:.2f}", f"{t['bytes']:.0f}"]
                    for t in m.get("types", [])
                ],
                markdown,
            )
        )
        items = m.get("walk", [])
        out += [
            "",
            f"{r['loop']}: objects reachable from one connection that did not exist "
            f"before, {len(items)} objects, {sum(i['bytes'] for i in items)} B",
        ]
        out.append(
            render(
                ["bytes", "type", "path"],
                [[str(i["bytes"]), i["type"], i["path"]] for i in items],
                markdown,
            )
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--serve", metavar="LOOP", help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--connections", default="10000,15000", help="comma list of N")
    ap.add_argument("--rounds", type=int, help="runs per loop and N (rss mode: 3, others: 1)")
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--mode", choices=("rss", "tracemalloc", "objects"), default="rss")
    ap.add_argument(
        "--wait",
        choices=("readline", "read"),
        default="readline",
        help="what the idle reader task awaits",
    )
    ap.add_argument(
        "--cycles",
        type=int,
        default=1,
        help="rss mode: connect and close N this many times per server (a soak)",
    )
    ap.add_argument("--warmup", type=int, default=200, help="connections before the baseline")
    ap.add_argument("--inflight", type=int, default=128, help="client's unanswered connects")
    ap.add_argument("--top", type=int, default=25, help="rows of allocation sites / types")
    ap.add_argument(
        "--frames", type=int, default=1, help="tracemalloc frames; >1 groups sites by traceback"
    )
    ap.add_argument(
        "--server-exec",
        metavar="FILE",
        help="Python file each server runs before making its loop (to try a patch)",
    )
    ap.add_argument("--markdown", action="store_true", help="Markdown tables")
    ap.add_argument("--output", type=Path, help="also write every run's figures as JSON here")
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.wait, args.mode, args.top, args.frames, args.server_exec)
    if args.client:
        return client(args.client[0], args.client[1], args.warmup, args.inflight)

    loops = [x for x in args.loops.split(",") if x]
    unknown = set(loops) - set(LOOPS)
    if unknown:
        ap.error(f"unknown loops {sorted(unknown)}; choose from {', '.join(LOOPS)}")
    ns = [int(x.replace("_", "")) for x in args.connections.split(",") if x]
    hard = raise_nofile()
    if max(ns) + 16 > hard:
        ap.error(
            f"N={max(ns)} needs RLIMIT_NOFILE's hard limit (ulimit -Hn, now {hard}) above N + 16"
        )
    rounds = args.rounds or (3 if args.mode == "rss" else 1)
    versions = loop_versions(LOOPS)
    print(
        f"# idle connections: asyncio.start_server, one reader task per connection awaiting "
        f"{args.wait}(); mode {args.mode}"
    )
    print(
        f"# {dt.datetime.now().astimezone():%Y-%m-%dT%H:%M:%S%z}, {os.cpu_count()} CPUs "
        f"({cpu_model()}), Linux {platform.release()}, Python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "asyncio")
    )
    print(
        f"# N = {', '.join(f'{n:,}' for n in ns)}; {rounds} round(s), loops interleaved; "
        f"warm-up {args.warmup} connections, RLIMIT_NOFILE {hard}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for n in ns:
            order = loops[rnd % len(loops) :] + loops[: rnd % len(loops)]
            for loop in order:
                if versions.get(loop) == "not installed":
                    results.append({"loop": loop, "n": n, "error": "not installed"})
                    continue
                r = run_one(loop, n, args, args.mode)
                r["round"] = rnd + 1
                results.append(r)
                figure = (
                    f"{kb(r['per_conn']['VmRSS'])} KB/conn"
                    if "error" not in r
                    else f"FAILED: {r['error']}"
                )
                print(f"  round {rnd + 1} N={n:,} {loop}: {figure}", file=sys.stderr, flush=True)
    print()
    met: bool | None = None
    if args.mode == "rss":
        text, met = rss_report(results, loops, ns, args.markdown)
        print(text)
    elif args.mode == "tracemalloc":
        print(tracemalloc_report(results, loops, args.top, args.markdown))
    else:
        print(objects_report(results, args.markdown))
    if args.output:
        args.output.write_text(
            json.dumps(
                {
                    "versions": versions,
                    "args": vars(args) | {"output": str(args.output)},
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )
    failed = any("error" in r and r["error"] != "not installed" for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
