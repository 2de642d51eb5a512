//! Native `loop.sock_*` operations on plain sockets: `sock_recv`, `sock_recv_into`,
//! `sock_recvfrom`, `sock_recvfrom_into`, `sock_sendall`, `sock_sendto`, `sock_accept` and
//! the connect half of `sock_connect`.
//!
//! Semantics are `selector_events.py`'s (identical in CPython 3.11, 3.12 and 3.13): when the
//! coroutine first runs it tries the operation at once; if the socket would block
//! (EAGAIN/EWOULDBLOCK/EINTR) it watches the fd with the loop's native watchers (replacing
//! any watcher of that direction, as `_add_reader`/`_add_writer` do) and finishes the
//! operation from the watcher, completing an `asyncio.Future` the task waits on. Nothing is
//! read before the coroutine runs, and a watcher never reads once the future is done, so a
//! cancelled call consumes no data.
//!
//! Each call is one `SockOp`, which is at once:
//! - the coroutine `loop.sock_recv(...)` returns: `__await__`, `send`, `throw`, `close` (so
//!   `asyncio.iscoroutine` accepts it and `create_task`, `wait_for`, `gather` take it),
//!   driven through `tp_iternext` by the awaiting coroutine's `await` or by a task. An
//!   operation that completes at once returns without a future or a watcher; one that waits
//!   yields the future, as `await fut` does;
//! - the watcher's callback (`__call__`): retry the syscall, then stop watching and complete
//!   the future.
//!
//! No Python frame runs per operation: asyncio's shape (an `async def`, an `_add_reader`, a
//! `functools.partial` done callback, a Python callback per readiness event) cost six frames
//! per wait. Cancellation goes through the task: it cancels the future, then throws
//! `CancelledError` into the coroutine, and `throw` removes the watcher then (asyncio removes
//! it from a done callback, one iteration later; a watcher that fires in between sees the
//! future done and does nothing). There is no done callback per wait.
//!
//! What is not a plain socket (a subclass that overrides socket methods, an `SSLSocket`, a
//! mock) takes asyncio's own Python path (`_sock.py`), decided once per type.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::is_exit_exception;
use crate::errors::os_error;
use crate::event_loop::fds::Direction;
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::{new_tracked, Handle};
use crate::sockaddr::{address_to_py, parse_inet, SockAddr};
use crate::sys::{self, would_block, would_block_err};

/// Largest read into the loop's reused buffer (as the transports). A stream read may return
/// less than asked; a larger read on another kind of socket goes through `sock.recv`, which
/// must not truncate a message.
const MAX_READ: usize = 256 * 1024;

/// Socket methods the native path replaces. A subclass of `socket.socket` overriding any of
/// them (or an instance whose `__dict__` does) takes the Python path.
const SOCKET_METHODS: [&str; 16] = [
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
    "accept",
    "_accept",
    "connect",
    "close",
    "__getattribute__",
];

/// The Python objects the native path needs, looked up once per loop.
pub(crate) struct SockRefs {
    /// `socket.socket`.
    socket_type: Py<PyType>,
    /// `_socket.socket`'s `family`, `type` and `proto` member descriptors (`socket.socket`
    /// shadows them with Python properties that build enums).
    family: Py<PyAny>,
    kind: Py<PyAny>,
    proto: Py<PyAny>,
    /// Subclasses of `socket.socket` seen, and whether they override nothing we replace.
    types: GilCell<Vec<(Py<PyType>, bool)>>,
}

impl SockRefs {
    pub(crate) fn new(py: Python<'_>) -> PyResult<Self> {
        let socket_type = py
            .import("socket")?
            .getattr("socket")?
            .cast_into::<PyType>()?
            .unbind();
        let base = py.import("_socket")?.getattr("socket")?;
        let member = |name: &str| -> PyResult<Py<PyAny>> {
            Ok(base.getattr("__dict__")?.get_item(name)?.unbind())
        };
        Ok(SockRefs {
            socket_type,
            family: member("family")?,
            kind: member("type")?,
            proto: member("proto")?,
            types: GilCell::new(Vec::new()),
        })
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(types) = self.types.borrow_for_traverse() {
            for (t, _) in types.iter() {
                visit.call(t)?;
            }
        }
        Ok(())
    }

    pub(crate) fn clear(&self, py: Python<'_>) {
        let dropped = match self.types.borrow_mut(py) {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        drop(dropped);
    }

    /// True if `sock` is a `socket.socket` whose methods are the socket module's own, so
    /// the native path does exactly what calling them would.
    fn is_plain(&self, sock: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = sock.py();
        let ty = sock.get_type();
        let base = self.socket_type.bind(py);
        if ty.is(base) {
            return Ok(true);
        }
        // Not a socket.socket at all (a mock, a wrapper): never cached (a Mock is a type of
        // its own per instance).
        if !ty.is_subclass(base)? {
            return Ok(false);
        }
        let cached = self
            .types
            .borrow(py)?
            .iter()
            .find(|(t, _)| t.bind(py).is(&ty))
            .map(|(_, plain)| *plain);
        let plain = match cached {
            Some(plain) => plain,
            None => {
                let plain = self.type_is_plain(&ty)?;
                let mut types = self.types.borrow_mut(py)?;
                if types.len() < 32 {
                    types.push((ty.clone().unbind(), plain));
                }
                plain
            }
        };
        if !plain {
            return Ok(false);
        }
        // A subclass without __slots__ has an instance dict, where a method can be replaced.
        // SAFETY: reading a field of a live type object.
        let has_dict = unsafe { (*ty.as_type_ptr()).tp_dictoffset } != 0;
        if has_dict {
            if let Ok(d) = sock.getattr(intern!(py, "__dict__")) {
                if let Ok(d) = d.cast::<PyDict>() {
                    if !d.is_empty() {
                        for name in SOCKET_METHODS {
                            if d.contains(name)? {
                                return Ok(false);
                            }
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    /// Whether a subclass of `socket.socket` overrides none of the methods we replace.
    fn type_is_plain(&self, ty: &Bound<'_, PyType>) -> PyResult<bool> {
        let base = self.socket_type.bind(ty.py());
        for name in SOCKET_METHODS {
            if !ty.getattr(name)?.is(&base.getattr(name)?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One of the `_socket.socket` int members of `sock`.
    fn member(&self, descr: &Py<PyAny>, sock: &Bound<'_, PyAny>) -> PyResult<libc::c_int> {
        descr
            .bind(sock.py())
            .call_method1(intern!(sock.py(), "__get__"), (sock,))?
            .extract()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Made, not yet run: nothing was tried.
    Created,
    /// Waiting on `future`, watching the fd.
    Waiting,
    /// Returned, raised or closed.
    Done,
}

/// A buffer exported by a bytes-like object other than `bytes`, held while a `sock_sendall`
/// waits (asyncio holds a `memoryview` of the data the same way).
struct HeldBuffer(ffi::Py_buffer);

// SAFETY: the buffer is only read, and released, with the GIL held (it lives in a GilCell,
// and Drop attaches to the interpreter); the exporter it points to is a Python object.
unsafe impl Send for HeldBuffer {}

impl HeldBuffer {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: on success PyObject_GetBuffer fills `view`, which we own until released.
        unsafe {
            if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            Ok(HeldBuffer(view.assume_init()))
        }
    }

    fn bytes(&self) -> &[u8] {
        if self.0.len <= 0 || self.0.buf.is_null() {
            return &[];
        }
        // SAFETY: a simple buffer is `len` contiguous readable bytes at `buf`, valid until
        // released (in Drop).
        unsafe { std::slice::from_raw_parts(self.0.buf.cast::<u8>(), self.0.len as usize) }
    }
}

impl Drop for HeldBuffer {
    fn drop(&mut self) {
        Python::attach(|_| {
            // SAFETY: the buffer was filled by PyObject_GetBuffer and is released once.
            unsafe { ffi::PyBuffer_Release(&mut self.0) }
        });
    }
}

/// The data of a `sock_sendall`.
enum SendData {
    Bytes(Py<PyBytes>),
    Buffer(HeldBuffer),
}

impl SendData {
    fn bytes<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        match self {
            SendData::Bytes(b) => b.as_bytes(py),
            SendData::Buffer(b) => b.bytes(),
        }
    }
}

/// The operation and its arguments, as the caller passed them.
enum Op {
    Recv {
        nbytes: Py<PyAny>,
    },
    RecvInto {
        buf: Py<PyAny>,
    },
    RecvFrom {
        bufsize: Py<PyAny>,
    },
    RecvFromInto {
        buf: Py<PyAny>,
        nbytes: Py<PyAny>,
    },
    SendAll {
        data: Py<PyAny>,
        /// The data's bytes, from the first attempt on.
        held: Option<SendData>,
        /// Bytes sent so far.
        pos: usize,
    },
    SendTo {
        data: Py<PyAny>,
        address: Py<PyAny>,
    },
    Accept,
    Connect {
        address: Py<PyAny>,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Recv { .. } => "sock_recv",
            Op::RecvInto { .. } => "sock_recv_into",
            Op::RecvFrom { .. } => "sock_recvfrom",
            Op::RecvFromInto { .. } => "sock_recvfrom_into",
            Op::SendAll { .. } => "sock_sendall",
            Op::SendTo { .. } => "sock_sendto",
            Op::Accept => "sock_accept",
            Op::Connect { .. } => "sock_connect",
        }
    }

    fn direction(&self) -> Direction {
        match self {
            Op::SendAll { .. } | Op::SendTo { .. } | Op::Connect { .. } => Direction::Write,
            _ => Direction::Read,
        }
    }

    fn args(&self, py: Python<'_>) -> Args {
        match self {
            Op::Recv { nbytes } => Args::Recv(nbytes.clone_ref(py)),
            Op::RecvInto { buf } => Args::RecvInto(buf.clone_ref(py)),
            Op::RecvFrom { bufsize } => Args::RecvFrom(bufsize.clone_ref(py)),
            Op::RecvFromInto { buf, nbytes } => {
                Args::RecvFromInto(buf.clone_ref(py), nbytes.clone_ref(py))
            }
            Op::SendAll { .. } => Args::SendAll,
            Op::SendTo { data, address } => Args::SendTo(data.clone_ref(py), address.clone_ref(py)),
            Op::Accept => Args::Accept,
            Op::Connect { address } => Args::Connect(address.clone_ref(py)),
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Op::Recv { nbytes: a }
            | Op::RecvInto { buf: a }
            | Op::RecvFrom { bufsize: a }
            | Op::Connect { address: a } => visit.call(a),
            Op::RecvFromInto { buf: a, nbytes: b }
            | Op::SendTo {
                data: a,
                address: b,
            } => {
                visit.call(a)?;
                visit.call(b)
            }
            Op::SendAll { data, .. } => visit.call(data),
            Op::Accept => Ok(()),
        }
    }
}

struct State {
    phase: Phase,
    event_loop: Option<Py<LoopCore>>,
    sock: Option<Py<PyAny>>,
    /// The future the task waits on, while waiting and until the result is taken.
    future: Option<Py<PyAny>>,
    /// The result the watcher set on the future (None: none, or `None`), returned when the
    /// task resumes without asking the future again.
    result: Option<Py<PyAny>>,
    /// The watcher completed the future (with a result, not an exception).
    completed: bool,
    /// Our watcher, while registered.
    handle: Option<Py<Handle>>,
    /// The fd our watcher watches (set when it is registered).
    fd: RawFd,
    /// The fd of the last attempt (what a wait then watches).
    attempt_fd: RawFd,
    /// None once finished (the arguments are dropped).
    op: Option<Op>,
}

/// The result of one attempt at the operation.
enum Outcome {
    /// Done; the value to return (None for `sock_sendall` and `sock_connect`).
    Done(Option<Py<PyAny>>),
    /// EAGAIN/EWOULDBLOCK/EINTR (or only part of the data sent): wait for the fd.
    WouldBlock,
    Failed(PyErr),
}

impl Outcome {
    /// The outcome of calling a socket method, as asyncio's `except (BlockingIOError,
    /// InterruptedError)` sees it.
    fn of_call(py: Python<'_>, result: PyResult<Bound<'_, PyAny>>) -> Outcome {
        match result {
            Ok(v) => Outcome::Done(Some(v.unbind())),
            Err(e) if would_block_err(py, &e) => Outcome::WouldBlock,
            Err(e) => Outcome::Failed(e),
        }
    }

    fn of_io(result: io::Result<Option<Py<PyAny>>>) -> Outcome {
        match result {
            Ok(v) => Outcome::Done(v),
            Err(e) if would_block(&e) => Outcome::WouldBlock,
            Err(e) => Outcome::Failed(os_error(e)),
        }
    }
}

/// A writable buffer of `obj`, as the socket module's `w*` arguments take it; None if `obj`
/// has none (the caller then lets the socket method raise its own TypeError).
fn writable_buffer(obj: &Bound<'_, PyAny>) -> Option<ffi::Py_buffer> {
    let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: on success PyObject_GetBuffer fills `view`; the caller releases it.
    unsafe {
        if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) != 0 {
            ffi::PyErr_Clear();
            return None;
        }
        Some(view.assume_init())
    }
}

/// An exact `int` argument that fits an `isize`, else None.
fn exact_int(obj: &Bound<'_, PyAny>) -> Option<isize> {
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<isize>().ok()
}

/// `StopIteration(value)`: the error that returns `value` from `__next__`. Raised as
/// `PyErr_SetObject(StopIteration, value)`, which on 3.11 is never normalised into an
/// exception object (the interpreter takes the value as it is); a tuple (or an exception)
/// would be taken as the exception's arguments there, so those get an instance.
fn stop_iteration(value: Bound<'_, PyAny>) -> PyErr {
    let py = value.py();
    if value.is_instance_of::<PyTuple>()
        || value.is_instance_of::<pyo3::exceptions::PyBaseException>()
    {
        return match py.get_type::<PyStopIteration>().call1((value,)) {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        };
    }
    PyStopIteration::new_err(value.unbind())
}

/// asyncio's `_ensure_fd_no_transport`: an fd owned by a live transport may not be watched.
/// The common case (no transport has the fd) is one dict lookup; otherwise the loop's own
/// method decides and raises.
fn ensure_fd_no_transport(lp: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    let py = lp.py();
    let Ok(transports) = lp.getattr(intern!(py, "_transports")) else {
        return Ok(());
    };
    let map = match transports.cast::<PyDict>() {
        Ok(d) => d.clone(),
        Err(_) => match transports
            .getattr(intern!(py, "data"))
            .ok()
            .and_then(|d| d.cast_into::<PyDict>().ok())
        {
            Some(d) => d,
            None => {
                lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
                return Ok(());
            }
        },
    };
    if map.contains(fd)? {
        lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    }
    Ok(())
}

#[pyclass(frozen, freelist = 256, module = "ferroloop._ferroloop")]
pub struct SockOp {
    /// asyncio's method name (`sock_recv`...), for reprs.
    name: &'static str,
    /// Which watcher the operation uses.
    dir: Direction,
    state: GilCell<State>,
}

impl SockOp {
    fn new(lp: &Bound<'_, LoopCore>, sock: Bound<'_, PyAny>, op: Op) -> PyResult<Py<SockOp>> {
        new_tracked(
            lp.py(),
            SockOp {
                name: op.name(),
                dir: op.direction(),
                state: GilCell::new(State {
                    phase: Phase::Created,
                    event_loop: Some(lp.clone().unbind()),
                    sock: Some(sock.unbind()),
                    future: None,
                    result: None,
                    completed: false,
                    handle: None,
                    fd: -1,
                    attempt_fd: -1,
                    op: Some(op),
                }),
            },
        )
    }

    /// Drops everything (the caller has unregistered the watcher, if any).
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let dropped = {
            let mut st = self.state.borrow_mut(py)?;
            st.phase = Phase::Done;
            (
                st.event_loop.take(),
                st.handle.take(),
                st.sock.take(),
                st.future.take(),
                st.op.take(),
                st.result.take(),
            )
        };
        drop(dropped);
        Ok(())
    }

    /// Unregisters our watcher, unless another operation's watcher replaced it meanwhile
    /// (its handle is then cancelled), as asyncio's `_sock_read_done`/`_sock_write_done`.
    fn unwatch(&self, py: Python<'_>, lp: &LoopCore, handle: Option<Py<Handle>>) -> PyResult<()> {
        let Some(handle) = handle else {
            return Ok(());
        };
        if handle.get().is_cancelled() || lp.is_closed_flag() {
            return Ok(());
        }
        let fd = self.state.borrow(py)?.fd;
        if let Some(old) = lp.clear_sock_watcher(py, fd, self.dir)? {
            old.cancel(py, self.dir)?;
        }
        Ok(())
    }

    /// Stops watching and drops everything.
    fn finish_and_unwatch(&self, py: Python<'_>) -> PyResult<()> {
        let (lp, handle) = {
            let mut st = self.state.borrow_mut(py)?;
            (
                st.event_loop.as_ref().map(|l| l.clone_ref(py)),
                st.handle.take(),
            )
        };
        let result = match lp {
            Some(lp) => self.unwatch(py, lp.get(), handle),
            None => Ok(()),
        };
        self.finish(py)?;
        result
    }

    /// The coroutine's first step: check the socket, try the operation, else wait.
    fn start<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        let (lp, sock) = {
            let st = this.state.borrow(py)?;
            match (st.event_loop.as_ref(), st.sock.as_ref()) {
                (Some(lp), Some(sock)) => (lp.clone_ref(py), sock.clone_ref(py)),
                _ => {
                    return Err(PyRuntimeError::new_err(
                        "cannot reuse already awaited coroutine",
                    ))
                }
            }
        };
        let (lp, sock) = (lp.into_bound(py), sock.into_bound(py));
        // Failing anywhere below finishes the operation.
        this.state.borrow_mut(py)?.phase = Phase::Done;
        let outcome = match Self::check_socket(&sock).and_then(|()| this.prepare(py)) {
            Ok(()) => this.attempt(py, &lp, &sock, true),
            Err(e) => Outcome::Failed(e),
        };
        match outcome {
            Outcome::Done(value) => {
                this.finish(py)?;
                match value {
                    None => Ok(None),
                    Some(v) => Err(stop_iteration(v.into_bound(py))),
                }
            }
            Outcome::Failed(e) => {
                this.finish(py)?;
                Err(e)
            }
            Outcome::WouldBlock => match Self::wait(slf, &lp) {
                Ok(fut) => Ok(Some(fut)),
                Err(e) => {
                    this.finish_and_unwatch(py)?;
                    Err(e)
                }
            },
        }
    }

    /// What asyncio computes once before the first attempt: `sock_recvfrom_into`'s
    /// `nbytes or len(buf)`.
    fn prepare(&self, py: Python<'_>) -> PyResult<()> {
        let pending = match self.state.borrow(py)?.op.as_ref() {
            Some(Op::RecvFromInto { buf, nbytes }) => {
                Some((buf.clone_ref(py), nbytes.clone_ref(py)))
            }
            _ => None,
        };
        let Some((buf, nbytes)) = pending else {
            return Ok(());
        };
        if nbytes.bind(py).is_truthy()? {
            return Ok(());
        }
        let len = buf.bind(py).len()?.into_pyobject(py)?.into_any().unbind();
        if let Some(Op::RecvFromInto { nbytes, .. }) = self.state.borrow_mut(py)?.op.as_mut() {
            *nbytes = len;
        }
        Ok(())
    }

    /// asyncio checks these when the coroutine starts: no SSLSocket (a plain socket is not
    /// one), and (ferroloop: always, asyncio: in debug mode) non-blocking.
    fn check_socket(sock: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = sock.py();
        // `getblocking()` is `gettimeout() != 0` (asyncio's test) without a float.
        if sock.call_method0(intern!(py, "getblocking"))?.is_truthy()? {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        Ok(())
    }

    /// Registers our watcher and returns the future to yield.
    fn wait<'py>(slf: &Bound<'py, Self>, lp: &Bound<'py, LoopCore>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let fd = {
            let mut st = this.state.borrow_mut(py)?;
            st.fd = st.attempt_fd;
            st.fd
        };
        let dir = this.dir;
        lp.get().check_open()?;
        ensure_fd_no_transport(lp, fd)?;
        let future = LoopCore::create_future(lp)?;
        let core = lp.get();
        let handle = new_tracked(
            py,
            core.new_handle(
                py,
                slf.clone().into_any(),
                crate::handles::Args::Empty,
                None,
            )?,
        )?;
        {
            let mut st = this.state.borrow_mut(py)?;
            st.future = Some(future.clone().unbind());
            st.phase = Phase::Waiting;
        }
        let sock = this
            .state
            .borrow(py)?
            .sock
            .as_ref()
            .map(|s| s.clone_ref(py));
        let Some(sock) = sock else {
            return Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            ));
        };
        if let Some(old) =
            core.set_sock_watcher(py, fd, dir, handle.clone_ref(py), sock.bind(py))?
        {
            old.cancel(py, dir)?;
        }
        this.state.borrow_mut(py)?.handle = Some(handle);
        future.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(future)
    }

    /// The coroutine resumed by its task: return the future's result (or raise).
    fn resume<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        let (future, completed) = {
            let mut st = this.state.borrow_mut(py)?;
            let completed = st.completed.then(|| st.result.take());
            (
                st.future.as_ref().map(|f| f.clone_ref(py).into_bound(py)),
                completed,
            )
        };
        let Some(future) = future else {
            this.finish(py)?;
            return Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            ));
        };
        if let Some(result) = completed {
            // The watcher set this result: the future holds it (a done future never
            // changes), no need to ask.
            this.finish_and_unwatch(py)?;
            drop(future);
            return match result {
                None => Ok(None),
                Some(v) => Err(stop_iteration(v.into_bound(py))),
            };
        }
        if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Resumed early (not by a task): wait again, as `await future` would.
            future.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
            return Ok(Some(future));
        }
        this.finish_and_unwatch(py)?;
        let result = future.call_method0(intern!(py, "result"));
        drop(future);
        match result {
            Ok(v) if v.is_none() => Ok(None),
            Ok(v) => Err(stop_iteration(v)),
            Err(e) => Err(e),
        }
    }

    /// One attempt at the operation (`first`: the attempt when the coroutine starts).
    fn attempt(
        &self,
        py: Python<'_>,
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        first: bool,
    ) -> Outcome {
        match self.try_attempt(py, lp, sock, first) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(e),
        }
    }

    fn try_attempt(
        &self,
        py: Python<'_>,
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        first: bool,
    ) -> PyResult<Outcome> {
        // The fd is read at each attempt, as asyncio calls the socket's methods each time (a
        // closed socket's -1 then fails with EBADF, as they do); a wait watches the fd of
        // the attempt that would block.
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        self.state.borrow_mut(py)?.attempt_fd = fd;
        // Clone the arguments out: no borrow may be held while calling Python.
        let args = match self.state.borrow(py)?.op.as_ref() {
            None => return Ok(Outcome::Done(None)),
            Some(op) => op.args(py),
        };
        let refs = lp.get().sock_refs();
        Ok(match args {
            Args::Recv(n) => recv(lp, sock, fd, n.bind(py), refs),
            Args::RecvInto(buf) => recv_into(sock, fd, buf.bind(py))?,
            Args::RecvFrom(n) => recvfrom(lp, sock, fd, n.bind(py), refs)?,
            Args::RecvFromInto(buf, n) => recvfrom_into(sock, fd, buf.bind(py), n.bind(py), refs)?,
            Args::SendAll => self.sendall(py, sock, fd)?,
            Args::SendTo(data, address) => sendto(sock, fd, data.bind(py), address.bind(py), refs)?,
            Args::Accept => accept(sock, fd, refs)?,
            Args::Connect(address) if first => {
                Outcome::of_call(py, sock.call_method1(intern!(py, "connect"), (address,)))
                    .map_done_to_none()
            }
            Args::Connect(address) => connect_result(fd, address.bind(py)),
        })
    }

    /// One `send()` of what `sock_sendall` has left to send.
    fn sendall(&self, py: Python<'_>, sock: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<Outcome> {
        let data = {
            let st = self.state.borrow(py)?;
            match st.op.as_ref() {
                Some(Op::SendAll {
                    data, held: None, ..
                }) => Some(data.clone_ref(py)),
                _ => None,
            }
        };
        if let Some(data) = data {
            let data = data.into_bound(py);
            let held = match data.cast::<PyBytes>() {
                Ok(b) => SendData::Bytes(b.clone().unbind()),
                Err(_) => match HeldBuffer::get(&data) {
                    Ok(b) => SendData::Buffer(b),
                    // Not bytes-like: the socket raises its own TypeError.
                    Err(e) => {
                        return Ok(match sock.call_method1(intern!(py, "send"), (&data,)) {
                            Err(err) => Outcome::Failed(err),
                            Ok(_) => Outcome::Failed(e),
                        })
                    }
                },
            };
            if let Some(Op::SendAll { held: slot, .. }) = self.state.borrow_mut(py)?.op.as_mut() {
                *slot = Some(held);
            }
        }
        let mut st = self.state.borrow_mut(py)?;
        let Some(Op::SendAll {
            held: Some(held),
            pos,
            ..
        }) = st.op.as_mut()
        else {
            return Ok(Outcome::Done(None));
        };
        let bytes = held.bytes(py);
        let rest = &bytes[(*pos).min(bytes.len())..];
        let sent = sys::write(fd, rest, true);
        let total = bytes.len();
        Ok(match sent {
            Ok(n) => {
                *pos += n;
                if *pos >= total {
                    Outcome::Done(None)
                } else {
                    Outcome::WouldBlock
                }
            }
            Err(e) => Outcome::of_io(Err(e)),
        })
    }
}

impl Outcome {
    fn map_done_to_none(self) -> Outcome {
        match self {
            Outcome::Done(_) => Outcome::Done(None),
            other => other,
        }
    }
}

/// The arguments of one attempt, cloned out of the state.
enum Args {
    Recv(Py<PyAny>),
    RecvInto(Py<PyAny>),
    RecvFrom(Py<PyAny>),
    RecvFromInto(Py<PyAny>, Py<PyAny>),
    /// The data stays in the state (`SockOp::sendall`).
    SendAll,
    SendTo(Py<PyAny>, Py<PyAny>),
    Accept,
    Connect(Py<PyAny>),
}

/// `sock.recv(n)`: into the loop's reused buffer, one `bytes` of the size received.
fn recv(
    lp: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    nbytes: &Bound<'_, PyAny>,
    refs: &SockRefs,
) -> Outcome {
    let py = sock.py();
    let via_socket = || Outcome::of_call(py, sock.call_method1(intern!(py, "recv"), (nbytes,)));
    let Some(n) = exact_int(nbytes) else {
        return via_socket();
    };
    if n < 0 {
        return Outcome::Failed(PyValueError::new_err("negative buffersize in recv"));
    }
    let mut n = n as usize;
    if n > MAX_READ {
        match refs.member(&refs.kind, sock) {
            Ok(libc::SOCK_STREAM) => n = MAX_READ,
            _ => return via_socket(),
        }
    }
    match lp.get().read_to_bytes(py, fd, true, n) {
        Ok(r) => Outcome::of_io(r.map(|b| Some(b.into_any().unbind()))),
        Err(e) => Outcome::Failed(e),
    }
}

/// `sock.recv_into(buf)`.
fn recv_into(sock: &Bound<'_, PyAny>, fd: RawFd, buf: &Bound<'_, PyAny>) -> PyResult<Outcome> {
    let py = sock.py();
    let Some(mut view) = writable_buffer(buf) else {
        return Ok(Outcome::of_call(
            py,
            sock.call_method1(intern!(py, "recv_into"), (buf,)),
        ));
    };
    let len = view.len.max(0) as usize;
    // SAFETY: `view.buf` is `len` writable bytes, exported until released below.
    let data = unsafe { sys::exported_bytes(view.buf, len) };
    let got = sys::read(fd, data, true);
    // SAFETY: releasing the buffer exported above, once.
    unsafe { ffi::PyBuffer_Release(&mut view) };
    Ok(match got {
        Ok(n) => Outcome::Done(Some(n.into_pyobject(py)?.into_any().unbind())),
        Err(e) => Outcome::of_io(Err(e)),
    })
}

/// Whether the native path converts this socket's addresses (else the socket module does).
fn native_family(sock: &Bound<'_, PyAny>, refs: &SockRefs) -> PyResult<bool> {
    Ok(matches!(
        refs.member(&refs.family, sock)?,
        libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX
    ))
}

/// `sock.recvfrom(bufsize)`: `(bytes, address)`.
fn recvfrom(
    lp: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    bufsize: &Bound<'_, PyAny>,
    refs: &SockRefs,
) -> PyResult<Outcome> {
    let py = sock.py();
    let via_socket =
        || Outcome::of_call(py, sock.call_method1(intern!(py, "recvfrom"), (bufsize,)));
    let Some(n) = exact_int(bufsize) else {
        return Ok(via_socket());
    };
    if n < 0 {
        return Ok(Outcome::Failed(PyValueError::new_err(
            "negative buffersize in recvfrom",
        )));
    }
    if n as usize > MAX_READ || !native_family(sock, refs)? {
        return Ok(via_socket());
    }
    let mut addr = SockAddr::new();
    let data = lp
        .get()
        .recvfrom_to_bytes(py, fd, n as usize, &mut addr.storage, &mut addr.len)?;
    Ok(match data {
        Ok(data) => {
            let address = address_to_py(py, &addr)?;
            Outcome::Done(Some(
                PyTuple::new(py, [data.into_any(), address])?
                    .into_any()
                    .unbind(),
            ))
        }
        Err(e) => Outcome::of_io(Err(e)),
    })
}

/// `sock.recvfrom_into(buf, nbytes)`: `(nbytes, address)`.
fn recvfrom_into(
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    buf: &Bound<'_, PyAny>,
    nbytes: &Bound<'_, PyAny>,
    refs: &SockRefs,
) -> PyResult<Outcome> {
    let py = sock.py();
    let via_socket = || {
        Outcome::of_call(
            py,
            sock.call_method1(intern!(py, "recvfrom_into"), (buf, nbytes)),
        )
    };
    let Some(n) = exact_int(nbytes) else {
        return Ok(via_socket());
    };
    if n < 0 || !native_family(sock, refs)? {
        return Ok(via_socket());
    }
    let Some(mut view) = writable_buffer(buf) else {
        return Ok(via_socket());
    };
    let buflen = view.len.max(0) as usize;
    let n = n as usize;
    if n > buflen {
        // SAFETY: releasing the buffer exported above, once.
        unsafe { ffi::PyBuffer_Release(&mut view) };
        return Ok(Outcome::Failed(PyValueError::new_err(
            "nbytes is greater than the length of the buffer",
        )));
    }
    let want = if n == 0 { buflen } else { n };
    let mut addr = SockAddr::new();
    // SAFETY: `view.buf` is at least `want` writable bytes, exported until released below.
    let data = unsafe { sys::exported_bytes(view.buf, want) };
    let got = sys::recvfrom(fd, data, &mut addr.storage, &mut addr.len);
    // SAFETY: releasing the buffer exported above, once.
    unsafe { ffi::PyBuffer_Release(&mut view) };
    Ok(match got {
        Ok(got) => {
            let address = address_to_py(py, &addr)?;
            let count = got.into_pyobject(py)?.into_any();
            Outcome::Done(Some(
                PyTuple::new(py, [count, address])?.into_any().unbind(),
            ))
        }
        Err(e) => Outcome::of_io(Err(e)),
    })
}

/// `sock.sendto(data, address)`: natively for numeric IPv4/IPv6 addresses, else through the
/// socket module (which converts, or resolves, the address itself).
fn sendto(
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    data: &Bound<'_, PyAny>,
    address: &Bound<'_, PyAny>,
    refs: &SockRefs,
) -> PyResult<Outcome> {
    let py = sock.py();
    let via_socket = || {
        Outcome::of_call(
            py,
            sock.call_method1(intern!(py, "sendto"), (data, address)),
        )
    };
    let family = refs.member(&refs.family, sock)?;
    let Some(sa) = parse_inet(family, address) else {
        return Ok(via_socket());
    };
    let buffer = match data.cast::<PyBytes>() {
        Ok(b) => SendData::Bytes(b.clone().unbind()),
        Err(_) => match HeldBuffer::get(data) {
            Ok(b) => SendData::Buffer(b),
            Err(_) => return Ok(via_socket()),
        },
    };
    let bytes = buffer.bytes(py);
    let sent = sys::sendto(fd, bytes, Some((sa.as_ptr(), sa.len)));
    Ok(match sent {
        Ok(n) => Outcome::Done(Some(n.into_pyobject(py)?.into_any().unbind())),
        Err(e) => Outcome::of_io(Err(e)),
    })
}

/// `sock.accept()` then `conn.setblocking(False)`, as asyncio's `_sock_accept`: the
/// connection as a `socket.socket` of the listening socket's family, type and protocol,
/// and the peer's address.
fn accept(sock: &Bound<'_, PyAny>, fd: RawFd, refs: &SockRefs) -> PyResult<Outcome> {
    let py = sock.py();
    if !native_family(sock, refs)? {
        let accepted = sock.call_method0(intern!(py, "accept"));
        return Ok(match Outcome::of_call(py, accepted) {
            Outcome::Done(Some(pair)) => {
                let pair = pair.into_bound(py);
                match pair
                    .get_item(0)
                    .and_then(|conn| conn.call_method1(intern!(py, "setblocking"), (false,)))
                {
                    Ok(_) => Outcome::Done(Some(pair.unbind())),
                    Err(e) => Outcome::Failed(e),
                }
            }
            other => other,
        });
    }
    let mut addr = SockAddr::new();
    let accepted = sys::accept(fd, &mut addr.storage, &mut addr.len, 0);
    let conn_fd = match accepted {
        Ok(fd) => fd,
        Err(e) => return Ok(Outcome::of_io(Err(e))),
    };
    let close_fd = |e: PyErr| {
        // SAFETY: the fd accept4 returned, owned by no socket object yet.
        unsafe { libc::close(conn_fd) };
        Ok(Outcome::Failed(e))
    };
    let (family, kind, proto, address) = match (|| -> PyResult<_> {
        Ok((
            refs.member(&refs.family, sock)?,
            refs.member(&refs.kind, sock)?,
            refs.member(&refs.proto, sock)?,
            address_to_py(py, &addr)?,
        ))
    })() {
        Ok(v) => v,
        Err(e) => return close_fd(e),
    };
    let conn = match refs
        .socket_type
        .bind(py)
        .call1((family, kind, proto, conn_fd))
    {
        Ok(conn) => conn,
        Err(e) => return close_fd(e),
    };
    // From here the socket object owns the fd.
    if let Err(e) = conn.call_method1(intern!(py, "setblocking"), (false,)) {
        let _ = conn.call_method0(intern!(py, "close"));
        return Ok(Outcome::Failed(e));
    }
    Ok(Outcome::Done(Some(
        PyTuple::new(py, [conn, address])?.into_any().unbind(),
    )))
}

/// asyncio's `_sock_connect_cb`: the connection's outcome from SO_ERROR once the socket is
/// writable.
fn connect_result(fd: RawFd, address: &Bound<'_, PyAny>) -> Outcome {
    let err = match sys::socket_int_option(fd, libc::SO_ERROR) {
        Ok(err) => err,
        Err(e) => return Outcome::of_io(Err(e)),
    };
    match err {
        0 => Outcome::Done(None),
        // asyncio raises OSError(err, ...) and catches BlockingIOError/InterruptedError,
        // whose errnos these are: the connection is still in progress.
        libc::EAGAIN | libc::EALREADY | libc::EINPROGRESS | libc::EINTR => Outcome::WouldBlock,
        _ => {
            let text = match address.str() {
                Ok(s) => s.to_string(),
                Err(e) => return Outcome::Failed(e),
            };
            Outcome::Failed(PyOSError::new_err((
                err,
                format!("Connect call failed {text}"),
            )))
        }
    }
}

#[pymethods]
impl SockOp {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// One step of the coroutine (what `await` and a task's `send(None)` call).
    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let phase = slf.get().state.borrow(slf.py())?.phase;
        match phase {
            Phase::Created => Self::start(slf),
            Phase::Waiting => Self::resume(slf),
            Phase::Done => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
        }
    }

    fn send<'py>(slf: &Bound<'py, Self>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if !value.is_none() {
            let phase = slf.get().state.borrow(py)?.phase;
            if phase == Phase::Created {
                return Err(PyTypeError::new_err(
                    "can't send non-None value to a just-started coroutine",
                ));
            }
        }
        match Self::__next__(slf)? {
            Some(yielded) => Ok(yielded),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// Raises `typ` (an exception, or a class with an optional value) in the coroutine: it
    /// stops waiting (the watcher is removed) and the exception propagates, as it does out
    /// of `await future`.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: Bound<'_, PyAny>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        slf.get().finish_and_unwatch(py)?;
        let exc = if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            typ
        } else if let Ok(cls) = typ.cast::<PyType>() {
            if !cls.is_subclass_of::<pyo3::exceptions::PyBaseException>()? {
                return Err(PyTypeError::new_err(format!(
                    "exceptions must be classes or instances deriving from BaseException, not {}",
                    cls.name()?
                )));
            }
            match val {
                None => cls.call0()?,
                Some(v) if v.is_none() => cls.call0()?,
                Some(v) if v.is_instance(cls)? => v,
                Some(v) => match v.cast::<PyTuple>() {
                    Ok(args) => cls.call1(args)?,
                    Err(_) => cls.call1((v,))?,
                },
            }
        } else {
            return Err(PyTypeError::new_err(format!(
                "exceptions must be classes or instances deriving from BaseException, not {}",
                typ.get_type().name()?
            )));
        };
        if let Some(tb) = tb.filter(|t| !t.is_none()) {
            exc.setattr(intern!(py, "__traceback__"), tb)?;
        }
        Err(PyErr::from_value(exc))
    }

    /// Stops the operation: the watcher is removed; a read that has not happened will not.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().finish_and_unwatch(slf.py())
    }

    /// The watcher's callback: the fd is ready, try again.
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (lp, sock, future) = {
            let st = this.state.borrow(py)?;
            if st.phase != Phase::Waiting || st.handle.is_none() {
                return Ok(());
            }
            match (st.event_loop.as_ref(), st.sock.as_ref(), st.future.as_ref()) {
                (Some(lp), Some(sock), Some(fut)) => (
                    lp.clone_ref(py).into_bound(py),
                    sock.clone_ref(py).into_bound(py),
                    fut.clone_ref(py).into_bound(py),
                ),
                _ => return Ok(()),
            }
        };
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Cancelled: stop watching without touching the socket.
            let handle = this.state.borrow_mut(py)?.handle.take();
            return this.unwatch(py, lp.get(), handle);
        }
        let outcome = this.attempt(py, &lp, &sock, false);
        let result = match outcome {
            Outcome::WouldBlock => return Ok(()),
            Outcome::Failed(e) if is_exit_exception(py, &e) => return Err(e),
            Outcome::Done(v) => Ok(v),
            Outcome::Failed(e) => Err(e),
        };
        // Stop watching now (asyncio does it from a done callback, an iteration later), and
        // drop the arguments; the future stays until the task takes its result.
        let handle = this.state.borrow_mut(py)?.handle.take();
        this.unwatch(py, lp.get(), handle)?;
        let op = this.state.borrow_mut(py)?.op.take();
        drop(op);
        match result {
            Ok(v) => {
                let value = v.as_ref().map(|v| v.clone_ref(py));
                future.call_method1(intern!(py, "set_result"), (v,))?;
                let mut st = this.state.borrow_mut(py)?;
                st.result = value;
                st.completed = true;
            }
            Err(e) => {
                future.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?;
            }
        };
        Ok(())
    }

    // What asyncio's task and repr helpers read of a coroutine.

    #[getter]
    fn __name__(&self) -> &'static str {
        self.name
    }

    #[getter]
    fn __qualname__(&self) -> String {
        format!("Loop.{}", self.name)
    }

    #[getter]
    fn cr_running(&self) -> bool {
        false
    }

    #[getter]
    fn cr_frame(&self) -> Option<Py<PyAny>> {
        None
    }

    #[getter]
    fn cr_code(&self) -> Option<Py<PyAny>> {
        None
    }

    #[getter]
    fn cr_await(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self
            .state
            .borrow(py)?
            .future
            .as_ref()
            .map(|f| f.clone_ref(py)))
    }

    fn __repr__(&self) -> String {
        format!("<coroutine {}>", self.__qualname__())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(st) = self.state.borrow_for_traverse() else {
            return Ok(());
        };
        visit.call(&st.event_loop)?;
        visit.call(&st.sock)?;
        visit.call(&st.future)?;
        visit.call(&st.result)?;
        visit.call(&st.handle)?;
        if let Some(op) = st.op.as_ref() {
            op.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let _ = self.finish(py);
        });
    }
}

/// The `loop.sock_*` entry points (`LoopCore`'s methods call these): a `SockOp` for a
/// plain socket, else the coroutine of asyncio's Python path (`_sock.py`'s `_sock_*_py`).
fn sock_call<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
    python_path: &Bound<'py, PyString>,
    args: &[&Bound<'py, PyAny>],
    op: impl FnOnce() -> Op,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    if lp.get().sock_refs().is_plain(&sock)? {
        return Ok(SockOp::new(lp, sock, op())?.into_bound(py).into_any());
    }
    let mut all = vec![sock];
    all.extend(args.iter().map(|a| (*a).clone()));
    lp.call_method1(python_path, PyTuple::new(py, all)?)
}

pub(crate) fn sock_recv<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
    n: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    sock_call(lp, sock, intern!(py, "_sock_recv_py"), &[&n], || Op::Recv {
        nbytes: n.clone().unbind(),
    })
}

pub(crate) fn sock_recv_into<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
    buf: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    sock_call(lp, sock, intern!(py, "_sock_recv_into_py"), &[&buf], || {
        Op::RecvInto {
            buf: buf.clone().unbind(),
        }
    })
}

pub(crate) fn sock_recvfrom<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
    bufsize: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    sock_call(
        lp,
        sock,
        intern!(py, "_sock_recvfrom_py"),
        &[&bufsize],
        || Op::RecvFrom {
            bufsize: bufsize.clone().unbind(),
        },
    )
}

pub(crate) fn sock_recvfrom_into<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
    buf: Bound<'py, PyAny>,
    nbytes: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    sock_call(
        lp,
        sock,
        intern!(py, "_sock_recvfrom_into_py"),
        &[&buf, &nbytes],
        || Op::RecvFromInto {
            buf: buf.clone().unbind(),
            nbytes: nbytes.clone().unbind(),
        },
    )
}

pub(crate) fn sock_sendall<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
    data: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    sock_call(lp, sock, intern!(py, "_sock_sendall_py"), &[&data], || {
        Op::SendAll {
            data: data.clone().unbind(),
            held: None,
            pos: 0,
        }
    })
}

pub(crate) fn sock_sendto<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
    data: Bound<'py, PyAny>,
    address: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    sock_call(
        lp,
        sock,
        intern!(py, "_sock_sendto_py"),
        &[&data, &address],
        || Op::SendTo {
            data: data.clone().unbind(),
            address: address.clone().unbind(),
        },
    )
}

pub(crate) fn sock_accept<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    sock_call(lp, sock, intern!(py, "_sock_accept_py"), &[], || Op::Accept)
}

/// The connect half of `sock_connect`, once `_sock.py` has checked the socket and resolved
/// the address (asyncio's `_sock_connect` and `_sock_connect_cb`).
pub(crate) fn sock_connect_resolved<'py>(
    lp: &Bound<'py, LoopCore>,
    sock: Bound<'py, PyAny>,
    address: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    sock_call(
        lp,
        sock,
        intern!(py, "_sock_connect_resolved_py"),
        &[&address],
        || Op::Connect {
            address: address.clone().unbind(),
        },
    )
}
