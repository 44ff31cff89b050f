//! Vector moves for packing GEMM panels on AVX-512: short copies as masked loads and stores
//! (no library call for a 14-float image row), and panel rows gathered from strided sources.

use super::microkernel::NR;
use std::arch::x86_64::*;

/// Copies `len` floats from `src` to `dst`, 16 at a time; a tail under 16 is the last 16 again
/// when there are that many, else masked.
///
/// # Safety
/// The CPU must have AVX-512F; `src` and `dst` must be valid for `len` floats.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn copy(src: *const f32, dst: *mut f32, len: usize) {
    let full = len / 16 * 16;
    for t in (0..full).step_by(16) {
        _mm512_storeu_ps(dst.add(t), _mm512_loadu_ps(src.add(t)));
    }
    if full < len && len >= 16 {
        // The last 16 again, overlapping: an unmasked store beats a masked one.
        let t = len - 16;
        _mm512_storeu_ps(dst.add(t), _mm512_loadu_ps(src.add(t)));
    } else if full < len {
        let mask = ((1u32 << (len - full)) - 1) as __mmask16;
        _mm512_mask_storeu_ps(
            dst.add(full),
            mask,
            _mm512_maskz_loadu_ps(mask, src.add(full)),
        );
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
        let high = if mask1 == 0 {
            zero // A narrow panel: no second gather.
        } else {
            _mm512_mask_i32gather_ps::<4>(zero, mask1, index1, base)
        };
        _mm512_storeu_ps(out.add(16), high);
    }
}

/// Copies runs of floats `(to, len, from)`, `dst[to..to + len] = src[row + from..][..len]`, for
/// each row of `rows` into the next NR-float row of `panel`, zeroing from `width` on.
///
/// # Safety
/// The CPU must have AVX-512F; every run must lie in `src` and within `width ≤ NR`, and `panel`
/// must hold NR floats per row.
#[target_feature(enable = "avx512f")]
pub unsafe fn copy_runs(
    src: *const f32,
    rows: &[usize],
    runs: &[(usize, usize, usize)],
    width: usize,
    panel: *mut f32,
) {
    for (r, &row) in rows.iter().enumerate() {
        let out = panel.add(r * NR);
        if width < NR {
            _mm512_storeu_ps(out, _mm512_setzero_ps());
            _mm512_storeu_ps(out.add(16), _mm512_setzero_ps());
        }
        for &(to, len, from) in runs {
            copy(src.add(row + from), out.add(to), len);
        }
    }
}

/// Copies `rows` rows of `width` floats, `src_stride` apart, to `dst_stride` apart.
///
/// # Safety
/// The CPU must have AVX-512F; both must be valid for the rows and strides given.
#[target_feature(enable = "avx512f")]
pub unsafe fn copy_rows(
    src: *const f32,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
    rows: usize,
    width: usize,
) {
    for r in 0..rows {
        copy(src.add(r * src_stride), dst.add(r * dst_stride), width);
    }
}

/// Transposes 8 rows of 16 floats (row i at `src + i·src_stride`) into 16 rows of 8 floats
/// (row p at `dst + p·dst_stride`): the packing of row-major A panels (`dst_stride` MR) and of
/// column-major B panels (`dst_stride` NR, 8 columns at a time).
///
/// Unpacking pairs of rows, then pairs of pairs, leaves each 128-bit lane L of `quad[s]` holding
/// rows 0–3 (and of `quad[4 + s]` rows 4–7) at column 4L + s; each 256-bit output row is then
/// those two lanes side by side.
///
/// # Safety
/// The CPU must have AVX-512F; `src` must be valid for 8 rows of 16 and `dst` for 16 rows of 8.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn transpose_8x16(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    let r: [__m512; 8] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * src_stride)));
    let mut quad = [_mm512_setzero_ps(); 8];
    for half in 0..2 {
        let r = &r[4 * half..];
        let lo01 = _mm512_unpacklo_ps(r[0], r[1]);
        let hi01 = _mm512_unpackhi_ps(r[0], r[1]);
        let lo23 = _mm512_unpacklo_ps(r[2], r[3]);
        let hi23 = _mm512_unpackhi_ps(r[2], r[3]);
        let (lo01, hi01) = (_mm512_castps_pd(lo01), _mm512_castps_pd(hi01));
        let (lo23, hi23) = (_mm512_castps_pd(lo23), _mm512_castps_pd(hi23));
        let q = &mut quad[4 * half..];
        q[0] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo01, lo23));
        q[1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo01, lo23));
        q[2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi01, hi23));
        q[3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi01, hi23));
    }
    for s in 0..4 {
        let (top, bottom) = (quad[s], quad[4 + s]);
        // [top L0, top L1, bottom L0, bottom L1] → [top L0, bottom L0, top L1, bottom L1].
        let low = _mm512_shuffle_f32x4::<0b01_00_01_00>(top, bottom);
        let low = _mm512_shuffle_f32x4::<0b11_01_10_00>(low, low);
        let high = _mm512_shuffle_f32x4::<0b11_10_11_10>(top, bottom);
        let high = _mm512_shuffle_f32x4::<0b11_01_10_00>(high, high);
        // Columns s, 4 + s from `low`, 8 + s, 12 + s from `high`; a masked store writes half.
        for (column, v) in [(s, low), (8 + s, high)] {
            _mm512_mask_storeu_ps(dst.add(column * dst_stride), 0x00ff, v);
            _mm512_mask_storeu_ps(dst.add((column + 4) * dst_stride).sub(8), 0xff00, v);
        }
    }
}

/// `dst[p·dst_stride + i] = src[i·src_stride + p]` for `i < rows`, `p < len`: 8 x 16 blocks in
/// registers, the edges one float at a time.
///
/// # Safety
/// The CPU must have AVX-512F; `src` and `dst` must be valid for every element named.
#[target_feature(enable = "avx512f")]
pub unsafe fn transpose(
    src: *const f32,
    src_stride: usize,
    rows: usize,
    len: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    let (full_rows, full_len) = (rows / 8 * 8, len / 16 * 16);
    for i in (0..full_rows).step_by(8) {
        for p in (0..full_len).step_by(16) {
            transpose_8x16(
                src.add(i * src_stride + p),
                src_stride,
                dst.add(p * dst_stride + i),
                dst_stride,
            );
        }
    }
    for i in 0..rows {
        let done = if i < full_rows { full_len } else { 0 };
        for p in done..len {
            *dst.add(p * dst_stride + i) = *src.add(i * src_stride + p);
        }
    }
}
