//! `floor`: the native echo server that sets the benchmark's floor.
//!
//! It does the work a Python echo server does, with no Python: accept,
//! read, write back everything read. Single-threaded and event-driven
//! (mio, edge-triggered epoll), one 256 KiB read buffer per connection (the
//! size asyncio's transports read with), `TCP_NODELAY` on accepted sockets
//! (asyncio and uvloop set it too). Binds 127.0.0.1 only.
//!
//! ```text
//! floor [--port P]     # P = 0 (default) picks a free port
//! ```
//!
//! The first line on stdout is the bound port; then it serves until killed.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use ferroloop_echo_bench::Args;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};

const LISTENER: Token = Token(usize::MAX);
const READ_SIZE: usize = 256 * 1024;

struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// `buf[start..end]` was read but not yet written back.
    start: usize,
    end: usize,
    /// Registered for WRITABLE too (only while a write is blocked, like
    /// libuv/asyncio, so a draining send buffer causes no extra wake-ups).
    want_write: bool,
}

impl Conn {
    /// Echoes until the socket would block. Returns `Ok(false)` when the
    /// peer closed the connection (or it failed) and it should be dropped.
    fn echo(&mut self, registry: &Registry, token: Token) -> io::Result<bool> {
        loop {
            while self.start < self.end {
                match self.stream.write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Ok(false),
                    Ok(n) => self.start += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if !self.want_write {
                            self.want_write = true;
                            registry.reregister(
                                &mut self.stream,
                                token,
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                        }
                        return Ok(true);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.want_write {
                self.want_write = false;
                registry.reregister(&mut self.stream, token, Interest::READABLE)?;
            }
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn run() -> Result<(), String> {
    let args = Args::parse(std::env::args().skip(1), &[])?;
    args.reject_unknown(&["port"])?;
    let port: u16 = args.get_or("port", 0)?;

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let mut out = io::stdout().lock();
    writeln!(out, "{}", bound.port())
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    drop(out);

    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    // Slab of connections: a token is an index into `conns`.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);

    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            // Accepted sockets can fail setsockopt if the peer already
                            // reset; the connection then fails on first use anyway.
                            let _ = stream.set_nodelay(true);
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry()
                                .register(&mut stream, Token(idx), Interest::READABLE)
                                .map_err(|e| format!("register: {e}"))?;
                            conns[idx] = Some(Conn {
                                stream,
                                buf: vec![0u8; READ_SIZE].into_boxed_slice(),
                                start: 0,
                                end: 0,
                                want_write: false,
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // ECONNABORTED and friends: skip that connection.
                        Err(e) => eprintln!("floor: accept: {e}"),
                    }
                }
                continue;
            }
            let idx = event.token().0;
            let keep = match conns.get_mut(idx).and_then(Option::as_mut) {
                Some(conn) => conn.echo(poll.registry(), event.token()).unwrap_or(false),
                None => continue,
            };
            if !keep {
                if let Some(mut conn) = conns[idx].take() {
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
                free.push(idx);
            }
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}
