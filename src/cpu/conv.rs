//! 2-D convolution as im2col + GEMM, images split across threads.
//!
//! Each image is unfolded into a column matrix `[in·k·k, out_h·out_w]` whose row (c, di, dj)
//! holds the pixel every output position multiplies with w[·, c, di, dj]; the convolution is then
//! one product with the weight viewed as `[out, in·k·k]`. Columns live in per-thread scratch, so
//! a step allocates nothing once the buffers have grown.

use super::matmul::{matmul, Layout};
use super::scratch::{with_scratch, COLUMNS, PARTIALS};
use crate::Conv2dShape;
use rayon::prelude::*;
use std::ops::Range;

/// The weight as a `[out, in·k·k]` matrix.
fn weight_layout(s: &Conv2dShape) -> Layout {
    Layout::row_major(s.out_channels, s.in_channels * s.kernel * s.kernel)
}

/// One image's columns: `[in·k·k, out_h·out_w]`.
fn columns_layout(s: &Conv2dShape) -> Layout {
    Layout::row_major(
        s.in_channels * s.kernel * s.kernel,
        s.out_height() * s.out_width(),
    )
}

/// One image's output: `[out, out_h·out_w]`.
fn output_layout(s: &Conv2dShape) -> Layout {
    Layout::row_major(s.out_channels, s.out_height() * s.out_width())
}

pub fn forward(s: &Conv2dShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let image_len = s.in_channels * s.height * s.width;
    let out_len = s.out_channels * s.out_height() * s.out_width();
    let columns = columns_layout(s);
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(image_len))
        .for_each(|(y, x)| {
            with_scratch(&COLUMNS, columns.rows * columns.cols, |col| {
                im2col(s, x, col);
                for (plane, &bias) in y.chunks_exact_mut(columns.cols).zip(b) {
                    plane.fill(bias);
                }
                matmul(
                    y,
                    output_layout(s),
                    true,
                    (w, weight_layout(s)),
                    (col, columns),
                );
            })
        });
}

pub fn backward_input(s: &Conv2dShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let image_len = s.in_channels * s.height * s.width;
    let out_len = s.out_channels * s.out_height() * s.out_width();
    let columns = columns_layout(s);
    dx.par_chunks_mut(image_len)
        .zip(dy.par_chunks(out_len))
        .for_each(|(dx, dy)| {
            with_scratch(&COLUMNS, columns.rows * columns.cols, |dcol| {
                matmul(
                    dcol,
                    columns,
                    false,
                    (w, weight_layout(s).t()),
                    (dy, output_layout(s)),
                );
                col2im(s, dcol, dx);
            })
        });
}

/// Each thread sums its share of the images' gradients into its own partial; the partials are
/// added at the end, so no two threads write the same memory.
pub fn backward_weight(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
    let image_len = s.in_channels * s.height * s.width;
    let out_len = s.out_channels * s.out_height() * s.out_width();
    let columns = columns_layout(s);
    let partial_len = dw.len() + db.len();
    let groups = rayon::current_num_threads().clamp(1, s.batch.max(1));
    with_scratch(&PARTIALS, groups * partial_len, |partials| {
        partials
            .par_chunks_mut(partial_len)
            .enumerate()
            .for_each(|(group, partial)| {
                let (pdw, pdb) = partial.split_at_mut(dw.len());
                pdw.fill(0.0);
                pdb.fill(0.0);
                let images = group * s.batch / groups..(group + 1) * s.batch / groups;
                with_scratch(&COLUMNS, columns.rows * columns.cols, |col| {
                    for n in images {
                        let x = &x[n * image_len..][..image_len];
                        let dy = &dy[n * out_len..][..out_len];
                        im2col(s, x, col);
                        matmul(
                            pdw,
                            weight_layout(s),
                            true,
                            (dy, output_layout(s)),
                            (col, columns.t()),
                        );
                        for (sum, plane) in pdb.iter_mut().zip(dy.chunks_exact(columns.cols)) {
                            *sum += plane.iter().sum::<f32>();
                        }
                    }
                })
            });
        let (first, rest) = partials.split_at(partial_len);
        let (dw_sum, db_sum) = first.split_at(dw.len());
        dw.copy_from_slice(dw_sum);
        db.copy_from_slice(db_sum);
        for partial in rest.chunks_exact(partial_len) {
            let (pdw, pdb) = partial.split_at(dw.len());
            dw.iter_mut().zip(pdw).for_each(|(d, p)| *d += p);
            db.iter_mut().zip(pdb).for_each(|(d, p)| *d += p);
        }
    });
}

/// The output positions along one axis whose kernel tap `tap` lands inside the input (not in the
/// padding): those o with 0 ≤ o·stride + tap − padding < size.
fn inside(s: &Conv2dShape, size: usize, outputs: usize, tap: usize) -> Range<usize> {
    let first = s.padding.saturating_sub(tap).div_ceil(s.stride);
    let end = match (size + s.padding).checked_sub(tap + 1) {
        Some(last_reach) => (last_reach / s.stride + 1).min(outputs),
        None => 0,
    };
    first.min(end)..end
}

/// Unfolds one image `[in, h, w]` into its columns `[in·k·k, out_h·out_w]`.
fn im2col(s: &Conv2dShape, image: &[f32], col: &mut [f32]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let mut rows = col.chunks_exact_mut(oh * ow);
    for channel in image.chunks_exact(s.height * s.width) {
        for di in 0..s.kernel {
            let valid_rows = inside(s, s.height, oh, di);
            for dj in 0..s.kernel {
                let valid_cols = inside(s, s.width, ow, dj);
                let row = rows.next().expect("columns hold in·k·k rows");
                for (i, out) in row.chunks_exact_mut(ow).enumerate() {
                    if !valid_rows.contains(&i) {
                        out.fill(0.0);
                        continue;
                    }
                    let input = &channel[(i * s.stride + di - s.padding) * s.width..][..s.width];
                    out[..valid_cols.start].fill(0.0);
                    out[valid_cols.end..].fill(0.0);
                    let start = valid_cols.start * s.stride + dj - s.padding;
                    let inner = &mut out[valid_cols.clone()];
                    if s.stride == 1 {
                        inner.copy_from_slice(&input[start..][..inner.len()]);
                    } else {
                        for (o, &v) in inner
                            .iter_mut()
                            .zip(input[start..].iter().step_by(s.stride))
                        {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the pixel it was copied from.
fn col2im(s: &Conv2dShape, col: &[f32], image: &mut [f32]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    image.fill(0.0);
    let mut rows = col.chunks_exact(oh * ow);
    for channel in image.chunks_exact_mut(s.height * s.width) {
        for di in 0..s.kernel {
            let valid_rows = inside(s, s.height, oh, di);
            for dj in 0..s.kernel {
                let valid_cols = inside(s, s.width, ow, dj);
                let row = rows.next().expect("columns hold in·k·k rows");
                for i in valid_rows.clone() {
                    let out = &row[i * ow..][valid_cols.clone()];
                    let input =
                        &mut channel[(i * s.stride + di - s.padding) * s.width..][..s.width];
                    let start = valid_cols.start * s.stride + dj - s.padding;
                    for (pixel, &g) in input[start..].iter_mut().step_by(s.stride).zip(out) {
                        *pixel += g;
                    }
                }
            }
        }
    }
}
