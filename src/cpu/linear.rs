//! Fully connected layers: each pass is one GEMM, split across threads by [`matmul`].

use super::matmul::{matmul, Layout};
use crate::LinearShape;

/// x `[batch, in]`, W `[out, in]`, y `[batch, out]`.
fn layouts(s: &LinearShape) -> (Layout, Layout, Layout) {
    (
        Layout::row_major(s.batch, s.in_features),
        Layout::row_major(s.out_features, s.in_features),
        Layout::row_major(s.batch, s.out_features),
    )
}

pub fn forward(s: &LinearShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let (x_layout, w_layout, y_layout) = layouts(s);
    if s.out_features > 0 {
        for row in y.chunks_exact_mut(s.out_features) {
            row.copy_from_slice(b);
        }
    }
    matmul(y, y_layout, true, (x, x_layout), (w, w_layout.t()));
}

pub fn backward_input(s: &LinearShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (x_layout, w_layout, y_layout) = layouts(s);
    matmul(dx, x_layout, false, (dy, y_layout), (w, w_layout));
}

pub fn backward_weight(s: &LinearShape, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
    let (x_layout, w_layout, y_layout) = layouts(s);
    matmul(dw, w_layout, false, (dy, y_layout.t()), (x, x_layout));
    db.fill(0.0);
    if s.out_features > 0 {
        for row in dy.chunks_exact(s.out_features) {
            db.iter_mut().zip(row).for_each(|(sum, g)| *sum += g);
        }
    }
}
