//! Fully connected layers: each pass is one GEMM, split across threads by [`gemm`] (fc1's forward
//! pass turned over, see `forward_transposed`).

use super::elementwise::adam_chunk;
use super::gemm::{gemm, gemm_bands, BandSink, Epilogue, Kernel, Layout, Matrix, A};
#[cfg(target_arch = "x86_64")]
use super::{
    gemm::{gemm_a_in_place, Rows},
    scratch::{with_scratch, PARTIALS},
};
use crate::{AdamHyper, LinearShape};
use std::ops::Range;

/// x `[batch, in]`, W `[out, in]`, y `[batch, out]`.
fn layouts(s: &LinearShape) -> (Layout, Layout, Layout) {
    (
        Layout::row_major(s.batch, s.in_features),
        Layout::row_major(s.out_features, s.in_features),
        Layout::row_major(s.batch, s.out_features),
    )
}

/// y = x·Wᵀ + b, clamped at zero when `relu`: the bias and the ReLU are applied as each tile of
/// y leaves the registers, so y is written once.
pub fn forward(s: &LinearShape, x: &[f32], w: &[f32], b: &[f32], relu: bool, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::detect().reads_in_place()
        && s.batch * s.in_features * s.out_features > 0
        && s.out_features >= s.batch
        && !s.in_features.is_multiple_of(ALIASING_FLOATS)
    {
        return forward_transposed(s, x, w, b, relu, y);
    }
    let (x_layout, w_layout, y_layout) = layouts(s);
    let epilogue = Epilogue {
        col_bias: Some(b),
        relu,
        ..Epilogue::default()
    };
    let (x, w) = (Matrix::new(x, x_layout), Matrix::new(w, w_layout.t()));
    gemm(y, y_layout, A::Matrix(x), &w, epilogue);
}

pub fn backward_input(s: &LinearShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (x_layout, w_layout, y_layout) = layouts(s);
    let (dy, w) = (Matrix::new(dy, y_layout), Matrix::new(w, w_layout));
    gemm(dx, x_layout, A::Matrix(dy), &w, Epilogue::default());
}

pub fn backward_weight(s: &LinearShape, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
    let (x_layout, w_layout, y_layout) = layouts(s);
    let (dy_t, x_matrix) = (Matrix::new(dy, y_layout.t()), Matrix::new(x, x_layout));
    gemm(
        dw,
        w_layout,
        A::Matrix(dy_t),
        &x_matrix,
        Epilogue::default(),
    );
    bias_grad(s, dy, db);
}

/// db = Σ_batch dy.
fn bias_grad(s: &LinearShape, dy: &[f32], db: &mut [f32]) {
    db.fill(0.0);
    if s.out_features > 0 {
        for row in dy.chunks_exact(s.out_features) {
            db.iter_mut().zip(row).for_each(|(sum, g)| *sum += g);
        }
    }
}

/// [`backward_weight`] and then Adam's step on W, fused: each band of dW's rows is handed, while
/// in L1, to Adam ([`gemm_bands`]), which updates the same rows of W, m and v, so dW is never
/// written to memory nor read back: of Adam's pass over fc1's 3.2 M weights (g, W, m and v read,
/// three written), the gradient's write and read go. W, m and v are prefetched while each band
/// is computed. Bit for bit the results of [`backward_weight`] and then
/// [`super::elementwise::adam_update`]. W must not be read by anything after this in the step:
/// the input gradient comes first.
#[allow(clippy::too_many_arguments)] // the op's operands, and Adam's
pub fn backward_weight_adam(
    s: &LinearShape,
    x: &[f32],
    dy: &[f32],
    (hyper, scalars): (&AdamHyper, [f32; 2]),
    (w, m, v): (&mut [f32], &mut [f32], &mut [f32]),
    db: &mut [f32],
) {
    let (x_layout, _, y_layout) = layouts(s);
    let len = s.out_features * s.in_features;
    assert!(
        w.len() == len && m.len() == len && v.len() == len,
        "linear adam: lengths"
    );
    let sink = AdamRows {
        w: w.as_mut_ptr(),
        m: m.as_mut_ptr(),
        v: v.as_mut_ptr(),
        row_len: s.in_features,
        hyper: *hyper,
        scalars,
    };
    let (dy_t, x_matrix) = (Matrix::new(dy, y_layout.t()), Matrix::new(x, x_layout));
    gemm_bands(Kernel::detect(), dy_t, &x_matrix, &sink);
    bias_grad(s, dy, db);
}

/// Adam on the rows of W that a band of dW covers: W, m and v are `[out, in]` like dW.
struct AdamRows {
    w: *mut f32,
    m: *mut f32,
    v: *mut f32,
    row_len: usize,
    hyper: AdamHyper,
    scalars: [f32; 2],
}

// SAFETY: the bands handed to the threads cover disjoint elements of W, m and v.
unsafe impl Sync for AdamRows {}

impl BandSink for AdamRows {
    fn prefetch(&self, rows: Range<usize>, cols: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        for row in rows {
            for col in cols.clone().step_by(16) {
                let at = row * self.row_len + col;
                // SAFETY: (row, col) lies in W, m and v; a prefetch reads nothing.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                    for array in [self.w, self.m, self.v] {
                        _mm_prefetch::<_MM_HINT_T1>(array.add(at) as *const i8);
                    }
                }
            }
        }
    }

    fn take(&self, rows: Range<usize>, cols: Range<usize>, band: &[f32], ld: usize) {
        for (i, row) in rows.enumerate() {
            let at = row * self.row_len + cols.start;
            let grads = &band[i * ld..][..cols.len()];
            // SAFETY: the row's columns lie in W, m and v, and no other band covers them.
            let (w, m, v) = unsafe {
                (
                    std::slice::from_raw_parts_mut(self.w.add(at), cols.len()),
                    std::slice::from_raw_parts_mut(self.m.add(at), cols.len()),
                    std::slice::from_raw_parts_mut(self.v.add(at), cols.len()),
                )
            };
            adam_chunk(&self.hyper, self.scalars, w, grads, m, v);
        }
    }
}

/// Rows a multiple of this many floats (4 KB) apart fall in the same L1 sets: eight of them, read
/// side by side as an A panel in place, evict each other.
#[cfg(target_arch = "x86_64")]
const ALIASING_FLOATS: usize = 1024;

/// [`forward`] turned over where W has at least as many rows as x (fc1): yᵀ = W·xᵀ, so that W,
/// the larger operand, is read in place as A, a pointer per row, instead of transposed into
/// panels, and only x is packed; then y = relu?(yᵀᵀ + b), the bias added to the whole sum. Not
/// where W's rows are a multiple of 4 KB long (fc2): see [`ALIASING_FLOATS`].
#[cfg(target_arch = "x86_64")]
fn forward_transposed(s: &LinearShape, x: &[f32], w: &[f32], b: &[f32], relu: bool, y: &mut [f32]) {
    use rayon::prelude::*;
    let kernel = Kernel::detect();
    let (batch, out) = (s.batch, s.out_features);
    let x_t = Matrix::new(x, Layout::row_major(batch, s.in_features).t());
    with_scratch(&PARTIALS, out * batch, |y_t| {
        y_t.fill(0.0);
        let threads = rayon::current_num_threads();
        let per_part = out.div_ceil(threads).next_multiple_of(kernel.mr());
        y_t.par_chunks_mut(per_part * batch)
            .enumerate()
            .for_each(|(part, c)| {
                // This part's rows of W, one after the other.
                let w = &w[part * per_part * s.in_features..];
                let rows = Rows::Stride(s.in_features);
                gemm_a_in_place(
                    kernel,
                    c,
                    Layout::row_major(c.len() / batch, batch),
                    (w, rows),
                    &x_t,
                    true,
                );
            });
        for (n, y) in y.chunks_exact_mut(out).enumerate() {
            for (o, y) in y.iter_mut().enumerate() {
                let v = y_t[o * batch + n] + b[o];
                *y = if !relu || v > 0.0 { v } else { 0.0 };
            }
        }
    })
}
