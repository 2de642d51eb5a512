//! Fork detection.
//!
//! After `fork()` the child shares the parent's epoll instance (the same open file
//! description): an `epoll_ctl` in the child would add or remove the *parent's*
//! registrations. So a loop created before a fork must not poll or change its watchers in the
//! child; it may only be closed there (which closes the child's copies of its fds and nothing
//! else). A process-wide counter, bumped in the child by a `pthread_atfork` handler, tells a
//! loop that it crossed a fork: this is process state, not loop state (GUIDE §2.8).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

extern "C" fn bump_in_child() {
    // Async-signal-safe: a single atomic add.
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The current fork generation (installing the handler on first use).
pub fn generation() -> u64 {
    INSTALL.call_once(|| {
        // SAFETY: registers a handler that only performs an atomic add (async-signal-safe,
        // as a fork child handler must be); registered once per process.
        unsafe { libc::pthread_atfork(None, None, Some(bump_in_child)) };
    });
    FORK_GENERATION.load(Ordering::SeqCst)
}
