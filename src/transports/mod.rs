//! Native transports. `stream`: TCP and Unix sockets and pipes; `datagram`: UDP and Unix
//! datagram sockets.
pub(crate) mod common;
pub mod datagram;
pub mod stream;
