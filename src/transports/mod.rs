//! Native transports. `stream`: TCP and Unix sockets and pipes.
pub mod stream;
