"""The native module's stub covers what the Rust code calls on Python objects by name.

Rust calls Python methods by name (`obj.call_method1(intern!(py, "_debug_log"), ...)`,
`getattr("handle_repr")`): nothing checks such a name at build time, and a typo or a renamed
Python method only fails when that path runs. So:

- every name the Rust sources look up on a Python object must be declared, either in a
  `Protocol` of python/ferroloop/_ferroloop.pyi (for objects of ours: the transport owners,
  the loop, `ferroloop._helpers`) or in `INTERFACE_NAMES` below (Python's and asyncio's own
  interfaces: protocol callbacks, Future and socket methods...);
- the Python classes (and the module) behind each Protocol implement every member of it
  with compatible parameters.

The names are extracted from src/**/*.rs with the patterns in `_NAME_PATTERNS`; a lookup
whose name is not a literal at the call site must be listed in `INDIRECT_LOOKUPS`, which
says where its names come from (they are extracted there). The stub itself is checked
against the built module by stubtest (scripts/test.sh, lint step).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.ferroloop_only, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
STUB = ROOT / "python" / "ferroloop" / "_ferroloop.pyi"

_NAME = r'"([A-Za-z_][A-Za-z0-9_]*)"'
# Where a name is given to Python at the call site (comments are stripped first).
_NAME_PATTERNS = (
    # `intern!(py, "name")`: nearly every lookup (call_method*, getattr, setattr, keywords).
    re.compile(r"\bintern!\(\s*[^,]+?,\s*" + _NAME + r"\s*\)"),
    # `PyString::intern(py, "name")`: keyword names built once.
    re.compile(r"\bPyString::intern\(\s*[^,]+?,\s*" + _NAME + r"\s*\)"),
    # A plain literal passed to a lookup: `.call_method0("name")`, `.getattr("name")`.
    re.compile(r"\.(?:call_method\w*|getattr\w*|setattr|hasattr|delattr)\(\s*" + _NAME),
    # `const WRITE_READY: &'static str = "_write_ready";`: a name kept in a constant.
    re.compile(r"\bconst\s+\w+\s*:\s*&(?:'static\s+)?str\s*=\s*" + _NAME),
)
# `const SOCKET_METHODS: [&str; 16] = ["fileno", ...];`: names kept in a constant array.
_NAME_ARRAY = re.compile(
    r"\bconst\s+\w+\s*:\s*\[\s*&(?:'static\s+)?str\s*;[^\]]*\]\s*=\s*\[(.*?)\]", re.S
)
# A lookup whose first argument is not a literal (checked against INDIRECT_LOOKUPS).
_LOOKUP = re.compile(
    r"\.(call_method\w*|getattr\w*|setattr|hasattr|delattr)\((?!\s*(?:\"|intern!))"
)

# Lookups whose name is an expression, and where the names it takes are written (and so
# extracted by `_NAME_PATTERNS`). A new one fails `test_indirect_lookups_are_known`.
INDIRECT_LOOKUPS = {
    # src/transports/base.rs `as_handle`: the core's read path, `intern!(py, "_read_ready")`,
    # or its write path, given to `NativeTransport::new` in `Hooks` as the constant
    # WRITE_READY of each core ("_write_ready", "_sendto_ready").
    "path_name": "intern! in as_handle; const WRITE_READY in src/transports/stream.rs and datagram.rs",
    # src/transports/base.rs `call_flow_control`: `intern!(py, "pause_writing")` and
    # `intern!(py, "resume_writing")` from maybe_pause_protocol / maybe_resume_protocol.
    "method": "intern! at the callers of call_flow_control",
    # src/sock_ops.rs `sock_call`: the loop's `_sock_*_py` fallback, `intern!`ed by each
    # `sock_*` function.
    "python_path": "intern! at the callers of sock_call",
    # src/sock_ops.rs `type_is_plain`: every name of `const SOCKET_METHODS` (a socket subclass
    # overriding one of them takes asyncio's Python path).
    "name": "const SOCKET_METHODS in src/sock_ops.rs",
    # src/transports/owner_methods.rs `forward`: a method of the transport's core, one of
    # the names of the `forwarders!` list there (checked against the stub's core classes by
    # `test_forwarded_methods_are_core_methods`).
    "name(py)": "the forwarders! list in src/transports/owner_methods.rs",
    # src/event_loop/fast_call.rs `install_method`: sets our own C methods (LoopCore's
    # call_soon, call_soon_threadsafe, call_later, call_at; the transports' forwarders of
    # src/transports/owner_methods.rs) on our own classes; nothing is looked up.
    "name.to_str().unwrap_or_default()": "LoopCore's own methods (declared in the stub)",
}

# The native cores' own methods, looked up on themselves to become watcher callbacks; they
# are declared on the stub's core classes (checked by `test_own_methods_are_in_the_stub`).
OWN_NATIVE_METHODS = {"_read_ready", "_write_ready", "_sendto_ready"}

# Names of Python's and asyncio's own interfaces the Rust code uses, by the objects they are
# looked up on. Every entry must still be used (the list is exact, not a wish list).
INTERFACE_NAMES = {
    # asyncio.Protocol / BufferedProtocol callbacks (src/transports/stream.rs)
    "data_received",
    "eof_received",
    "get_buffer",
    "buffer_updated",
    # asyncio.DatagramProtocol callbacks (src/transports/datagram.rs)
    "datagram_received",
    "error_received",
    # asyncio flow control, on the protocol (src/transports/common.rs)
    "pause_writing",
    "resume_writing",
    # asyncio.Future: write waiters, the futures behind SockOp (src/transports/stream.rs,
    # src/sock_ops.rs); `_asyncio_future_blocking` is the attribute `await` sets.
    "done",
    "result",
    "set_result",
    "set_exception",
    "_asyncio_future_blocking",
    # Keyword names: Future(loop=), Task(coro, loop=, name=, context=), a task factory's
    # context=; `context` is also the keyword our call_soon family parses.
    "loop",
    "name",
    "context",
    # Module attributes: asyncio.Future, asyncio.Task, socket.socket and _socket.socket,
    # asyncio.log.logger and its warning() and debug()
    "Future",
    "Task",
    "socket",
    "logger",
    "warning",
    "debug",
    # socket.socket methods: the I/O and checks the native paths replace or use (socket
    # subclasses' own methods are called), and SOCKET_METHODS (src/sock_ops.rs)
    "fileno",
    "gettimeout",
    "getblocking",
    "setblocking",
    "getsockopt",
    "recv",
    "recv_into",
    "recvfrom",
    "recvfrom_into",
    "send",
    "sendto",
    "sendmsg",
    "accept",
    "_accept",
    "connect",
    "close",
    # The object protocol: an instance's __dict__, type(sock).__getattribute__ (in
    # SOCKET_METHODS), a member descriptor's __get__, an exception's __traceback__, an fd
    # object's __index__ / __int__ (add_reader on a non-int fd)
    "__dict__",
    "__getattribute__",
    "__get__",
    "__traceback__",
    "__index__",
    "__int__",
    # bytes.join (b"".join(chunks)); WeakValueDictionary.data (the loop's _transports)
    "join",
    "data",
}


def _strip_comments(text: str) -> str:
    """Drops `//` comments (doc comments included), keeping line numbers."""
    out = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("//"):
            out.append("")
            continue
        # A trailing comment; `//` inside a string literal on such a line is not expected
        # in the lines that matter (lookups).
        out.append(re.sub(r"\s//\s.*$", "", line))
    return "\n".join(out)


def _sources() -> Iterator[tuple[str, str]]:
    for path in sorted(SRC.rglob("*.rs")):
        yield str(path.relative_to(ROOT)), _strip_comments(path.read_text())


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def rust_names() -> dict[str, list[str]]:
    """Every name the Rust sources give Python by name, with where (`file:line`)."""
    found: dict[str, list[str]] = {}
    for rel, text in _sources():
        for pattern in _NAME_PATTERNS:
            for m in pattern.finditer(text):
                found.setdefault(m.group(1), []).append(f"{rel}:{_line(text, m.start())}")
        for m in _NAME_ARRAY.finditer(text):
            for item in re.finditer(_NAME, m.group(1)):
                where = f"{rel}:{_line(text, m.start(1) + item.start())}"
                found.setdefault(item.group(1), []).append(where)
    return found


def _first_argument(text: str, start: int) -> str:
    """The first argument of the call whose `(` is just before `start`, whitespace-normalised."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif c == "," and depth == 0:
            break
    else:
        i = len(text)
    return " ".join(text[start:i].split())


def indirect_lookups() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for rel, text in _sources():
        for m in _LOOKUP.finditer(text):
            arg = _first_argument(text, m.end())
            found.setdefault(arg, []).append(f"{rel}:{_line(text, m.start())}")
    return found


# ----------------------------------------------------------------------------- the stub


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def _is_protocol(cls: ast.ClassDef) -> bool:
    return any(
        (isinstance(b, ast.Name) and b.id == "Protocol")
        or (isinstance(b, ast.Attribute) and b.attr == "Protocol")
        for b in cls.bases
    )


def stub_protocols() -> dict[str, ast.ClassDef]:
    return {
        node.name: node
        for node in _stub_tree().body
        if isinstance(node, ast.ClassDef) and _is_protocol(node)
    }


def protocol_members(cls: ast.ClassDef) -> dict[str, ast.FunctionDef | ast.AnnAssign]:
    """The methods and annotated attributes a stub class declares in its body."""
    members: dict[str, ast.FunctionDef | ast.AnnAssign] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            members[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members[node.target.id] = node
    return members


def declared_names() -> dict[str, str]:
    """Name -> the Protocol of the stub that declares it."""
    declared: dict[str, str] = {}
    for proto, cls in stub_protocols().items():
        for name in protocol_members(cls):
            declared[name] = proto
    return declared


def stub_class_members() -> dict[str, set[str]]:
    """Members of the stub's (non-Protocol) classes, inherited stub members included."""
    classes: dict[str, set[str]] = {}
    for node in _stub_tree().body:
        if not isinstance(node, ast.ClassDef) or _is_protocol(node):
            continue
        names = set(protocol_members(node))
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                names |= classes[base.id]
        classes[node.name] = names
    return classes


# ------------------------------------------------------------------- (a) names are declared


def test_the_extraction_finds_the_known_lookups() -> None:
    # Guards the patterns themselves: one name of each kind of call site.
    names = rust_names()
    for expected in (
        "_call_connection_lost",  # intern! in call_method1
        "_report_callback_exception",  # a literal on the line after call_method1(
        "handle_repr",  # a literal in getattr
        "_write_ready",  # a const &str
        "__getattribute__",  # a const [&str; N]
        "name",  # PyString::intern
    ):
        assert expected in names, f"the patterns no longer find {expected!r}"


def test_every_name_rust_uses_is_declared() -> None:
    declared = declared_names()
    undeclared = {
        name: where
        for name, where in rust_names().items()
        if name not in declared and name not in INTERFACE_NAMES and name not in OWN_NATIVE_METHODS
    }
    assert not undeclared, (
        "names the Rust code looks up on Python objects, declared neither in a Protocol of "
        f"{STUB.relative_to(ROOT)} nor in INTERFACE_NAMES of {Path(__file__).name}: "
        + ", ".join(f"{n} ({', '.join(w)})" for n, w in sorted(undeclared.items()))
    )


def test_declarations_are_used() -> None:
    # The Protocols and the list say what Rust uses: an entry nothing uses is stale.
    used = rust_names()
    stale = sorted(
        f"{name} ({where})"
        for name, where in [
            *((n, f"Protocol {p}") for n, p in declared_names().items()),
            *((n, "INTERFACE_NAMES") for n in INTERFACE_NAMES),
            *((n, "OWN_NATIVE_METHODS") for n in OWN_NATIVE_METHODS),
        ]
        if name not in used
    )
    assert not stale, f"declared but not used by the Rust code: {', '.join(stale)}"


def test_each_name_is_declared_once() -> None:
    protocols = set(declared_names())
    twice = (protocols & INTERFACE_NAMES) | (protocols & OWN_NATIVE_METHODS)
    twice |= INTERFACE_NAMES & OWN_NATIVE_METHODS
    assert not twice, f"declared in more than one place: {sorted(twice)}"


def test_indirect_lookups_are_known() -> None:
    found = indirect_lookups()
    unknown = {arg: where for arg, where in found.items() if arg not in INDIRECT_LOOKUPS}
    assert not unknown, (
        "lookups by a name that is not a literal at the call site; add each to "
        "INDIRECT_LOOKUPS with where its names are written (as a literal the patterns "
        "extract): " + ", ".join(f"{a!r} ({', '.join(w)})" for a, w in sorted(unknown.items()))
    )
    stale = sorted(set(INDIRECT_LOOKUPS) - set(found))
    assert not stale, f"INDIRECT_LOOKUPS entries no longer in src/: {stale}"


def test_forwarded_methods_are_core_methods() -> None:
    # The transports' C method descriptors call `self._core.<name>`: each name of the
    # `forwarders!` list must be a method of a native core.
    source = (SRC / "transports" / "owner_methods.rs").read_text()
    body = source[source.index("forwarders! {") :]
    forwarded = set(re.findall(r"^\s*(\w+) => c\"", body, re.M))
    members = stub_class_members()
    cores = members["StreamTransport"] | members["DatagramTransport"]
    assert len(forwarded) >= 14
    assert forwarded <= cores, sorted(forwarded - cores)


def test_own_methods_are_in_the_stub() -> None:
    members = stub_class_members()
    cores = members["StreamTransport"] | members["DatagramTransport"]
    assert OWN_NATIVE_METHODS <= cores, sorted(OWN_NATIVE_METHODS - cores)


# ------------------------------------------------- (b) the Python side implements the Protocols


def _owner_classes() -> list[type]:
    import ferroloop._datagram
    import ferroloop._transports

    classes = [
        obj
        for module in (ferroloop._transports, ferroloop._datagram)
        for obj in vars(module).values()
        if isinstance(obj, type)
        and obj.__module__ == module.__name__
        and issubclass(obj, asyncio.BaseTransport)
    ]
    assert classes, "no transport classes found in ferroloop._transports / _datagram"
    return classes


def _new_loop() -> Any:
    import ferroloop

    return ferroloop.new_event_loop()


def _implementers() -> dict[str, list[tuple[Any, Callable[[], Any] | None]]]:
    """Protocol -> (class or module, a factory for an instance whose attributes to check)."""
    import ferroloop
    import ferroloop._helpers

    return {
        "_TransportOwner": [(cls, None) for cls in _owner_classes()],
        "_LoopHooks": [(ferroloop.Loop, _new_loop)],
        "_Helpers": [(ferroloop._helpers, None)],
    }


def test_every_protocol_has_implementers() -> None:
    assert set(stub_protocols()) == set(_implementers())


def _params(fn: ast.FunctionDef) -> tuple[list[tuple[str, bool]], bool, list[tuple[str, bool]]]:
    """(positional (name, has default) after self, has *args, keyword-only (name, has default))."""
    args = fn.args
    positional = [*args.posonlyargs, *args.args][1:]
    n_defaults = len(args.defaults)
    first_default = len(positional) - n_defaults
    pos = [(a.arg, i >= first_default) for i, a in enumerate(positional)]
    kwonly = [
        (a.arg, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    return pos, args.vararg is not None, kwonly


def incompatibilities(fn: ast.FunctionDef, impl: Callable[..., Any], bound: bool) -> list[str]:
    """How `impl` cannot be called as the Protocol method `fn` is (Rust passes the
    positional parameters positionally, the keyword-only ones by name)."""
    P = inspect.Parameter
    params = list(inspect.signature(impl).parameters.values())
    if not bound:
        params = params[1:]  # self
    pos, var, kwonly = _params(fn)
    problems = []
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    has_var = any(p.kind is P.VAR_POSITIONAL for p in params)
    has_varkw = any(p.kind is P.VAR_KEYWORD for p in params)
    for i, (name, default) in enumerate(pos):
        if i >= len(positional):
            if not has_var:
                problems.append(f"no positional parameter {name!r}")
            continue
        if positional[i].name != name:
            problems.append(f"positional parameter {i + 1} is {positional[i].name!r}, not {name!r}")
        if default and positional[i].default is P.empty:
            problems.append(f"{name!r} has no default")
    for p in positional[len(pos) :]:
        if p.default is P.empty:
            problems.append(f"extra parameter {p.name!r} has no default")
    if var and not has_var:
        problems.append("no *args")
    by_name = {p.name: p for p in params[len(pos) :]}
    for name, default in kwonly:
        p = by_name.get(name)
        if p is None or p.kind not in (P.KEYWORD_ONLY, P.POSITIONAL_OR_KEYWORD):
            if not has_varkw:
                problems.append(f"no keyword parameter {name!r}")
        elif default and p.default is P.empty:
            problems.append(f"{name!r} has no default")
    wanted = {name for name, _ in kwonly}
    for p in params:
        if p.kind is P.KEYWORD_ONLY and p.name not in wanted and p.default is P.empty:
            problems.append(f"extra keyword-only parameter {p.name!r} has no default")
    return problems


def _has_attribute(obj: Any, name: str, factory: Callable[[], Any] | None) -> bool:
    if hasattr(obj, name):
        return True
    if isinstance(obj, type) and any(
        name in vars(k).get("__annotations__", {}) for k in obj.__mro__
    ):
        return True
    if factory is not None:
        instance = factory()
        try:
            return hasattr(instance, name)
        finally:
            close = getattr(instance, "close", None)
            if close is not None:
                close()
    return False


@pytest.mark.parametrize("protocol", sorted(stub_protocols()))
def test_implementers_match_the_protocol(protocol: str) -> None:
    members = protocol_members(stub_protocols()[protocol])
    problems = []
    for obj, factory in _implementers()[protocol]:
        label = obj.__name__
        bound = isinstance(obj, ModuleType)  # a module's functions have no self
        for name, node in members.items():
            if isinstance(node, ast.AnnAssign):
                if not _has_attribute(obj, name, factory):
                    problems.append(f"{label}.{name}: missing")
                continue
            impl = getattr(obj, name, None)
            if impl is None:
                problems.append(f"{label}.{name}: missing")
                continue
            problems += [f"{label}.{name}: {p}" for p in incompatibilities(node, impl, bound)]
    assert not problems, f"{protocol} of {STUB.name}: " + "; ".join(problems)


def test_the_signature_check_catches_a_mismatch() -> None:
    # The check above is only as good as `incompatibilities`: a renamed or missing
    # parameter must be reported.
    fn = stub_protocols()["_TransportOwner"]
    proto = protocol_members(fn)["_debug_log"]
    assert isinstance(proto, ast.FunctionDef)

    class Renamed:
        def _debug_log(self, text: str) -> None: ...

    class Short:
        def _debug_log(self) -> None: ...

    class Good:
        def _debug_log(self, message: str, extra: int = 0) -> None: ...

    assert incompatibilities(proto, Renamed._debug_log, bound=False)
    assert incompatibilities(proto, Short._debug_log, bound=False)
    assert not incompatibilities(proto, Good._debug_log, bound=False)
