//! What `loop.metrics()` reports: counters the run loop and the native transports keep.
//!
//! Three levels (`Level`), chosen per loop:
//! - `Off`: nothing is counted (for measuring what the other levels cost).
//! - `Loop` (the default): iterations, callbacks run, bytes and calls through the native
//!   transports, and the time spent blocked in the poller against the time spent working.
//!   The clock is read only around polls (once before, and once after a poll that may
//!   block), never per callback.
//! - `Callbacks`: also one clock read per callback (and one per `call_soon`), for the
//!   scheduling-lag histogram and the slow-callback count.
//!
//! Every counter is touched only by the loop's thread with the GIL held, so an increment is
//! a relaxed load and store (no locked instruction); the atomics only let `metrics()` read
//! them from another thread (a scrape from a metrics endpoint while the loop is blocked).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// How much the loop measures (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Level {
    Off = 0,
    Loop = 1,
    Callbacks = 2,
}

impl Level {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "off" => Some(Level::Off),
            "loop" => Some(Level::Loop),
            "callbacks" => Some(Level::Callbacks),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Loop => "loop",
            Level::Callbacks => "callbacks",
        }
    }
}

/// Upper bounds (seconds) of the scheduling-lag histogram's buckets; a last bucket holds
/// everything above the largest bound (Prometheus' `+Inf`).
pub(crate) const LAG_BOUNDS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The kinds of native transport, in the order `metrics()` reports them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TransportKind {
    Tcp = 0,
    Unix = 1,
    Pipe = 2,
    Udp = 3,
    UnixDatagram = 4,
}

impl TransportKind {
    pub(crate) const ALL: [TransportKind; 5] = [
        TransportKind::Tcp,
        TransportKind::Unix,
        TransportKind::Pipe,
        TransportKind::Udp,
        TransportKind::UnixDatagram,
    ];

    /// The kind's name in `LoopMetrics.transports`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Unix => "unix",
            TransportKind::Pipe => "pipe",
            TransportKind::Udp => "udp",
            TransportKind::UnixDatagram => "unix_datagram",
        }
    }

    /// The kind of a socket transport from the socket's address family.
    pub(crate) fn of_socket(family: libc::c_int, datagram: bool) -> Self {
        match (family == libc::AF_UNIX, datagram) {
            (true, false) => TransportKind::Unix,
            (true, true) => TransportKind::UnixDatagram,
            (false, false) => TransportKind::Tcp,
            (false, true) => TransportKind::Udp,
        }
    }
}

/// A counter only the loop's thread changes (see the module documentation).
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Seconds as an f64 that only the loop's thread changes.
#[derive(Default)]
pub(crate) struct Seconds(AtomicU64);

impl Seconds {
    #[inline]
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    #[inline]
    pub(crate) fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn add(&self, value: f64) {
        self.set(self.get() + value);
    }

    #[inline]
    pub(crate) fn max(&self, value: f64) {
        if value > self.get() {
            self.set(value);
        }
    }
}

/// Bytes and system calls through the native transports, and how many are open by kind.
/// Shared (an `Arc`) by the loop and each of its transports.
#[derive(Default)]
pub(crate) struct IoStats {
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// Reads that returned data or EOF (not the ones that would have blocked).
    pub reads: Counter,
    /// Writes that sent at least one byte.
    pub writes: Counter,
    /// Transports made and not yet released, by `TransportKind`.
    open: [Counter; 5],
    /// Transports made since the loop was created, by `TransportKind`.
    opened: [Counter; 5],
}

impl IoStats {
    pub(crate) fn opened(&self, kind: TransportKind) {
        self.open[kind as usize].add(1);
        self.opened[kind as usize].add(1);
    }

    pub(crate) fn closed(&self, kind: TransportKind) {
        self.open[kind as usize].sub(1);
    }

    #[inline]
    pub(crate) fn received(&self, n: usize) {
        self.reads.add(1);
        self.bytes_received.add(n as u64);
    }

    #[inline]
    pub(crate) fn sent(&self, n: usize) {
        if n > 0 {
            self.writes.add(1);
            self.bytes_sent.add(n as u64);
        }
    }

    pub(crate) fn open_counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.open[i].get())
    }

    pub(crate) fn opened_counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.opened[i].get())
    }
}

/// The run loop's own counters.
#[derive(Default)]
pub(crate) struct LoopStats {
    level: AtomicU8,
    pub iterations: Counter,
    pub callbacks: Counter,
    /// Time (seconds) spent blocked in the poller, and working between polls.
    pub poll_seconds: Seconds,
    pub busy_seconds: Seconds,
    /// The longest stretch between two polls (seconds): one iteration, or several in a row
    /// that had no reason to poll (callbacks ready and no fd watched).
    pub longest_iteration: Seconds,
    /// When the current working stretch began (monotonic seconds; 0 when the loop does not
    /// run), and when the current blocking poll began (0 when not in one).
    pub busy_since: Seconds,
    pub polling_since: Seconds,
    pub lag_buckets: [Counter; LAG_BOUNDS.len() + 1],
    pub lag_sum: Seconds,
    pub slow_callbacks: Counter,
    pub slow_seconds: Seconds,
    /// Callbacks started so far while timing callbacks, and when the current one started
    /// (what the slow-callback watchdog thread reads).
    pub callback_seq: Counter,
    pub callback_started: Seconds,
}

impl LoopStats {
    pub(crate) fn new(level: Level) -> Self {
        let stats = LoopStats::default();
        stats.set_level(level);
        stats
    }

    #[inline]
    pub(crate) fn level(&self) -> Level {
        match self.level.load(Ordering::Relaxed) {
            0 => Level::Off,
            1 => Level::Loop,
            _ => Level::Callbacks,
        }
    }

    pub(crate) fn set_level(&self, level: Level) {
        self.level.store(level as u8, Ordering::Relaxed);
    }

    /// The loop starts running at `now`.
    pub(crate) fn started(&self, now: f64) {
        if self.level() >= Level::Loop {
            self.busy_since.set(now);
        }
    }

    /// The loop stops running at `now`: its last working stretch ends.
    pub(crate) fn stopped(&self, now: f64) {
        let since = self.busy_since.get();
        if since > 0.0 {
            self.end_stretch(now - since);
        }
        self.busy_since.set(0.0);
    }

    /// A poll begins at `now`: the working stretch since the last one ends.
    #[inline]
    pub(crate) fn before_poll(&self, now: f64, blocking: bool) {
        let since = self.busy_since.get();
        if since > 0.0 {
            self.end_stretch(now - since);
        }
        if blocking {
            self.polling_since.set(now);
        } else {
            self.busy_since.set(now);
        }
    }

    /// A blocking poll that began at `polling_since` returned at `now`.
    #[inline]
    pub(crate) fn after_blocking_poll(&self, now: f64) {
        let since = self.polling_since.get();
        self.poll_seconds.add((now - since).max(0.0));
        self.polling_since.set(0.0);
        self.busy_since.set(now);
    }

    fn end_stretch(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        self.busy_seconds.add(seconds);
        self.longest_iteration.max(seconds);
    }

    /// Records how long a callback waited in the ready queue.
    #[inline]
    pub(crate) fn observe_lag(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let bucket = LAG_BOUNDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LAG_BOUNDS.len());
        self.lag_buckets[bucket].add(1);
        self.lag_sum.add(seconds);
    }

    /// Busy seconds, poll seconds and the longest stretch between polls, including the
    /// stretch in progress at `now` (a loop stuck in a callback shows it at once).
    pub(crate) fn times_at(&self, now: f64) -> (f64, f64, f64) {
        let (mut busy, mut poll) = (self.busy_seconds.get(), self.poll_seconds.get());
        let mut longest = self.longest_iteration.get();
        let polling = self.polling_since.get();
        let working = self.busy_since.get();
        if polling > 0.0 {
            poll += (now - polling).max(0.0);
        } else if working > 0.0 {
            let stretch = (now - working).max(0.0);
            busy += stretch;
            longest = longest.max(stretch);
        }
        (busy, poll, longest)
    }
}
