//! 2x2 stride-2 max pooling fused with the ReLU after it, one (image, channel) plane per task.

use crate::Pool2dShape;
use rayon::prelude::*;

/// Planes per task: enough work to pay for handing it to another thread.
const PLANES_PER_TASK: usize = 8;

/// y = relu(max of each window): negative maxima (and NaN) are written as 0; the argmax is the
/// pool's either way.
pub fn forward(s: &Pool2dShape, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let plane_len = s.height * s.width;
    if oh * ow == 0 {
        return; // Planes under 2x2 have no window.
    }
    y.par_chunks_mut(oh * ow)
        .zip(argmax.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(plane_len))
        .enumerate()
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(plane, ((y, argmax), x))| {
            let offset = (plane * plane_len) as u32;
            let width = s.width as u32;
            for i in 0..oh {
                let top = &x[2 * i * s.width..][..2 * ow];
                let bottom = &x[(2 * i + 1) * s.width..][..2 * ow];
                let row_start = offset + 2 * i as u32 * width;
                let outputs = y[i * ow..][..ow]
                    .iter_mut()
                    .zip(&mut argmax[i * ow..][..ow]);
                let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
                for (j, ((y, argmax), (top, bottom))) in outputs.zip(windows).enumerate() {
                    // Candidates in reading order, each replacing the best only if strictly
                    // greater, so ties keep the first. Selects, not branches: which of four
                    // pixels wins is a coin toss the branch predictor would lose.
                    let (mut best, mut at) = (top[0], 0);
                    for (value, offset) in [(top[1], 1), (bottom[0], width), (bottom[1], width + 1)]
                    {
                        let greater = value > best;
                        best = if greater { value } else { best };
                        at = if greater { offset } else { at };
                    }
                    *y = if best > 0.0 { best } else { 0.0 };
                    *argmax = row_start + 2 * j as u32 + at;
                }
            }
        });
}

/// The gradient of [`forward`]: dy goes to each window's argmax, only where the output `y` is
/// positive (ReLU's mask).
pub fn backward(s: &Pool2dShape, argmax: &[u32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let out_plane = s.out_height() * s.out_width();
    let plane_len = s.height * s.width;
    if out_plane == 0 {
        dx.fill(0.0); // Planes under 2x2 had no window to send gradient through.
        return;
    }
    dx.par_chunks_mut(plane_len)
        .zip(dy.par_chunks(out_plane))
        .zip(argmax.par_chunks(out_plane))
        .zip(y.par_chunks(out_plane))
        .enumerate()
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(plane, (((dx, dy), argmax), y))| {
            dx.fill(0.0);
            let offset = plane * plane_len;
            for ((&k, &g), &y) in argmax.iter().zip(dy).zip(y) {
                // ReLU's mask: no gradient where the output was clamped to 0 (or is NaN). A
                // select, not a branch, and a zero written where the mask is off.
                let g = if y > 0.0 { g } else { 0.0 };
                // The forward pass only ever picks from the window's own plane.
                dx[k as usize - offset] = g;
            }
        });
}
