//! 2x2 stride-2 max pooling, one (image, channel) plane per task.

use crate::Pool2dShape;
use rayon::prelude::*;

/// Planes per task: enough work to pay for handing it to another thread.
const PLANES_PER_TASK: usize = 8;

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
            let offset = plane * plane_len;
            for i in 0..oh {
                let top = &x[2 * i * s.width..][..s.width];
                let bottom = &x[(2 * i + 1) * s.width..][..s.width];
                for j in 0..ow {
                    // Candidates in reading order, so ties keep the first.
                    let mut best = (top[2 * j], 2 * i * s.width + 2 * j);
                    for candidate in [
                        (top[2 * j + 1], 2 * i * s.width + 2 * j + 1),
                        (bottom[2 * j], (2 * i + 1) * s.width + 2 * j),
                        (bottom[2 * j + 1], (2 * i + 1) * s.width + 2 * j + 1),
                    ] {
                        if candidate.0 > best.0 {
                            best = candidate;
                        }
                    }
                    y[i * ow + j] = best.0;
                    argmax[i * ow + j] = (offset + best.1) as u32;
                }
            }
        });
}

pub fn backward(s: &Pool2dShape, argmax: &[u32], dy: &[f32], dx: &mut [f32]) {
    let out_plane = s.out_height() * s.out_width();
    let plane_len = s.height * s.width;
    if out_plane == 0 {
        dx.fill(0.0); // Planes under 2x2 had no window to send gradient through.
        return;
    }
    dx.par_chunks_mut(plane_len)
        .zip(dy.par_chunks(out_plane))
        .zip(argmax.par_chunks(out_plane))
        .enumerate()
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(plane, ((dx, dy), argmax))| {
            dx.fill(0.0);
            let offset = plane * plane_len;
            for (&k, &g) in argmax.iter().zip(dy) {
                // The forward pass only ever picks from the window's own plane.
                dx[k as usize - offset] = g;
            }
        });
}
