//! ferroloop's native module, `ferroloop._ferroloop`: registers the classes (and the
//! hand-written fast entry points of `LoopCore`) and two helper functions.

mod buffer;
mod errors;
mod event_loop;
mod freelist;
mod gil_cell;
mod handles;
mod sock_ops;
mod sockaddr;
mod sys;
mod transports;

use pyo3::prelude::*;

#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    let py = m.py();
    event_loop::fast_call::install(&py.get_type::<event_loop::LoopCore>())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    handles::install_freelists(py);
    m.add_class::<transports::base::NativeTransport>()?;
    m.add_class::<transports::stream::StreamTransport>()?;
    m.add_class::<sock_ops::SockOp>()?;
    m.add_class::<transports::datagram::DatagramTransport>()?;
    m.add_function(pyo3::wrap_pyfunction!(sys::_unlink_if_inode, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(
        transports::accept::_accept_connection,
        m
    )?)?;
    m.add_function(pyo3::wrap_pyfunction!(transports::accept::_socket_name, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(
        transports::accept::_socket_address,
        m
    )?)?;
    m.add_function(pyo3::wrap_pyfunction!(
        transports::owner_methods::_install_core_methods,
        m
    )?)?;
    #[cfg(feature = "fault-injection")]
    {
        m.add_function(pyo3::wrap_pyfunction!(sys::fault::_inject_faults, m)?)?;
        m.add_function(pyo3::wrap_pyfunction!(sys::fault::_clear_faults, m)?)?;
    }
    Ok(())
}
