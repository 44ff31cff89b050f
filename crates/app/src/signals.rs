//! Ctrl-C: the first SIGINT or SIGTERM asks training to stop after the current step; a second
//! one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a run stopped by a signal, as a shell reports one killed by SIGINT.
pub const INTERRUPTED_EXIT_CODE: u8 = 130;

extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe calls here: an atomic swap and _exit.
    if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
        unsafe { libc::_exit(INTERRUPTED_EXIT_CODE.into()) };
    }
}

/// Routes SIGINT and SIGTERM to [`stop_requested`].
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether a first signal has arrived.
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}
