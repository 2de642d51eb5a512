//! `loadgen`: closed-loop load generator for echo servers on 127.0.0.1.
//!
//! Opens `--connections C` TCP connections to `127.0.0.1:--port`. Each one,
//! in a closed loop, sends a message of `--size S` bytes and waits for
//! exactly S bytes back, comparing every byte with what it sent. Messages
//! are a deterministic pseudo-random pattern per (connection, request): a
//! slice of a fixed random pool at an offset derived from both numbers, with
//! the connection and request numbers stamped in the first 12 bytes, so a
//! server that replays, reorders, drops, adds or flips bytes is caught.
//! A mismatch, a short read (peer closed early), extra bytes, an I/O error
//! or a request with no progress for `--timeout` seconds is a hard failure:
//! a message naming the connection and request on stderr, a JSON line with
//! `"errors": 1` on stdout, exit status 1.
//!
//! Phases: warm-up (`--warmup` seconds), then the measured window
//! (`--seconds`, or exactly `--requests N` requests). Each phase ends by
//! issuing no new requests and letting the in-flight ones finish, so the
//! server is idle at both ends of the measured window. With `--sync` the
//! program prints `ready` after the warm-up and waits for a line on stdin
//! before measuring, and after printing its result waits for a line (or EOF)
//! on stdin before closing the connections: a driver can sample the server's
//! CPU time at those two quiet points.
//!
//! Output, one JSON line: requests, errors, seconds, req_per_s, p50_us,
//! p99_us, max_us, mean_us, bytes_verified (echoed bytes compared), plus
//! the parameters. Single-threaded, event-driven (mio).

use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferroloop_echo_bench::Args;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Bytes of random data beyond S in the pattern pool.
const POOL_EXTRA: usize = 1 << 20;
/// Bytes stamped at the start of each message: connection (u32), request (u64).
const HEADER: usize = 12;
const READ_CHUNK: usize = 256 * 1024;

struct Config {
    port: u16,
    conns: usize,
    size: usize,
    seconds: f64,
    requests: Option<u64>,
    warmup: f64,
    timeout: Duration,
    sync: bool,
}

const USAGE: &str = "usage: loadgen --port P [--connections C=8] [--size S=1024] \
[--seconds T=5 | --requests N] [--warmup W=1] [--timeout SECS=10] [--sync]";

impl Config {
    fn from_args() -> Result<Config, String> {
        let args = Args::parse(std::env::args().skip(1), &["sync"])?;
        args.reject_unknown(&[
            "port",
            "connections",
            "size",
            "seconds",
            "requests",
            "warmup",
            "timeout",
        ])?;
        let cfg = Config {
            port: args.get("port")?.ok_or("--port is required")?,
            conns: args.get_or("connections", 8)?,
            size: args.get_or("size", 1024)?,
            seconds: args.get_or("seconds", 5.0)?,
            requests: args.get("requests")?,
            warmup: args.get_or("warmup", 1.0)?,
            timeout: Duration::from_secs_f64(args.get_or("timeout", 10.0)?),
            sync: args.flag("sync"),
        };
        if cfg.conns == 0 || cfg.conns > u32::MAX as usize {
            return Err("--connections must be at least 1".into());
        }
        if cfg.size < HEADER {
            return Err(format!("--size must be at least {HEADER} bytes"));
        }
        if !(cfg.seconds > 0.0 && cfg.warmup >= 0.0) {
            return Err("--seconds must be > 0 and --warmup >= 0".into());
        }
        Ok(cfg)
    }
}

/// splitmix64: a good 64-bit mixer, used for the pool and the offsets.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn make_pool(len: usize) -> Vec<u8> {
    let mut pool = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while pool.len() < len {
        pool.extend_from_slice(&splitmix64(i).to_le_bytes());
        i += 1;
    }
    pool.truncate(len);
    pool
}

struct Conn {
    id: usize,
    stream: TcpStream,
    /// The current request's message; the echo must equal it.
    msg: Vec<u8>,
    sent: usize,
    recvd: usize,
    /// Number of the current (or last) request on this connection.
    req: u64,
    busy: bool,
    started: Instant,
    last_progress: Instant,
}

impl Conn {
    fn start(&mut self, pool: &[u8], now: Instant) {
        self.req += 1;
        let span = (pool.len() - self.msg.len() + 1) as u64;
        let off = (splitmix64(((self.id as u64) << 40) ^ self.req) % span) as usize;
        let n = self.msg.len();
        self.msg.copy_from_slice(&pool[off..off + n]);
        self.msg[..4].copy_from_slice(&(self.id as u32).to_le_bytes());
        self.msg[4..HEADER].copy_from_slice(&self.req.to_le_bytes());
        self.sent = 0;
        self.recvd = 0;
        self.busy = true;
        self.started = now;
        self.last_progress = now;
    }

    fn what(&self) -> String {
        format!("connection {} request {}", self.id, self.req)
    }

    /// Writes and reads until the socket would block. Returns `Ok(true)`
    /// when the whole echo has been received and verified.
    fn pump(&mut self, rbuf: &mut [u8]) -> Result<bool, String> {
        let size = self.msg.len();
        let mut progressed = false;
        while self.sent < size {
            match self.stream.write(&self.msg[self.sent..]) {
                Ok(0) => return Err(format!("{}: write returned 0", self.what())),
                Ok(n) => {
                    self.sent += n;
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{}: write: {e}", self.what())),
            }
        }
        while self.recvd < size {
            let want = (size - self.recvd).min(rbuf.len());
            match self.stream.read(&mut rbuf[..want]) {
                Ok(0) => {
                    return Err(format!(
                        "{}: short read: peer closed after {} of {} bytes",
                        self.what(),
                        self.recvd,
                        size
                    ))
                }
                Ok(n) => {
                    if self.recvd + n > self.sent {
                        return Err(format!(
                            "{}: received {} bytes but only {} were sent",
                            self.what(),
                            self.recvd + n,
                            self.sent
                        ));
                    }
                    let expected = &self.msg[self.recvd..self.recvd + n];
                    if expected != &rbuf[..n] {
                        let i = expected
                            .iter()
                            .zip(&rbuf[..n])
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        return Err(format!(
                            "{}: byte mismatch at offset {} of {}: expected 0x{:02x}, got 0x{:02x}",
                            self.what(),
                            self.recvd + i,
                            size,
                            expected[i],
                            rbuf[i]
                        ));
                    }
                    self.recvd += n;
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{}: read: {e}", self.what())),
            }
        }
        if progressed {
            self.last_progress = Instant::now();
        }
        Ok(self.recvd == size)
    }

    /// After the last request: the server must not have sent anything more.
    fn check_no_extra(&mut self, rbuf: &mut [u8]) -> Result<(), String> {
        loop {
            return match self.stream.read(rbuf) {
                Ok(0) => Err(format!(
                    "{}: peer closed the connection while idle",
                    self.what()
                )),
                Ok(n) => Err(format!(
                    "{}: {n} unexpected extra bytes after the echo",
                    self.what()
                )),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => Err(format!("{}: read: {e}", self.what())),
            };
        }
    }
}

#[derive(Default)]
struct PhaseResult {
    requests: u64,
    elapsed: Duration,
    /// Latencies in nanoseconds (only when recording).
    latencies: Vec<u64>,
}

struct Bench {
    cfg: Config,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    pool: Vec<u8>,
    rbuf: Vec<u8>,
}

impl Bench {
    fn connect(cfg: Config) -> Result<Bench, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, cfg.port));
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut conns = Vec::with_capacity(cfg.conns);
        for id in 0..cfg.conns {
            let std_stream = std::net::TcpStream::connect_timeout(&addr, cfg.timeout)
                .map_err(|e| format!("connection {id}: connect to {addr}: {e}"))?;
            std_stream
                .set_nodelay(true)
                .and_then(|()| std_stream.set_nonblocking(true))
                .map_err(|e| format!("connection {id}: {e}"))?;
            let mut stream = TcpStream::from_std(std_stream);
            poll.registry()
                .register(
                    &mut stream,
                    Token(id),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("connection {id}: register: {e}"))?;
            conns.push(Conn {
                id,
                stream,
                msg: vec![0u8; cfg.size],
                sent: 0,
                recvd: 0,
                req: 0,
                busy: false,
                started: now,
                last_progress: now,
            });
        }
        let pool = make_pool(cfg.size + POOL_EXTRA);
        Ok(Bench {
            cfg,
            poll,
            events: Events::with_capacity(1024),
            conns,
            pool,
            rbuf: vec![0u8; READ_CHUNK],
        })
    }

    /// Runs requests until `seconds` have passed or `limit` requests were
    /// issued, then lets the in-flight ones finish.
    fn phase(
        &mut self,
        seconds: f64,
        limit: Option<u64>,
        record: bool,
    ) -> Result<PhaseResult, String> {
        let begin = Instant::now();
        let deadline = begin + Duration::from_secs_f64(seconds);
        let mut res = PhaseResult::default();
        let mut issued = 0u64;
        let mut issuing = limit != Some(0);
        let mut busy = 0usize;
        let mut last_stall_check = begin;

        let Bench {
            cfg,
            poll,
            events,
            conns,
            pool,
            rbuf,
        } = self;

        // Starts a request on `conn` and pumps it; completes as many
        // back-to-back requests as finish without blocking.
        let mut drive = |conn: &mut Conn,
                         issuing: &mut bool,
                         issued: &mut u64,
                         busy: &mut usize,
                         res: &mut PhaseResult|
         -> Result<(), String> {
            loop {
                if !conn.busy {
                    if !*issuing {
                        return Ok(());
                    }
                    let now = Instant::now();
                    if now >= deadline && limit.is_none() {
                        *issuing = false;
                        return Ok(());
                    }
                    conn.start(pool, now);
                    *issued += 1;
                    *busy += 1;
                    if limit.is_some_and(|l| *issued >= l) {
                        *issuing = false;
                    }
                }
                if !conn.pump(rbuf)? {
                    return Ok(());
                }
                conn.busy = false;
                *busy -= 1;
                res.requests += 1;
                if record {
                    res.latencies
                        .push(conn.started.elapsed().as_nanos().min(u64::MAX as u128) as u64);
                }
            }
        };

        for conn in conns.iter_mut() {
            drive(conn, &mut issuing, &mut issued, &mut busy, &mut res)?;
        }
        loop {
            let now = Instant::now();
            if issuing && limit.is_none() && now >= deadline {
                issuing = false;
            }
            if !issuing && busy == 0 {
                break;
            }
            let wait = if issuing {
                deadline
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(100))
            } else {
                Duration::from_millis(100)
            };
            if let Err(e) = poll.poll(events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    return Err(format!("poll: {e}"));
                }
            }
            for event in events.iter() {
                let conn = &mut conns[event.token().0];
                drive(conn, &mut issuing, &mut issued, &mut busy, &mut res)?;
            }
            // Requests whose deadline passed while idle connections exist
            // are started on the next event; stall detection runs ~10×/s.
            let now = Instant::now();
            if now.duration_since(last_stall_check) >= Duration::from_millis(100) {
                last_stall_check = now;
                for conn in conns.iter() {
                    if conn.busy && now.duration_since(conn.last_progress) > cfg.timeout {
                        return Err(format!(
                            "{}: timed out: no progress for {:.1} s (sent {} of {} bytes, received {})",
                            conn.what(),
                            cfg.timeout.as_secs_f64(),
                            conn.sent,
                            conn.msg.len(),
                            conn.recvd
                        ));
                    }
                }
            }
        }
        res.elapsed = begin.elapsed();
        for conn in conns.iter_mut() {
            conn.check_no_extra(rbuf)?;
        }
        Ok(res)
    }
}

/// Blocks until a line arrives on stdin; `Ok(false)` on EOF.
fn wait_for_line() -> Result<bool, String> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map(|n| n > 0)
        .map_err(|e| format!("reading stdin: {e}"))
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    // Nearest-rank percentile.
    let rank = ((p * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1000.0
}

fn run(cfg: Config) -> Result<String, String> {
    let sync = cfg.sync;
    let (warmup, seconds, requests) = (cfg.warmup, cfg.seconds, cfg.requests);
    let (conns, size) = (cfg.conns, cfg.size);
    let mut bench = Bench::connect(cfg)?;
    let warm = if warmup > 0.0 {
        bench.phase(warmup, None, false)?
    } else {
        PhaseResult::default()
    };
    if sync {
        println!("ready");
        io::stdout().flush().map_err(|e| e.to_string())?;
        if !wait_for_line()? {
            return Err("stdin closed before the measured window (driver gone?)".into());
        }
    }
    let mut res = bench.phase(seconds, requests, true)?;
    res.latencies.sort_unstable();
    let secs = res.elapsed.as_secs_f64();
    let mean_us = if res.latencies.is_empty() {
        0.0
    } else {
        res.latencies.iter().map(|&n| n as f64).sum::<f64>() / res.latencies.len() as f64 / 1000.0
    };
    let json = format!(
        concat!(
            "{{\"requests\": {}, \"errors\": 0, \"seconds\": {:.6}, \"req_per_s\": {:.1}, ",
            "\"p50_us\": {:.1}, \"p99_us\": {:.1}, \"max_us\": {:.1}, \"mean_us\": {:.1}, ",
            "\"bytes_verified\": {}, \"connections\": {}, \"size\": {}, \"warmup_requests\": {}}}"
        ),
        res.requests,
        secs,
        res.requests as f64 / secs,
        percentile_us(&res.latencies, 0.50),
        percentile_us(&res.latencies, 0.99),
        percentile_us(&res.latencies, 1.0),
        mean_us,
        res.requests * size as u64,
        conns,
        size,
        warm.requests,
    );
    let mut out = io::stdout().lock();
    writeln!(out, "{json}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    drop(out);
    if sync {
        // Keep the connections open until the driver has sampled the server.
        wait_for_line()?;
    }
    drop(bench);
    Ok(json)
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn main() -> ExitCode {
    let cfg = match Config::from_args() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: FAILED: {e}");
            println!("{{\"errors\": 1, \"error\": \"{}\"}}", json_escape(&e));
            ExitCode::FAILURE
        }
    }
}
