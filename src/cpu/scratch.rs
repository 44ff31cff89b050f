//! Per-thread scratch buffers that grow to the largest size asked of them and are then reused,
//! so the training loop does not allocate.

use std::cell::Cell;
use std::thread::LocalKey;

thread_local! {
    /// A zero-padded image, and im2col columns where a convolution still needs them.
    pub(super) static COLUMNS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The GEMM's packed block of A.
    pub(super) static PACKED_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The GEMM's packed panel of B.
    pub(super) static PACKED_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// One image's convolution output, or its gradient, between a convolution and its pool.
    pub(super) static CONV_OUT: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Working floats of the calling thread for one op: the per-thread partial sums of a weight
    /// gradient (which that thread reduces), or a convolution's flipped weight.
    pub(super) static PARTIALS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// A convolution's filter transformed for Winograd's products, kept for the next one: at
    /// 128 KB for conv2, a fresh allocation each op would be fresh pages each op.
    pub(super) static FILTERS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// A scratch slice starts on a cache line: a 64-byte vector load from a packed panel then never
/// straddles two lines, which costs Intel's cores a second pass through the load port.
const ALIGN_BYTES: usize = 64;
const ALIGN_FLOATS: usize = ALIGN_BYTES / std::mem::size_of::<f32>();

/// Runs `f` on `len` floats of this thread's `buffer` (contents unspecified).
///
/// The buffer is taken out of its cell while `f` runs, so a re-entrant call on the same thread
/// (rayon may run another task here while this one waits) gets a fresh buffer instead of a
/// borrow conflict.
pub(super) fn with_scratch<R>(
    buffer: &'static LocalKey<Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut scratch = buffer.take();
    if scratch.len() < len + ALIGN_FLOATS {
        scratch.resize(len + ALIGN_FLOATS, 0.0);
    }
    // A Vec<f32> is 4-byte aligned, so a line starts within its first 16 floats.
    let skip = scratch.as_ptr().align_offset(ALIGN_BYTES).min(ALIGN_FLOATS);
    let result = f(&mut scratch[skip..][..len]);
    buffer.set(scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_start_on_a_cache_line_at_every_length_and_when_nested() {
        for len in [0, 1, 15, 16, 17, 1000, 4096, 100_003] {
            with_scratch(&PACKED_B, len, |outer| {
                assert_eq!(outer.len(), len);
                assert_eq!(outer.as_ptr() as usize % ALIGN_BYTES, 0, "len {len}");
                // A nested call on the same buffer gets a fresh one, aligned the same way.
                with_scratch(&PACKED_B, len + 3, |inner| {
                    assert_eq!(inner.len(), len + 3);
                    assert_eq!(inner.as_ptr() as usize % ALIGN_BYTES, 0, "nested len {len}");
                });
            });
        }
    }
}
