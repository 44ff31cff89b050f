//! Fully connected layers: each pass is one GEMM, split across threads by [`gemm`].

use super::gemm::{gemm, Epilogue, Layout, Matrix, A};
use crate::LinearShape;

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
    db.fill(0.0);
    if s.out_features > 0 {
        for row in dy.chunks_exact(s.out_features) {
            db.iter_mut().zip(row).for_each(|(sum, g)| *sum += g);
        }
    }
}
