//! CUDA graphs: the launches issued on the stream between `begin_capture` and `end_capture` are
//! recorded (not run) and instantiated once; `launch_graph` then replays them all with one call.
//!
//! A captured launch keeps the argument values it was issued with (device addresses and scalars),
//! so a graph is only valid while every buffer it addresses lives where it did. Copies from or to
//! the host, allocations and waits would break or escape a capture, so the [`Device`](crate::Device)
//! refuses them while one is under way.

use std::sync::atomic::Ordering;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::{device_error, Gpu};
use crate::Result;

impl Gpu {
    /// Starts recording this thread's launches on the stream. Thread-local mode: other threads
    /// may go on using CUDA (only this one must not call what a capture forbids).
    pub(crate) fn begin_capture(&self) -> Result<()> {
        if self.capturing.swap(true, Ordering::SeqCst) {
            return Err(device_error("a graph capture is already under way"));
        }
        let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        self.stream.begin_capture(mode).map_err(|e| {
            self.capturing.store(false, Ordering::SeqCst);
            device_error(format!("cannot begin a graph capture: {e}"))
        })
    }

    /// Ends the capture and instantiates the graph.
    pub(crate) fn end_capture(&self) -> Result<CudaGraph> {
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        self.capturing.store(false, Ordering::SeqCst);
        match graph {
            Ok(Some(graph)) => Ok(graph),
            Ok(None) => Err(device_error("the graph capture recorded no launch")),
            Err(e) => Err(device_error(format!(
                "cannot end or instantiate the graph capture: {e}"
            ))),
        }
    }

    /// Replays a graph on the stream; like a launch, it runs asynchronously.
    pub(crate) fn launch_graph(&self, graph: &CudaGraph) -> Result<()> {
        graph
            .launch()
            .map_err(|e| self.async_error("launching the step's graph", e))
    }

    pub(crate) fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::SeqCst)
    }
}
