//! The reader and writer handles watched for each file descriptor (`add_reader` and
//! friends), and conversion of Python file objects to descriptors.
//!
//! Watchers are level-triggered (asyncio's `add_reader` contract), with one exception: the
//! `sock_*` operations (`src/sock_ops.rs`) register their fd edge-triggered and leave it
//! registered when they finish ("parked"), so the next operation on the same socket object
//! waits without an `epoll_ctl`. A request/response server on `sock_recv`/`sock_sendall`
//! otherwise pays an ADD and a DEL per request (a tenth of its CPU in the echo benchmark).
//!
//! Why edge triggering is correct there: an operation only waits after its syscall failed
//! with EAGAIN (the kernel buffer was empty, or full for sends), so the next arrival (or
//! drained send buffer, completed connect) is a new edge; an event that comes while no
//! operation waits (parked) is ignored and the next operation tries the syscall first, so
//! nothing is lost. And why parking is safe: an edge-triggered registration reports each
//! wake-up once, so a parked socket that keeps receiving costs at most one spurious loop
//! wake-up per arrival, never a busy loop (a parked level-triggered registration would spin
//! while the data waits). A parked registration is reused only by an operation on the same
//! socket object (a weak reference; the socket, still open with the same fd, still has the
//! same file); anything else re-registers it (MOD, ADD if the kernel dropped a closed fd), and
//! any other watcher on the fd (`add_reader`, a transport) turns it back to level-triggered.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple, PyWeakrefMethods, PyWeakrefReference};

use pyo3::{PyTraverseError, PyVisit};

use super::poller::{Ready, EDGE, ERROR_OR_HUP, READABLE, WRITABLE};
use super::{Job, LoopCore, State};
use crate::handles::{new_tracked, Args, Handle};
use crate::transports::base::NativeTransport;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// An fd registered edge-triggered by the `sock_*` operations (`State::edge`).
pub struct EdgeReg {
    /// The epoll events registered (READABLE and/or WRITABLE, without EDGE).
    pub mask: u32,
    /// A weak reference to the socket object whose operations registered it.
    pub owner: Py<PyWeakrefReference>,
}

/// What the loop runs when an fd is ready in one direction.
pub enum Watcher {
    /// `add_reader`/`add_writer` or a `sock_*` operation: a handle for the ready queue.
    Handle(Py<Handle>),
    /// A native transport watching its own fd: the loop calls its read (or write) path
    /// directly, in the transport's context (`NativeTransport::run_ready`). No `Handle`, no
    /// bound method: an idle connection's reader costs the fd table entry alone.
    Transport(Py<NativeTransport>),
}

impl Watcher {
    /// What `remove_reader`/`remove_writer` do with the watcher they removed: a handle is
    /// cancelled (asyncio's `_remove_reader`); a transport is told it is no longer watched.
    pub fn cancel(self, py: Python<'_>, dir: Direction) -> PyResult<()> {
        match self {
            Watcher::Handle(h) => Handle::cancel_inner(h.bind(py)).map(drop),
            Watcher::Transport(t) => crate::transports::base::unwatched(t.get(), py, dir),
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Watcher::Handle(h) => visit.call(h),
            Watcher::Transport(t) => visit.call(t),
        }
    }
}

#[derive(Default)]
pub struct Watchers {
    pub reader: Option<Watcher>,
    pub writer: Option<Watcher>,
    /// The file object (not an int) last passed to `add_reader`/`add_writer` for this fd:
    /// asyncio's selector keeps it in its key, and finds the registration by it when the
    /// object can no longer give its fd (a socket closed after it was registered).
    pub fileobj: Option<Py<PyAny>>,
}

impl Watchers {
    pub fn slot(&mut self, dir: Direction) -> &mut Option<Watcher> {
        match dir {
            Direction::Read => &mut self.reader,
            Direction::Write => &mut self.writer,
        }
    }

    /// The epoll interest set these watchers need (0 when there are none).
    pub fn interest(&self) -> u32 {
        let mut mask = 0;
        if self.reader.is_some() {
            mask |= READABLE;
        }
        if self.writer.is_some() {
            mask |= WRITABLE;
        }
        mask
    }
}

/// asyncio's `selectors._fileobj_to_fd`: an int, or an object with a `fileno()` method.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        let fileno = obj
            .call_method0("fileno")
            .and_then(|n| {
                n.call_method0("__index__")
                    .or_else(|_| n.call_method0("__int__"))
            })
            .and_then(|n| n.extract::<i64>());
        match fileno {
            Ok(fd) => fd,
            Err(e)
                if e.is_instance_of::<PyAttributeError>(obj.py())
                    || e.is_instance_of::<PyTypeError>(obj.py())
                    || e.is_instance_of::<PyValueError>(obj.py()) =>
            {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    obj.repr()?
                )));
            }
            Err(e) => return Err(e),
        }
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

/// The watcher half of `LoopCore`: registering, replacing and dropping the handles watched
/// for each fd, and queueing them when epoll reports their fd ready.
impl LoopCore {
    /// Sets (or with `None` clears) the watcher of one direction of `fd`, updating epoll.
    /// Returns the watcher it replaced, for the caller to cancel and drop outside any borrow.
    pub(crate) fn set_watcher(
        &self,
        py: Python<'_>,
        fd: RawFd,
        dir: Direction,
        new: Option<Watcher>,
    ) -> PyResult<Option<Watcher>> {
        if self.crossed_fork() {
            if new.is_some() {
                self.check_not_forked()?;
            }
            // Forget the watcher without touching the parent's epoll registrations.
            let mut st = self.state.borrow_mut(py)?;
            let edge = st.edge.remove(&fd);
            let old = st.fds.get_mut(&fd).and_then(|w| w.slot(dir).take());
            if st.fds.get(&fd).is_some_and(|w| w.interest() == 0) {
                st.fds.remove(&fd);
            }
            drop(st);
            drop(edge);
            return Ok(old);
        }
        let mut st = self.state.borrow_mut(py)?;
        // Any watcher set here is level-triggered: an edge-triggered registration of the
        // sock_* operations is turned back (or removed).
        let edge = st.edge.remove(&fd);
        let known = st.fds.contains_key(&fd) || edge.is_some();
        let watchers = st.fds.entry(fd).or_default();
        let before = watchers.interest();
        let old = std::mem::replace(watchers.slot(dir), new);
        let after = watchers.interest();
        if after == 0 {
            st.fds.remove(&fd);
            if known {
                self.poller.remove(fd);
            }
        } else if after != before || !known || edge.is_some() {
            if let Err(e) = self.poller.set_interest(fd, after, known) {
                // Undo: put the old watcher back (or forget the fd) and report the OSError.
                let failed = match st.fds.get_mut(&fd) {
                    Some(w) => std::mem::replace(w.slot(dir), old),
                    None => None,
                };
                if st.fds.get(&fd).is_some_and(|w| w.interest() == 0) {
                    st.fds.remove(&fd);
                }
                if let Some(edge) = edge {
                    st.edge.insert(fd, edge);
                }
                drop(st);
                drop(failed);
                return Err(crate::errors::os_error(e));
            }
        }
        drop(st);
        drop(edge);
        Ok(old)
    }

    /// Sets the `dir` watcher of `fd` for a `sock_*` operation on `owner` (the socket
    /// object): edge-triggered, reusing the registration the last operation on `owner` left
    /// (no syscall), unless the fd has level-triggered watchers (then as `set_watcher`).
    /// Returns the watcher it replaced.
    pub(crate) fn set_sock_watcher(
        &self,
        py: Python<'_>,
        fd: RawFd,
        dir: Direction,
        handle: Py<Handle>,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Watcher>> {
        let level = {
            let st = self.state.borrow(py)?;
            st.fds.contains_key(&fd) && !st.edge.contains_key(&fd)
        };
        if level || self.crossed_fork() {
            return self.set_watcher(py, fd, dir, Some(Watcher::Handle(handle)));
        }
        let Ok(weak) = PyWeakrefReference::new(owner) else {
            return self.set_watcher(py, fd, dir, Some(Watcher::Handle(handle)));
        };
        let bit = match dir {
            Direction::Read => READABLE,
            Direction::Write => WRITABLE,
        };
        let mut st = self.state.borrow_mut(py)?;
        let others = st.fds.get(&fd).map_or(0, |w| {
            w.interest()
                & match dir {
                    Direction::Read => WRITABLE,
                    Direction::Write => READABLE,
                }
        });
        let needed = bit | others;
        let registered = st.edge.get(&fd).map(|reg| {
            let same_owner = reg.owner.bind(py).upgrade().is_some_and(|o| o.is(owner));
            (same_owner, reg.mask)
        });
        let mask = match registered {
            Some((true, mask)) if mask & needed == needed => None,
            Some((true, mask)) => Some((mask | needed, true)),
            Some((false, _)) => Some((needed, true)),
            None => Some((needed, false)),
        };
        if let Some((mask, known)) = mask {
            if let Err(e) = self.poller.set_interest(fd, mask | EDGE, known) {
                // The fd stays as it was: registered (unchanged) if it was.
                return Err(crate::errors::os_error(e));
            }
            let old = st.edge.insert(
                fd,
                EdgeReg {
                    mask,
                    owner: weak.unbind(),
                },
            );
            drop(st);
            drop(old);
            st = self.state.borrow_mut(py)?;
        }
        let old = st
            .fds
            .entry(fd)
            .or_default()
            .slot(dir)
            .replace(Watcher::Handle(handle));
        Ok(old)
    }

    /// Clears the `dir` watcher a `sock_*` operation set on `fd`. An edge-triggered
    /// registration stays (parked) for the next operation; a level-triggered one goes as
    /// with `set_watcher`. Returns the watcher it removed.
    pub(crate) fn clear_sock_watcher(
        &self,
        py: Python<'_>,
        fd: RawFd,
        dir: Direction,
    ) -> PyResult<Option<Watcher>> {
        let mut st = self.state.borrow_mut(py)?;
        if !st.edge.contains_key(&fd) || self.crossed_fork() {
            drop(st);
            return self.set_watcher(py, fd, dir, None);
        }
        let old = st.fds.get_mut(&fd).and_then(|w| w.slot(dir).take());
        if st.fds.get(&fd).is_some_and(|w| w.interest() == 0) {
            st.fds.remove(&fd);
        }
        Ok(old)
    }

    pub(super) fn add_watcher(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        dir: Direction,
        method: &str,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_callback(&callback, method, true)?;
        let fileobj = fd;
        let fd = fileobj_to_fd(fileobj)?;
        let handle = new_tracked(
            py,
            this.new_handle(py, callback, Args::from_tuple(args), None)?,
        )?;
        let old = this.set_watcher(py, fd, dir, Some(Watcher::Handle(handle.clone_ref(py))))?;
        if !fileobj.is_instance_of::<PyInt>() {
            let previous = this
                .state
                .borrow_mut(py)?
                .fds
                .get_mut(&fd)
                .and_then(|w| w.fileobj.replace(fileobj.clone().unbind()));
            drop(previous);
        }
        if let Some(old) = old {
            old.cancel(py, dir)?;
        }
        Ok(handle)
    }

    pub(super) fn remove_watcher(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        dir: Direction,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        if this.is_debug() {
            this.check_thread()?;
        }
        let fd = match fileobj_to_fd(fd) {
            Ok(fd) => fd,
            // asyncio's `_fileobj_lookup`: an object that no longer gives its fd (a closed
            // socket's fileno() is -1) is found among the registrations by identity.
            Err(e) if e.is_instance_of::<PyValueError>(py) => {
                let found = this
                    .state
                    .borrow(py)?
                    .fds
                    .iter()
                    .find(|(_, w)| w.fileobj.as_ref().is_some_and(|o| o.is(fd)))
                    .map(|(fd, _)| *fd);
                match found {
                    Some(fd) => fd,
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        match this.set_watcher(py, fd, dir, None)? {
            Some(old) => {
                old.cancel(py, dir)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `ready_at`: when the fds were found ready (for the lag histogram; 0 if not timed).
    pub(super) fn queue_io_callbacks(
        &self,
        py: Python<'_>,
        mut events: Vec<Ready>,
        ready_at: f64,
    ) -> PyResult<()> {
        let mut stale: Vec<(RawFd, Direction)> = Vec::new();
        {
            let mut st = self.state.borrow_mut(py)?;
            let State { ready, fds, .. } = &mut *st;
            for ev in events.drain(..) {
                let Some(w) = fds.get(&ev.fd) else { continue };
                for (dir, bits, slot) in [
                    (Direction::Read, READABLE, &w.reader),
                    (Direction::Write, WRITABLE, &w.writer),
                ] {
                    let Some(watcher) = slot else { continue };
                    if ev.events & (bits | ERROR_OR_HUP) == 0 {
                        continue;
                    }
                    let job = match watcher {
                        Watcher::Handle(h) if h.get().is_cancelled() => {
                            stale.push((ev.fd, dir));
                            continue;
                        }
                        Watcher::Handle(h) => Job::Handle(h.clone_ref(py)),
                        Watcher::Transport(t) if !t.get().is_watched(py, dir)? => {
                            stale.push((ev.fd, dir));
                            continue;
                        }
                        Watcher::Transport(t) => Job::Transport(t.clone_ref(py), dir),
                    };
                    ready.push_back(super::Queued { job, ready_at });
                }
            }
            st.events = events;
        }
        // A cancelled watcher is unregistered, as asyncio's _process_events does.
        for (fd, dir) in stale {
            drop(self.set_watcher(py, fd, dir, None)?);
        }
        Ok(())
    }
}
