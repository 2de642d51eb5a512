//! Native waiting half of `loop.sock_recv` for plain sockets.
//!
//! `sock_recv` tries the socket at once (Python, `_sock.py`); when it would block, the wait
//! is one `SockRecv`: its watcher handle calls it when the fd is readable, it receives into
//! the loop's reused buffer, removes the watcher and completes the future; a done callback
//! removes the watcher if the future was cancelled first. The Python version of the same
//! wait took six Python frames and a `functools.partial` per call (asyncio's
//! `_sock_recv`/`_sock_read_done` shape), a third of the `sock_*` echo server's CPU per
//! request at 1 KiB.

use std::os::fd::RawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::fds::Direction;
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::{new_tracked, Handle};
use crate::transports::common::would_block;

/// Largest single read, as `LoopCore::_sock_recv_bytes`.
const MAX_READ: usize = 256 * 1024;

struct Wait {
    event_loop: Option<Py<LoopCore>>,
    future: Option<Py<PyAny>>,
    /// Our watcher handle while registered.
    handle: Option<Py<Handle>>,
}

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SockRecv {
    fd: RawFd,
    size: usize,
    wait: GilCell<Wait>,
}

impl SockRecv {
    /// Removes our watcher if it is still the fd's reader, and forgets the loop and future.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let (lp, handle, future) = {
            let mut w = self.wait.borrow_mut(py)?;
            (w.event_loop.take(), w.handle.take(), w.future.take())
        };
        if let (Some(lp), Some(handle)) = (lp, handle) {
            // A cancelled handle was replaced by a later operation's watcher: leave that one.
            if !handle.get().is_cancelled() {
                let removed = lp.get().set_watcher(py, self.fd, Direction::Read, None)?;
                if let Some(old) = removed {
                    old.bind(py).call_method0(intern!(py, "cancel"))?;
                }
            }
        }
        drop(future);
        Ok(())
    }
}

#[pymethods]
impl SockRecv {
    /// Starts waiting: registers the watcher on `fd` (replacing any reader, as `add_reader`
    /// does) and the done callback on `future`.
    #[staticmethod]
    fn start(
        py: Python<'_>,
        event_loop: Bound<'_, LoopCore>,
        future: Bound<'_, PyAny>,
        fd: RawFd,
        size: isize,
    ) -> PyResult<()> {
        if size < 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "negative buffersize in recv",
            ));
        }
        let op = Bound::new(
            py,
            SockRecv {
                fd,
                size: (size as usize).min(MAX_READ),
                wait: GilCell::new(Wait {
                    event_loop: Some(event_loop.clone().unbind()),
                    future: Some(future.clone().unbind()),
                    handle: None,
                }),
            },
        )?;
        let lp = event_loop.get();
        let handle = new_tracked(
            py,
            lp.new_handle(py, op.clone().into_any(), crate::handles::Args::Empty, None)?,
        )?;
        op.get().wait.borrow_mut(py)?.handle = Some(handle.clone_ref(py));
        if let Some(old) = lp.set_watcher(py, fd, Direction::Read, Some(handle))? {
            old.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        future.call_method1(
            intern!(py, "add_done_callback"),
            (op.getattr(intern!(py, "_done"))?,),
        )?;
        Ok(())
    }

    /// The watcher callback: receive, then complete the future.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let (lp, future) = {
            let w = self.wait.borrow(py)?;
            match (w.event_loop.as_ref(), w.future.as_ref()) {
                (Some(lp), Some(f)) => (lp.clone_ref(py), f.clone_ref(py)),
                _ => return Ok(()),
            }
        };
        let future = future.bind(py);
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let outcome = match lp.get().read_to_bytes(py, self.fd, true, self.size)? {
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => Err(os_error(e)),
            Ok(data) => Ok(data),
        };
        self.finish(py)?;
        match outcome {
            Ok(data) => future.call_method1(intern!(py, "set_result"), (data,))?,
            Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?,
        };
        Ok(())
    }

    /// Done callback of the future: stop watching (the future was cancelled, or completed).
    fn _done(&self, py: Python<'_>, _future: Bound<'_, PyAny>) -> PyResult<()> {
        self.finish(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(w) = self.wait.borrow_for_traverse() else {
            return Ok(());
        };
        visit.call(&w.event_loop)?;
        visit.call(&w.future)?;
        visit.call(&w.handle)?;
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let dropped = match self.wait.borrow_mut(py) {
                Ok(mut w) => (w.event_loop.take(), w.future.take(), w.handle.take()),
                Err(_) => return,
            };
            drop(dropped);
        });
    }
}
