//! Ctrl-C: the first SIGINT or SIGTERM asks training to stop after the current step; a second
//! one exits at once, saying so. Commands with nothing to finish stop at the first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
/// What a second signal prints, once the run's directory is known.
static SECOND_STOP_NOTE: OnceLock<String> = OnceLock::new();

/// Exit status of a run stopped by a signal, as a shell reports one killed by SIGINT.
pub const INTERRUPTED_EXIT_CODE: u8 = 130;

const SECOND_STOP: &str = "interrupted again: stopped at once, without finishing the step\n";
const STOPPED_AT_ONCE: &str = "interrupted: stopped at once\n";

/// Writes `text` to stderr and exits: only async-signal-safe calls.
fn stop_now(text: &str) -> ! {
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `text` outlives the call.
    unsafe {
        libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len());
        libc::_exit(INTERRUPTED_EXIT_CODE.into())
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    // An atomic swap, and a OnceLock read (an atomic load) before stop_now.
    if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
        stop_now(SECOND_STOP_NOTE.get().map_or(SECOND_STOP, String::as_str));
    }
}

extern "C" fn on_signal_stop_at_once(_: libc::c_int) {
    stop_now(STOPPED_AT_ONCE);
}

fn route(handler: extern "C" fn(libc::c_int)) {
    let handler = handler as libc::sighandler_t;
    // SAFETY: both handlers only touch atomics and call async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Routes SIGINT and SIGTERM to [`stop_requested`]; a second one exits at once.
pub fn install() {
    route(on_signal);
}

/// Routes SIGINT and SIGTERM to an exit at once that says so, for work with nothing to keep.
pub fn install_stop_at_once() {
    route(on_signal_stop_at_once);
}

/// What a second signal prints instead of its plain note (a line, ending in a newline).
pub fn set_second_stop_note(note: String) {
    let _ = SECOND_STOP_NOTE.set(note);
}

/// Whether a first signal has arrived.
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}
