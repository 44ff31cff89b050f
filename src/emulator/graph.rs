//! The emulator's CUDA graphs: while a capture is under way on a thread, the launches that thread
//! issues are recorded instead of run, and a graph is that list, replayed in order. As on a GPU,
//! a recorded launch keeps its argument values, addresses included.

use std::cell::RefCell;

use crate::launch::Launch;

thread_local! {
    static RECORDING: RefCell<Option<Vec<Launch>>> = const { RefCell::new(None) };
}

/// Starts recording this thread's launches; false if a capture is already under way.
pub(crate) fn begin_capture() -> bool {
    RECORDING.with_borrow_mut(|recording| match recording {
        Some(_) => false,
        None => {
            *recording = Some(Vec::new());
            true
        }
    })
}

/// Ends the capture: the launches recorded since `begin_capture`, in issue order.
pub(crate) fn end_capture() -> Vec<Launch> {
    RECORDING.with_borrow_mut(Option::take).unwrap_or_default()
}

pub(crate) fn is_capturing() -> bool {
    RECORDING.with_borrow(Option::is_some)
}

/// Records `launch` if a capture is under way on this thread; returns whether it did.
pub(crate) fn record(launch: &Launch) -> bool {
    RECORDING.with_borrow_mut(|recording| match recording {
        Some(launches) => {
            launches.push(launch.clone());
            true
        }
        None => false,
    })
}
