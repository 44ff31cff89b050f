//! Vector moves for packing GEMM panels: short copies as whole vectors (no library call for a
//! 14-float image row), panel rows gathered from strided sources, and transposes in registers.
//!
//! Each move has an AVX-512 version (`avx512`) and an AVX2 one (`avx2`); the functions at the
//! top pick the one for the kernel whose panels they fill, so that forcing a kernel forces its
//! packing too. The portable kernel has none: its callers copy with plain loops.

use super::gemm::Kernel;
use super::microkernel::NR;

/// The moves of `kernel`, or None for the portable one.
fn moves(kernel: Kernel) -> Option<Kernel> {
    matches!(kernel, Kernel::Avx512 | Kernel::Avx2Fma).then_some(kernel)
}

/// Whether `kernel` has vector moves to pack with.
pub fn has_moves(kernel: Kernel) -> bool {
    moves(kernel).is_some()
}

/// Copies `rows` rows of `width` floats, `src_stride` apart, to `dst_stride` apart.
///
/// # Safety
/// `kernel` must have moves ([`has_moves`]) and the CPU must run it; both pointers must be
/// valid for the rows and strides given.
pub unsafe fn copy_rows(
    kernel: Kernel,
    src: *const f32,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
    rows: usize,
    width: usize,
) {
    match moves(kernel) {
        Some(Kernel::Avx512) => avx512::copy_rows(src, src_stride, dst, dst_stride, rows, width),
        _ => avx2::copy_rows(src, src_stride, dst, dst_stride, rows, width),
    }
}

/// Copies runs of floats `(to, len, from)`, `dst[to..to + len] = src[row + from..][..len]`, for
/// each row of `rows` into the next NR-float row of `panel`, zeroing from `width` on.
///
/// # Safety
/// As [`copy_rows`]; every run must lie in `src` and within `width ≤ NR`, and `panel` must hold
/// NR floats per row.
pub unsafe fn copy_runs(
    kernel: Kernel,
    src: *const f32,
    rows: &[usize],
    runs: &[(usize, usize, usize)],
    width: usize,
    panel: *mut f32,
) {
    match moves(kernel) {
        Some(Kernel::Avx512) => avx512::copy_runs(src, rows, runs, width, panel),
        _ => avx2::copy_runs(src, rows, runs, width, panel),
    }
}

/// `dst[p·dst_stride + i] = src[i·src_stride + p]` for `i < rows`, `p < len`: blocks in
/// registers, the edges one float at a time. Where `rows` is short of a block, the block's
/// missing rows are written as zeros past `rows` in a destination row (or at the start of the
/// next, written again later), so every destination row's floats from `rows` up to the next
/// multiple of 8, up to `dst_stride`, must be padding that is zero.
///
/// # Safety
/// As [`copy_rows`], for every element named.
pub unsafe fn transpose(
    kernel: Kernel,
    src: *const f32,
    src_stride: usize,
    rows: usize,
    len: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    match moves(kernel) {
        Some(Kernel::Avx512) => avx512::transpose(src, src_stride, rows, len, dst, dst_stride),
        _ => avx2::transpose(src, src_stride, rows, len, dst, dst_stride),
    }
}

pub use avx512::gather;

mod avx512 {
    use super::NR;
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
        let mask =
            |from: usize| ((1u32 << cols.len().saturating_sub(from).min(16)) - 1) as __mmask16;
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
    pub unsafe fn transpose_8x16(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
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
}

mod avx2 {
    use super::NR;
    use std::arch::x86_64::*;

    /// Copies `len` floats from `src` to `dst`, 8 at a time; a tail under 8 is the last 8 again
    /// when there are that many, else one float at a time (AMD's masked stores are slow).
    ///
    /// # Safety
    /// The CPU must have AVX2; `src` and `dst` must be valid for `len` floats.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn copy(src: *const f32, dst: *mut f32, len: usize) {
        let full = len / 8 * 8;
        for t in (0..full).step_by(8) {
            _mm256_storeu_ps(dst.add(t), _mm256_loadu_ps(src.add(t)));
        }
        if full < len && len >= 8 {
            let t = len - 8;
            _mm256_storeu_ps(dst.add(t), _mm256_loadu_ps(src.add(t)));
        } else {
            for t in full..len {
                *dst.add(t) = *src.add(t);
            }
        }
    }

    /// See [`super::copy_rows`].
    #[target_feature(enable = "avx2")]
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

    /// See [`super::copy_runs`].
    #[target_feature(enable = "avx2")]
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
                for t in (0..NR).step_by(8) {
                    _mm256_storeu_ps(out.add(t), _mm256_setzero_ps());
                }
            }
            for &(to, len, from) in runs {
                copy(src.add(row + from), out.add(to), len);
            }
        }
    }

    /// Transposes `height ≤ 8` rows of 8 floats (row i at `src + i·src_stride`) into 8 rows of
    /// 8 (row p at `dst + p·dst_stride`), rows from `height` on read as zeros.
    ///
    /// Unpacking pairs of rows leaves (r0 r1 interleaved) in each 128-bit lane; shuffling pairs
    /// of those gathers four rows' column c (lane 0) and c + 4 (lane 1) in `quad[c]`; the two
    /// 128-bit lanes of rows 0–3 and 4–7 then make each output row.
    ///
    /// # Safety
    /// The CPU must have AVX2; `src` valid for `height` rows of 8 and `dst` for 8 rows of 8.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn transpose_8x8(
        src: *const f32,
        src_stride: usize,
        height: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        let r: [__m256; 8] = std::array::from_fn(|i| match i < height {
            true => _mm256_loadu_ps(src.add(i * src_stride)),
            false => _mm256_setzero_ps(),
        });
        let mut quad = [_mm256_setzero_ps(); 8];
        for half in 0..2 {
            let r = &r[4 * half..];
            let lo01 = _mm256_unpacklo_ps(r[0], r[1]);
            let hi01 = _mm256_unpackhi_ps(r[0], r[1]);
            let lo23 = _mm256_unpacklo_ps(r[2], r[3]);
            let hi23 = _mm256_unpackhi_ps(r[2], r[3]);
            let q = &mut quad[4 * half..];
            q[0] = _mm256_shuffle_ps::<0b01_00_01_00>(lo01, lo23);
            q[1] = _mm256_shuffle_ps::<0b11_10_11_10>(lo01, lo23);
            q[2] = _mm256_shuffle_ps::<0b01_00_01_00>(hi01, hi23);
            q[3] = _mm256_shuffle_ps::<0b11_10_11_10>(hi01, hi23);
        }
        // In order of p, so that a row's spill past the height is written over by the next.
        for p in 0..8 {
            let (top, bottom) = (quad[p % 4], quad[4 + p % 4]);
            let row = match p < 4 {
                true => _mm256_permute2f128_ps::<0x20>(top, bottom),
                false => _mm256_permute2f128_ps::<0x31>(top, bottom),
            };
            _mm256_storeu_ps(dst.add(p * dst_stride), row);
        }
    }

    /// See [`super::transpose`]: 8 x 8 blocks, a short last block of rows with zeros; the
    /// block's last destination row goes through a buffer where its 8 floats would run past the
    /// destination's last element, or back over a row's floats written by the block before.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose(
        src: *const f32,
        src_stride: usize,
        rows: usize,
        len: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        let full_len = len / 8 * 8;
        let extent = (len.max(1) - 1) * dst_stride + rows;
        for i in (0..rows).step_by(8) {
            let height = (rows - i).min(8);
            // The 8-float stores of a destination row stay in it, or spill only into the
            // start of the next, which no block has written yet.
            let spills_safely = i + 8 <= dst_stride || i == 0;
            for p in (0..full_len).step_by(8) {
                let (src, dst_at) = (src.add(i * src_stride + p), p * dst_stride + i);
                if spills_safely && dst_at + 7 * dst_stride + 8 <= extent {
                    transpose_8x8(src, src_stride, height, dst.add(dst_at), dst_stride);
                } else {
                    let mut block = [0.0f32; 64];
                    transpose_8x8(src, src_stride, height, block.as_mut_ptr(), 8);
                    for (q, row) in block.chunks_exact(8).enumerate() {
                        let out = dst.add(dst_at + q * dst_stride);
                        std::ptr::copy_nonoverlapping(row.as_ptr(), out, height);
                    }
                }
            }
        }
        for i in 0..rows {
            for p in full_len..len {
                *dst.add(p * dst_stride + i) = *src.add(i * src_stride + p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel with moves, against plain loops: transposes of every height up to a panel's
    /// and odd lengths into destinations as wide as the height or wider, their padding zero, and
    /// copies of every length, with the floats around the destination untouched.
    #[test]
    fn moves_match_plain_loops() {
        let kernels = Kernel::available().into_iter().filter(|&k| has_moves(k));
        for kernel in kernels {
            for rows in 1..=NR {
                for len in [1, 7, 8, 9, 16, 23, 40] {
                    for dst_stride in [rows, rows.next_multiple_of(8), NR] {
                        let (src_stride, guard) = (len + 3, 5);
                        let src: Vec<f32> = (0..rows * src_stride).map(|v| v as f32).collect();
                        let size = (len - 1) * dst_stride + rows;
                        let mut dst = vec![0.0; size + guard];
                        dst[size..].fill(-1.0);
                        // SAFETY: the kernel runs here; both buffers hold what is named.
                        unsafe {
                            let out = dst.as_mut_ptr();
                            transpose(kernel, src.as_ptr(), src_stride, rows, len, out, dst_stride)
                        };
                        for p in 0..len {
                            for j in 0..dst_stride.min(size - p * dst_stride) {
                                let want = if j < rows {
                                    src[j * src_stride + p]
                                } else {
                                    0.0
                                };
                                let at = format!("{kernel:?} rows {rows} len {len} stride {dst_stride}: ({p}, {j})");
                                assert_eq!(dst[p * dst_stride + j], want, "{at}");
                            }
                        }
                        assert!(
                            dst[size..].iter().all(|&v| v == -1.0),
                            "{kernel:?} past the end"
                        );
                    }
                }
            }
            for width in 0..=40 {
                let src: Vec<f32> = (0..3 * 41).map(|v| v as f32).collect();
                let mut dst = vec![-1.0; 3 * 44];
                // SAFETY: as above.
                unsafe { copy_rows(kernel, src.as_ptr(), 41, dst.as_mut_ptr(), 44, 3, width) };
                for (r, row) in dst.chunks_exact(44).enumerate() {
                    assert_eq!(
                        &row[..width],
                        &src[r * 41..][..width],
                        "{kernel:?} width {width}"
                    );
                    assert!(
                        row[width..].iter().all(|&v| v == -1.0),
                        "{kernel:?} width {width}"
                    );
                }
            }
        }
    }
}
