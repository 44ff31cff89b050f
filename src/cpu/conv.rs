//! 2-D convolution as im2col + GEMM, images split across threads.
//!
//! Each image is unfolded into a column matrix `[in·k·k, out_h·out_w]` whose row (c, di, dj)
//! holds the pixel every output position multiplies with w[·, c, di, dj]; the convolution is then
//! one product with the weight viewed as `[out, in·k·k]`. Columns live in per-thread scratch that
//! grows once, so the ops allocate nothing per step (the gemm crate still allocates its packing
//! buffers inside each product).

use super::matmul::{matmul, Layout};
use super::scratch::{with_scratch, COLUMNS, PARTIALS};
use crate::{reference, Conv2dShape};
use rayon::prelude::*;

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

/// A shape with a zero extent has no images to split; the reference loops cover it.
fn degenerate(s: &Conv2dShape) -> bool {
    s.input_len() == 0 || s.output_len() == 0
}

pub fn forward(s: &Conv2dShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    if degenerate(s) {
        return reference::conv2d_forward(s, x, w, b, y);
    }
    let image_len = s.in_channels * s.height * s.width;
    let out_len = s.out_channels * s.out_height() * s.out_width();
    let columns = columns_layout(s);
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(image_len))
        .for_each(|(y, x)| {
            with_scratch(&COLUMNS, unfold_len(s), |scratch| {
                let (padded, col) = split_scratch(s, scratch);
                im2col(s, x, padded, col);
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
    if degenerate(s) {
        return reference::conv2d_backward_input(s, w, dy, dx);
    }
    let image_len = s.in_channels * s.height * s.width;
    let out_len = s.out_channels * s.out_height() * s.out_width();
    let columns = columns_layout(s);
    dx.par_chunks_mut(image_len)
        .zip(dy.par_chunks(out_len))
        .for_each(|(dx, dy)| {
            with_scratch(&COLUMNS, unfold_len(s), |scratch| {
                let (padded, dcol) = split_scratch(s, scratch);
                matmul(
                    dcol,
                    columns,
                    false,
                    (w, weight_layout(s).t()),
                    (dy, output_layout(s)),
                );
                col2im(s, dcol, padded, dx);
            })
        });
}

/// Each thread sums its share of the images' gradients into its own partial; the partials are
/// added at the end, so no two threads write the same memory.
pub fn backward_weight(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
    if degenerate(s) {
        return reference::conv2d_backward_weight(s, x, dy, dw, db);
    }
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
                with_scratch(&COLUMNS, unfold_len(s), |scratch| {
                    let (padded, col) = split_scratch(s, scratch);
                    for n in images {
                        let x = &x[n * image_len..][..image_len];
                        let dy = &dy[n * out_len..][..out_len];
                        im2col(s, x, padded, col);
                        matmul(
                            pdw,
                            weight_layout(s),
                            true,
                            (dy, output_layout(s)),
                            (&*col, columns.t()),
                        );
                        for (sum, plane) in pdb.iter_mut().zip(dy.chunks_exact(columns.cols)) {
                            *sum += sum_of(plane);
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

/// Scratch floats per image: a zero-padded copy of the image, then its columns.
fn unfold_len(s: &Conv2dShape) -> usize {
    padded_len(s) + s.in_channels * s.kernel * s.kernel * s.out_height() * s.out_width()
}

fn padded_len(s: &Conv2dShape) -> usize {
    s.in_channels * (s.height + 2 * s.padding) * (s.width + 2 * s.padding)
}

/// Splits [`unfold_len`] floats of scratch into the padded image and the columns.
fn split_scratch<'a>(s: &Conv2dShape, scratch: &'a mut [f32]) -> (&'a mut [f32], &'a mut [f32]) {
    scratch.split_at_mut(padded_len(s))
}

/// Unfolds one image `[in, h, w]` into its columns `[in·k·k, out_h·out_w]`. Copying through a
/// zero-padded image first leaves the loops no bounds to check: every tap of every output
/// position lands inside the padded image.
fn im2col(s: &Conv2dShape, image: &[f32], padded: &mut [f32], col: &mut [f32]) {
    let (ph, pw) = (s.height + 2 * s.padding, s.width + 2 * s.padding);
    padded.fill(0.0);
    let planes = padded
        .chunks_exact_mut(ph * pw)
        .zip(image.chunks_exact(s.height * s.width));
    for (padded, image) in planes {
        let rows = padded[s.padding * pw..]
            .chunks_exact_mut(pw)
            .zip(image.chunks_exact(s.width));
        for (padded, image) in rows {
            padded[s.padding..][..s.width].copy_from_slice(image);
        }
    }
    let ow = s.out_width();
    let mut rows = col.chunks_exact_mut(s.out_height() * ow);
    for channel in padded.chunks_exact(ph * pw) {
        for di in 0..s.kernel {
            for dj in 0..s.kernel {
                let row = rows.next().expect("columns hold in·k·k rows");
                for (i, out) in row.chunks_exact_mut(ow).enumerate() {
                    let input = &channel[(i * s.stride + di) * pw + dj..];
                    if s.stride == 1 {
                        out.copy_from_slice(&input[..ow]);
                    } else {
                        for (o, &v) in out.iter_mut().zip(input.iter().step_by(s.stride)) {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the pixel it was copied from,
/// in a zero-padded image whose border is then dropped.
fn col2im(s: &Conv2dShape, col: &[f32], padded: &mut [f32], image: &mut [f32]) {
    let (ph, pw) = (s.height + 2 * s.padding, s.width + 2 * s.padding);
    padded.fill(0.0);
    let ow = s.out_width();
    let mut rows = col.chunks_exact(s.out_height() * ow);
    for channel in padded.chunks_exact_mut(ph * pw) {
        for di in 0..s.kernel {
            for dj in 0..s.kernel {
                let row = rows.next().expect("columns hold in·k·k rows");
                for (i, out) in row.chunks_exact(ow).enumerate() {
                    let input = &mut channel[(i * s.stride + di) * pw + dj..];
                    if s.stride == 1 {
                        input[..ow]
                            .iter_mut()
                            .zip(out)
                            .for_each(|(pixel, g)| *pixel += g);
                    } else {
                        for (pixel, g) in input.iter_mut().step_by(s.stride).zip(out) {
                            *pixel += g;
                        }
                    }
                }
            }
        }
    }
    let planes = padded
        .chunks_exact(ph * pw)
        .zip(image.chunks_exact_mut(s.height * s.width));
    for (padded, image) in planes {
        let rows = padded[s.padding * pw..]
            .chunks_exact(pw)
            .zip(image.chunks_exact_mut(s.width));
        for (padded, image) in rows {
            image.copy_from_slice(&padded[s.padding..][..s.width]);
        }
    }
}

/// A sum whose eight independent lanes the compiler can vectorise; a plain fold is one long chain
/// of dependent additions.
fn sum_of(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(lane, v)| *lane += v);
    }
    lanes.iter().sum::<f32>() + tail
}
