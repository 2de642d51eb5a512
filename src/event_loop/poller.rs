//! Level-triggered epoll plus an eventfd waker (and edge-triggered registrations for the
//! `sock_*` operations only, which always try the syscall before they wait: see `fds.rs`).
//!
//! Why not mio: mio registers every source edge-triggered (EPOLLET). asyncio's `add_reader`
//! contract is level-triggered: a reader callback that consumes only part of the available
//! data must be called again on the next iteration. With edge triggering that second call
//! never comes. So this module talks to epoll directly (through `libc`); it is small and all
//! of it is here.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Token reported for the waker's eventfd; user fds are reported by their fd number.
const WAKER_TOKEN: u64 = u64::MAX;

pub const READABLE: u32 = libc::EPOLLIN as u32;
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
/// Conditions epoll reports whatever we ask for; asyncio treats them as ready for both.
pub const ERROR_OR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
/// Edge-triggered registration: used only for the `sock_*` operations (see `fds.rs`).
pub const EDGE: u32 = libc::EPOLLET as u32;

pub struct Poller {
    /// -1 once closed. Only `close` (loop thread, GIL held, loop not running) changes them.
    epfd: AtomicI32,
    wakefd: AtomicI32,
    /// True while a wake-up is written and not yet consumed: coalesces wake-ups so that a
    /// burst of `call_soon_threadsafe` costs one `write(2)`.
    wake_pending: AtomicBool,
    /// True while the loop thread blocks (or is about to block) in `epoll_wait` with a
    /// non-zero timeout. Set and cleared by the loop thread while it holds the GIL, read by
    /// waking threads while they hold the GIL, so a loop that is busy running callbacks (it
    /// will look at its ready queue before it sleeps) is never sent a useless `write(2)`.
    sleeping: AtomicBool,
}

/// One readiness report: the fd and the epoll event bits.
#[derive(Clone, Copy)]
pub struct Ready {
    pub fd: RawFd,
    pub events: u32,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with a valid flag; the result is checked.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: plain syscall with valid flags; the result is checked.
        let wakefd = match cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
        {
            Ok(fd) => fd,
            Err(e) => {
                // SAFETY: epfd was just created by us and is closed exactly once here.
                unsafe { libc::close(epfd) };
                return Err(e);
            }
        };
        let poller = Poller {
            epfd: AtomicI32::new(epfd),
            wakefd: AtomicI32::new(wakefd),
            wake_pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
        };
        poller.ctl(libc::EPOLL_CTL_ADD, wakefd, READABLE, WAKER_TOKEN)?;
        Ok(poller)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event that lives across the call; epoll_ctl does not
        // keep the pointer. Bad fds are reported by the kernel as errors, which we return.
        cvt(unsafe { libc::epoll_ctl(self.epfd.load(Ordering::Relaxed), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Registers `fd` or changes its interest set. Copes with the kernel having dropped a
    /// closed fd behind our back (ENOENT on modify) and with an fd number reused (EEXIST).
    pub fn set_interest(&self, fd: RawFd, events: u32, known: bool) -> io::Result<()> {
        let token = fd as u64;
        let (first, second) = if known {
            (libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_ADD)
        } else {
            (libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD)
        };
        match self.ctl(first, fd, events, token) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EEXIST)) => {
                self.ctl(second, fd, events, token)
            }
            other => other,
        }
    }

    /// Stops watching `fd`. Errors are ignored: a closed fd has already left the epoll set.
    pub fn remove(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// Waits for readiness. `timeout_ms < 0` waits forever. Returns `Ok(true)` if the waker
    /// fired. EINTR is returned to the caller, which must run Python's signal handlers.
    pub fn wait(&self, out: &mut Vec<Ready>, timeout_ms: i32) -> io::Result<bool> {
        const MAX_EVENTS: usize = 256;
        if let Some(errno) = crate::sys::fault::errno(crate::sys::Op::EpollWait) {
            // An injected fault (test builds only): as if epoll_wait failed with it.
            return Err(io::Error::from_raw_os_error(errno));
        }
        // Uninitialised: zeroing 3 KiB on every iteration of a busy loop is measurable.
        let mut raw = [const { MaybeUninit::<libc::epoll_event>::uninit() }; MAX_EVENTS];
        // SAFETY: `raw` is a writable array of MAX_EVENTS epoll_events; the kernel writes at
        // most that many and returns how many it wrote.
        let n = cvt(unsafe {
            libc::epoll_wait(
                self.epfd.load(Ordering::Relaxed),
                raw.as_mut_ptr().cast(),
                MAX_EVENTS as libc::c_int,
                timeout_ms,
            )
        })?;
        let mut woken = false;
        for slot in &raw[..n as usize] {
            // SAFETY: epoll_wait initialised the first `n` entries.
            let ev = unsafe { slot.assume_init_read() };
            if ev.u64 == WAKER_TOKEN {
                woken = true;
            } else {
                out.push(Ready {
                    fd: ev.u64 as RawFd,
                    events: ev.events,
                });
            }
        }
        if woken {
            self.drain_waker();
        }
        Ok(woken)
    }

    fn drain_waker(&self) {
        let mut buf = 0u64;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking eventfd.
        unsafe {
            libc::read(
                self.wakefd.load(Ordering::Relaxed),
                (&mut buf as *mut u64).cast(),
                8,
            )
        };
        // Clear only after the read. Clearing first would let a racing `wake` write, have
        // that write consumed by this read, and leave `wake_pending` stuck at true with an
        // empty eventfd: every later wake would be skipped and the loop would sleep forever.
        // In this order a wake that sees `true` between the read and the store is skipped
        // safely: its work was queued (under the GIL) before this wait returns, and the loop
        // runs the ready queue right after.
        self.wake_pending.store(false, Ordering::Release);
    }

    /// Called by the loop thread, holding the GIL, around a blocking wait.
    ///
    /// Relaxed is enough: `sleeping` is only written and read with the GIL held, and the
    /// GIL's release and acquire order these accesses and the ready queue's. A waking thread
    /// can only queue work after the loop thread released the GIL, i.e. after it set the
    /// flag (or, if the loop released the GIL earlier, while running callbacks, before it
    /// looks at its queue). A SeqCst store is an `xchg` on x86, a full barrier the loop paid
    /// twice per iteration: about 2% of an `await sleep(0)` under perf on CPython 3.13.
    pub fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::Relaxed);
    }

    /// Wakes the loop if it sleeps (or is about to) in `wait`. Call with the GIL held, after
    /// queueing the work the loop should see.
    pub fn wake_if_sleeping(&self) {
        if self.sleeping.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Makes a current or future `wait` return at once. Safe to call from any thread.
    pub fn wake(&self) {
        if self.wake_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. EAGAIN (counter full)
        // still leaves the fd readable, which is all a wake-up needs.
        unsafe {
            libc::write(
                self.wakefd.load(Ordering::Relaxed),
                (&one as *const u64).cast(),
                8,
            )
        };
    }
}

impl Poller {
    /// Closes epoll and the waker. Idempotent; later calls fail with EBADF, never touching
    /// an fd number that may have been reused.
    pub fn close(&self) {
        for fd in [&self.wakefd, &self.epfd] {
            let raw = fd.swap(-1, Ordering::Relaxed);
            if raw >= 0 {
                // SAFETY: `raw` was created by `new` and is owned by this Poller only; the swap
                // to -1 guarantees it is closed exactly once.
                unsafe { libc::close(raw) };
            }
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.close();
    }
}
