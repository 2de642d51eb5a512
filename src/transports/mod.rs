//! Native transports. `base`: `NativeTransport`, what every transport shares; `stream`: TCP
//! and Unix sockets and pipes (their unsent data: `write_queue`); `datagram`: UDP and Unix
//! datagram sockets; `accept`: a server's connections taken natively.
pub mod accept;
pub mod base;
pub mod datagram;
pub mod owner_methods;
pub mod stream;
mod write_queue;
