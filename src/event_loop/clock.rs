//! The loop's clock: CLOCK_MONOTONIC in seconds, the clock `time.monotonic()` reads.

/// Seconds on CLOCK_MONOTONIC, equal to `time.monotonic()` at the same instant.
#[inline]
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `time.get_clock_info('monotonic').resolution` on Linux.
pub const RESOLUTION: f64 = 1e-9;

/// asyncio's MAXIMUM_SELECT_TIMEOUT: never sleep longer than a day in one wait.
pub const MAX_WAIT_SECONDS: f64 = 24.0 * 3600.0;

/// Converts a wait in seconds to epoll's milliseconds, rounding up so that a timer is never
/// woken for early (which would spin), as asyncio's selectors do.
pub fn wait_millis(seconds: f64) -> i32 {
    (seconds.clamp(0.0, MAX_WAIT_SECONDS) * 1e3).ceil() as i32
}
