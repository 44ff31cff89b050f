//! How the kernel of `kernels/softmax_xent.cu` is launched.

use super::{int, KernelArg, Launch};
use crate::XentShape;

/// Threads per warp, the unit of work of the softmax kernels (one row each).
const WARP: u32 = 32;
/// The fused loss runs in one block of at most this many threads (32 warps).
const MAX_FUSED_XENT_THREADS: u32 = 1024;

/// One block, as many warps as rows up to 32 (a warp per row at a time): the row count and the
/// totals are then summed in a fixed order.
pub(crate) fn fused(
    s: &XentShape,
    logits: KernelArg,
    labels: KernelArg,
    totals: KernelArg,
    dlogits: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        logits,
        labels,
        totals,
        dlogits,
        int(s.batch),
        int(s.classes),
    ];
    let warps = s.batch.clamp(1, (MAX_FUSED_XENT_THREADS / WARP) as usize) as u32;
    vec![Launch {
        kernel: "softmax_xent_fused",
        grid: [1, 1, 1],
        block: [warps * WARP, 1, 1],
        shared_bytes: 0,
        args,
    }]
}
