//! Convolutions too shallow for a GEMM: at most [`MAX_TAPS`] taps (in·k·k), stride 1, computed
//! straight from the zero-padded image with AVX-512 (16 lanes, 32 registers) or AVX2 (8 lanes,
//! 16 registers).
//!
//! conv1 has one input channel and a 3x3 kernel: its product has a depth of 9, so every 8x32
//! GEMM tile would load and store its 16 accumulators for nine steps of FMAs, and its patches
//! would be packed for almost no use. Here instead, for 16 output positions of one row, the nine
//! shifted input vectors stay in registers and every output channel is nine FMAs on them:
//!
//! ```text
//! y[o, oy, ox..ox+16] = b[o] + Σ_t w[o, t] · padded[taps[t] + oy·pw + ox..][..16]
//! ```
//!
//! where tap t = (c, di, dj) lies at `taps[t] = c·ph·pw + di·pw + dj` in the padded image. The
//! weight gradient is the same sum the other way round: each tap's shifted vector times the
//! output gradient, summed over positions and images, in registers until the images are done.
//! Shapes with fewer taps run as nine, the extra ones with a zero weight (forward) or a sum that
//! is dropped (weight gradient). The AVX2 code is the same loops at half the width, with the
//! blocks of channels cut to what 16 registers hold.

use super::conv::{self, pad, padded_len, sum_per_thread};
use super::gemm::Kernel;
use super::scratch::{with_scratch, COLUMNS};
use crate::Conv2dShape;
use std::arch::x86_64::*;

/// The most taps a shallow convolution has: one input channel under a 3x3 kernel.
pub const MAX_TAPS: usize = 9;

/// Whether [`Shallow`] and [`ShallowGrad`] take this shape on this kernel.
pub fn applies(kernel: Kernel, s: &Conv2dShape) -> bool {
    matches!(kernel, Kernel::Avx512 | Kernel::Avx2Fma)
        && s.stride == 1
        && s.in_channels * s.kernel * s.kernel <= MAX_TAPS
        && s.out_width() > 0
        && s.out_height() > 0
}

/// Offsets of the taps in the padded image, padded to [`MAX_TAPS`] with tap 0 (always a valid
/// offset) for the taps a shape lacks.
fn tap_offsets(s: &Conv2dShape) -> ([usize; MAX_TAPS], usize) {
    let taps = conv::tap_offsets(s);
    let mut offsets = [0; MAX_TAPS];
    offsets[..taps.len()].copy_from_slice(&taps);
    (offsets, taps.len())
}

/// Where the 16-wide vectors of an output row start: every 16, then (rows of at least 16) the
/// last 16 again, overlapping, so that only rows under 16 need a mask.
fn row_vectors(ow: usize) -> impl Iterator<Item = (usize, __mmask16)> {
    let full = ow / 16 * 16;
    let tail = match ow - full {
        0 => None,
        _ if ow >= 16 => Some((ow - 16, 0xffff)),
        rest => Some((0, ((1u32 << rest) - 1) as __mmask16)),
    };
    (0..full).step_by(16).map(|x| (x, 0xffff)).chain(tail)
}

/// The weight as `[out, MAX_TAPS]`, zero past the shape's taps.
fn weight_rows(s: &Conv2dShape, w: &[f32], taps: usize) -> Vec<[f32; MAX_TAPS]> {
    let mut rows = vec![[0.0; MAX_TAPS]; s.out_channels];
    for (row, w) in rows.iter_mut().zip(w.chunks_exact(taps)) {
        row[..taps].copy_from_slice(w);
    }
    rows
}

/// Output channels computed together: eight independent chains of FMAs keep both FMA units busy.
const OUT_BLOCK: usize = 8;

/// A shallow convolution's weight and tap offsets, prepared once for all its images.
pub struct Shallow<'a> {
    s: &'a Conv2dShape,
    kernel: Kernel,
    offsets: [usize; MAX_TAPS],
    w: Vec<[f32; MAX_TAPS]>,
    b: &'a [f32],
}

impl<'a> Shallow<'a> {
    /// For a shape [`applies`] takes on `kernel`.
    pub fn new(kernel: Kernel, s: &'a Conv2dShape, w: &[f32], b: &'a [f32]) -> Self {
        let (offsets, taps) = tap_offsets(s);
        Shallow {
            s,
            kernel,
            offsets,
            w: weight_rows(s, w, taps),
            b,
        }
    }

    /// One image `[in, h, w]` into its output `[out, out_h, out_w]`: y = w ∗ x + b.
    pub fn image(&self, x: &[f32], y: &mut [f32]) {
        let s = self.s;
        let (oh, ow) = (s.out_height(), s.out_width());
        let plane = oh * ow;
        let pw = s.width + 2 * s.padding;
        with_scratch(&COLUMNS, padded_len(s), |padded| {
            pad(self.kernel, s, x, padded);
            if self.kernel == Kernel::Avx2Fma {
                // SAFETY: the CPU has AVX2 and FMA (`applies`).
                return unsafe { self.image_avx2(padded, y) };
            }
            // A block of channels at a time, row after row: its planes are written as a few
            // sequential streams, and the input taps are reloaded from L1 per block.
            for block in (0..s.out_channels).step_by(OUT_BLOCK) {
                // A short last block repeats its last channel: same value, same place.
                let o = std::array::from_fn(|i| (block + i).min(s.out_channels - 1));
                for oy in 0..oh {
                    for (ox, mask) in row_vectors(ow) {
                        let at = oy * pw + ox;
                        let first = oy * ow + ox;
                        // SAFETY: the CPU has AVX-512F (`applies`); the lanes `mask` keeps are
                        // output positions of this row, whose taps lie in the padded image and
                        // whose outputs lie in this image's channels.
                        unsafe {
                            let inputs = load_taps(padded[at..].as_ptr(), &self.offsets, mask);
                            let y = y[first..].as_mut_ptr();
                            forward_vector(&inputs, &self.w, self.b, o, y, plane, mask);
                        }
                    }
                }
            }
        })
    }

    /// [`Shallow::image`]'s loops on AVX2, from the padded image: eight channels at a time,
    /// each tap's input vector loaded once and multiplied into all eight (8 accumulators, the
    /// input and a broadcast: 10 of the 16 registers). The block's weights and the tap offsets
    /// are copied to the stack first, so that the loop over taps, unrolled, broadcasts from
    /// fixed addresses instead of reloading nine pointers.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `padded` is the padded image and `y` the image's output.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn image_avx2(&self, padded: &[f32], y: &mut [f32]) {
        let s = self.s;
        let (oh, ow) = (s.out_height(), s.out_width());
        let plane = oh * ow;
        let pw = s.width + 2 * s.padding;
        let offsets = self.offsets;
        for block in (0..s.out_channels).step_by(OUT_BLOCK) {
            let o: [usize; OUT_BLOCK] =
                std::array::from_fn(|i| (block + i).min(s.out_channels - 1));
            let w: [[f32; OUT_BLOCK]; MAX_TAPS] = std::array::from_fn(|t| o.map(|o| self.w[o][t]));
            let bias = o.map(|o| self.b[o]);
            // The eight channels' sums for the output vector whose taps `load` reads.
            let sums = |load: &dyn Fn(usize) -> __m256| {
                let mut acc = bias.map(|b| _mm256_set1_ps(b));
                for (w, &offset) in w.iter().zip(&offsets) {
                    let input = load(offset);
                    for (acc, &w) in acc.iter_mut().zip(w) {
                        *acc = _mm256_fmadd_ps(_mm256_set1_ps(w), input, *acc);
                    }
                }
                acc
            };
            for oy in 0..oh {
                for (ox, width) in row_vectors_avx2(ow) {
                    let mask = lane_mask(width);
                    let at = padded[oy * pw + ox..].as_ptr();
                    // The lanes `width` keeps are output positions of this row, whose taps lie
                    // in the padded image.
                    let acc = if width == 8 {
                        sums(&|offset| _mm256_loadu_ps(at.add(offset)))
                    } else {
                        sums(&|offset| _mm256_maskload_ps(at.add(offset), mask))
                    };
                    for (acc, &o) in acc.iter().zip(&o) {
                        let y = y[o * plane + oy * ow + ox..].as_mut_ptr();
                        store_lanes(y, *acc, width, mask);
                        _mm_prefetch::<_MM_HINT_ET0>(y.wrapping_add(OUT_BLOCK * plane).cast());
                    }
                }
            }
        }
    }
}

/// [`row_vectors`] for 8 lanes: where each vector starts and how many of its lanes are kept.
fn row_vectors_avx2(ow: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = ow / 8 * 8;
    let tail = match ow - full {
        0 => None,
        _ if ow >= 8 => Some((ow - 8, 8)),
        rest => Some((0, rest)),
    };
    (0..full).step_by(8).map(|x| (x, 8)).chain(tail)
}

/// The mask of AVX2's masked moves that keeps the first `width` of 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn lane_mask(width: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(width as i32), lanes)
}

/// Stores the first `width` lanes of `v` at `dst` (AMD's masked stores are slow: a whole
/// vector is a plain store).
///
/// # Safety
/// The CPU must have AVX2; `dst` must be valid for `width` floats.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_lanes(dst: *mut f32, v: __m256, width: usize, mask: __m256i) {
    if width == 8 {
        _mm256_storeu_ps(dst, v)
    } else {
        _mm256_maskstore_ps(dst, mask, v)
    }
}

/// The nine shifted input vectors under one output vector, zero in the lanes `mask` drops
/// (which are not read).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_taps(
    at: *const f32,
    offsets: &[usize; MAX_TAPS],
    mask: __mmask16,
) -> [__m512; MAX_TAPS] {
    offsets.map(|offset| _mm512_maskz_loadu_ps(mask, at.add(offset)))
}

/// One output vector of the channels `o`: `y[o·plane..][..16]`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn forward_vector(
    inputs: &[__m512; MAX_TAPS],
    w: &[[f32; MAX_TAPS]],
    b: &[f32],
    o: [usize; OUT_BLOCK],
    y: *mut f32,
    plane: usize,
    mask: __mmask16,
) {
    let mut acc = o.map(|o| _mm512_set1_ps(b[o]));
    for (t, &input) in inputs.iter().enumerate() {
        for (acc, &o) in acc.iter_mut().zip(&o) {
            *acc = _mm512_fmadd_ps(_mm512_set1_ps(w[o][t]), input, *acc);
        }
    }
    for (acc, &o) in acc.iter().zip(&o) {
        let y = y.add(o * plane);
        _mm512_mask_storeu_ps(y, mask, *acc);
        // The next block's output, at the same place, fetched for writing: short planes leave
        // the hardware prefetcher too little time to find them.
        _mm_prefetch::<_MM_HINT_ET0>(y.wrapping_add(OUT_BLOCK * plane).cast());
    }
}

/// Output channels whose tap sums are held in registers at once on AVX-512: 2 x 9 sums, 2 bias
/// sums, 9 inputs and 2 output gradients fill 31 of the 32 vector registers. On AVX2 one channel:
/// 10 sums, the gradient and an input.
const GRAD_BLOCK: usize = 2;

/// The weight gradient of a shallow convolution, summed image by image:
/// `dw[o, t] = Σ_{n,oy,ox} dy[n, o, oy, ox]·padded_n[taps[t] + oy·pw + ox]` and `db[o] = Σ dy`.
pub struct ShallowGrad<'a> {
    s: &'a Conv2dShape,
    kernel: Kernel,
    offsets: [usize; MAX_TAPS],
    taps: usize,
    /// Lanes of a vector, and channels summed together.
    lanes: usize,
    block: usize,
}

impl<'a> ShallowGrad<'a> {
    /// For a shape [`applies`] takes on `kernel`.
    pub fn new(kernel: Kernel, s: &'a Conv2dShape) -> Self {
        let (offsets, taps) = tap_offsets(s);
        let (lanes, block) = match kernel {
            Kernel::Avx2Fma => (8, 1),
            _ => (16, GRAD_BLOCK),
        };
        ShallowGrad {
            s,
            kernel,
            offsets,
            taps,
            lanes,
            block,
        }
    }

    /// Per channel: MAX_TAPS + 1 vectors of sums (the taps', then the bias's).
    fn channel_sums(&self) -> usize {
        (MAX_TAPS + 1) * self.lanes
    }

    fn sums_len(&self) -> usize {
        self.s.out_channels.div_ceil(self.block) * self.block * self.channel_sums()
    }

    /// Splits the images into one run per thread, has `add` sum each run into its thread's
    /// sums (zeroed first), then writes dw and db: the lanes of each thread's sums, the threads
    /// added in order.
    pub fn sum_images(
        &self,
        dw: &mut [f32],
        db: &mut [f32],
        add: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
    ) {
        let (s, sums_len) = (self.s, self.sums_len());
        sum_per_thread(s.batch, sums_len, add, |partials| {
            dw.fill(0.0);
            db.fill(0.0);
            let width = self.lanes;
            for sums in partials.chunks_exact(sums_len) {
                // Channels past the last are the repeats of a short block.
                let channels = sums.chunks_exact(self.channel_sums()).take(s.out_channels);
                for (o, sums) in channels.enumerate() {
                    let lanes = |t: usize| sums[t * width..][..width].iter().sum::<f32>();
                    for t in 0..self.taps {
                        dw[o * self.taps + t] += lanes(t);
                    }
                    db[o] += lanes(MAX_TAPS);
                }
            }
        });
    }

    /// Adds one image's gradient, x `[in, h, w]` and dy `[out, out_h, out_w]`, to `sums`.
    pub fn add_image(&self, x: &[f32], dy: &[f32], sums: &mut [f32]) {
        let s = self.s;
        let plane = s.out_height() * s.out_width();
        with_scratch(&COLUMNS, padded_len(s), |padded| {
            pad(self.kernel, s, x, padded);
            if self.kernel == Kernel::Avx2Fma {
                let channels = sums.chunks_exact_mut(self.channel_sums());
                for (dy, sums) in dy.chunks_exact(plane).zip(channels) {
                    // SAFETY: the CPU has AVX2 and FMA (`applies`); reads are masked to the
                    // output positions of each row, and `sums` holds one channel's.
                    unsafe { grad_channel_avx2(s, padded.as_ptr(), &self.offsets, dy, sums) };
                }
                return;
            }
            let block_sums = GRAD_BLOCK * self.channel_sums();
            for (block, sums) in sums.chunks_exact_mut(block_sums).enumerate() {
                let o = std::array::from_fn(|i| (block * GRAD_BLOCK + i).min(s.out_channels - 1));
                // SAFETY: the CPU has AVX-512F (`applies`); reads are masked to the output
                // positions of each row (as in `Shallow::image`), and `sums` holds one block.
                unsafe {
                    let dy = o.map(|o| dy[o * plane..].as_ptr());
                    grad_block(s, padded.as_ptr(), &self.offsets, dy, sums);
                }
            }
        })
    }
}

/// One image's contribution to one block of channels' sums: `sums` holds, per channel, the
/// MAX_TAPS tap sums then the bias sum, 16 lanes each.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn grad_block(
    s: &Conv2dShape,
    padded: *const f32,
    offsets: &[usize; MAX_TAPS],
    dy: [*const f32; GRAD_BLOCK],
    sums: &mut [f32],
) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let pw = s.width + 2 * s.padding;
    let ahead = GRAD_BLOCK * oh * ow;
    let stride = (MAX_TAPS + 1) * 16;
    let mut acc: [[__m512; MAX_TAPS + 1]; GRAD_BLOCK] = std::array::from_fn(|i| {
        std::array::from_fn(|t| _mm512_loadu_ps(sums[i * stride + t * 16..].as_ptr()))
    });
    let full = ow / 16 * 16;
    for oy in 0..oh {
        // Every vector of the row once: the tail masked, so that no position counts twice.
        let vectors = (0..full).step_by(16).map(|x| (x, 0xffff));
        let tail = (full < ow).then(|| (full, ((1u32 << (ow - full)) - 1) as __mmask16));
        for (ox, mask) in vectors.chain(tail) {
            let inputs = load_taps(padded.add(oy * pw + ox), offsets, mask);
            let at = oy * ow + ox;
            let grads = dy.map(|dy| _mm512_maskz_loadu_ps(mask, dy.add(at)));
            // The next block's output gradient, at the same place: short planes leave the
            // hardware prefetcher too little time to find them.
            for dy in dy {
                _mm_prefetch::<_MM_HINT_T0>(dy.wrapping_add(at + ahead).cast());
            }
            for (acc, &grad) in acc.iter_mut().zip(&grads) {
                for (acc, &input) in acc.iter_mut().zip(&inputs) {
                    *acc = _mm512_fmadd_ps(grad, input, *acc);
                }
                acc[MAX_TAPS] = _mm512_add_ps(acc[MAX_TAPS], grad);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (t, &sum) in acc.iter().enumerate() {
            _mm512_storeu_ps(sums[i * stride + t * 16..].as_mut_ptr(), sum);
        }
    }
}

/// [`grad_block`] on AVX2 for one channel: `sums` holds its MAX_TAPS tap sums then its bias
/// sum, 8 lanes each; `dy` is its output gradient plane.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_channel_avx2(
    s: &Conv2dShape,
    padded: *const f32,
    offsets: &[usize; MAX_TAPS],
    dy: &[f32],
    sums: &mut [f32],
) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let pw = s.width + 2 * s.padding;
    let mut acc: [__m256; MAX_TAPS + 1] =
        std::array::from_fn(|t| _mm256_loadu_ps(sums[t * 8..].as_ptr()));
    let offsets = *offsets;
    // One vector's products, its taps read by `load`.
    let mut add = |grad: __m256, load: &dyn Fn(usize) -> __m256| {
        for (acc, &offset) in acc.iter_mut().zip(&offsets) {
            *acc = _mm256_fmadd_ps(grad, load(offset), *acc);
        }
        acc[MAX_TAPS] = _mm256_add_ps(acc[MAX_TAPS], grad);
    };
    let full = ow / 8 * 8;
    let tail_mask = lane_mask(ow - full);
    for oy in 0..oh {
        let (at, dy) = (padded.add(oy * pw), dy[oy * ow..].as_ptr());
        for ox in (0..full).step_by(8) {
            let grad = _mm256_loadu_ps(dy.add(ox));
            add(grad, &|offset| _mm256_loadu_ps(at.add(ox + offset)));
        }
        // The tail masked, so that no position counts twice.
        if full < ow {
            let grad = _mm256_maskload_ps(dy.add(full), tail_mask);
            add(grad, &|offset| {
                _mm256_maskload_ps(at.add(full + offset), tail_mask)
            });
        }
    }
    for (t, &sum) in acc.iter().enumerate() {
        _mm256_storeu_ps(sums[t * 8..].as_mut_ptr(), sum);
    }
}
