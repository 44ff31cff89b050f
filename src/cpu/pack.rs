//! Vector moves for packing GEMM panels on AVX-512: short copies as masked loads and stores
//! (no library call for a 14-float image row), and panel rows gathered from strided sources.

use super::microkernel::NR;
use std::arch::x86_64::*;

/// Whether the CPU runs these moves; std caches the answer.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Copies `len` floats from `src` to `dst`, 16 at a time, the last ones masked.
///
/// # Safety
/// The CPU must have AVX-512F; `src` and `dst` must be valid for `len` floats.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn copy(src: *const f32, dst: *mut f32, len: usize) {
    for t in (0..len).step_by(16) {
        let mask = ((1u32 << (len - t).min(16)) - 1) as __mmask16;
        _mm512_mask_storeu_ps(dst.add(t), mask, _mm512_maskz_loadu_ps(mask, src.add(t)));
    }
}

/// Fills one panel row of NR floats per item of `rows`: row r gets `data[rows[r] + cols[j]]`
/// for `j < cols.len()`, zero after. The column offsets are the same for every row, so each row
/// is two gathers from a moving base.
///
/// # Safety
/// The CPU must have AVX-512F; `data[row + col]` must be valid for every row and column, every
/// column offset must fit an i32, `cols.len() ≤ NR`, and `panel` must hold NR floats per row.
#[target_feature(enable = "avx512f")]
pub unsafe fn gather(
    data: *const f32,
    rows: impl Iterator<Item = usize>,
    cols: &[usize],
    panel: *mut f32,
) {
    let mut offsets = [0i32; NR];
    for (o, &c) in offsets.iter_mut().zip(cols) {
        *o = c as i32;
    }
    let mask = |from: usize| ((1u32 << cols.len().saturating_sub(from).min(16)) - 1) as __mmask16;
    let (mask0, mask1) = (mask(0), mask(16));
    let index0 = _mm512_loadu_si512(offsets.as_ptr().cast());
    let index1 = _mm512_loadu_si512(offsets.as_ptr().add(16).cast());
    let zero = _mm512_setzero_ps();
    for (r, row) in rows.enumerate() {
        let base = data.add(row);
        let out = panel.add(r * NR);
        _mm512_storeu_ps(
            out,
            _mm512_mask_i32gather_ps::<4>(zero, mask0, index0, base),
        );
        _mm512_storeu_ps(
            out.add(16),
            _mm512_mask_i32gather_ps::<4>(zero, mask1, index1, base),
        );
    }
}
