//! The reader and writer handles watched for each file descriptor (`add_reader` and
//! friends), and conversion of Python file objects to descriptors.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;

use super::poller::{READABLE, WRITABLE};
use crate::handles::Handle;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

#[derive(Default)]
pub struct Watchers {
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
}

impl Watchers {
    pub fn slot(&mut self, dir: Direction) -> &mut Option<Py<Handle>> {
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
