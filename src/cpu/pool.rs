//! 2x2 stride-2 max pooling fused with the ReLU after it, plane by plane, each thread one run of
//! planes.
//!
//! Plain loops: an AVX-512 version (windows split into even and odd lanes, compared with masks)
//! measured slower here, as the pass waits on memory either way.

use crate::Pool2dShape;
use rayon::prelude::*;

/// Each thread's share of the planes, one contiguous run: a pass over a plane takes
/// microseconds, less than handing a task from one thread to another.
fn planes_per_task(planes: usize) -> usize {
    planes.div_ceil(rayon::current_num_threads()).max(1)
}

/// y = relu(max of each window): negative maxima (and NaN) are written as 0; the argmax is the
/// pool's either way.
pub fn forward(s: &Pool2dShape, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let out_plane = s.out_height() * s.out_width();
    let plane_len = s.height * s.width;
    if out_plane == 0 {
        return; // Planes under 2x2 have no window.
    }
    let per_task = planes_per_task(s.batch * s.channels);
    y.par_chunks_mut(per_task * out_plane)
        .zip(argmax.par_chunks_mut(per_task * out_plane))
        .zip(x.par_chunks(per_task * plane_len))
        .enumerate()
        .for_each(|(task, ((y, argmax), x))| forward_planes(s, task * per_task, x, y, argmax));
}

/// Consecutive planes of [`forward`], the first being plane `first` of the batch (argmax counts
/// from the batch's start).
pub(super) fn forward_planes(
    s: &Pool2dShape,
    first: usize,
    x: &[f32],
    y: &mut [f32],
    argmax: &mut [u32],
) {
    let (plane_len, out_plane) = (s.height * s.width, s.out_height() * s.out_width());
    let planes = y
        .chunks_exact_mut(out_plane)
        .zip(argmax.chunks_exact_mut(out_plane))
        .zip(x.chunks_exact(plane_len));
    for (p, ((y, argmax), x)) in planes.enumerate() {
        let offset = ((first + p) * plane_len) as u32;
        forward_plane(x, (s.height, s.width), offset, y, argmax);
    }
}

/// Consecutive planes of [`backward`], the first being plane `first` of the batch.
pub(super) fn backward_planes(
    s: &Pool2dShape,
    first: usize,
    (argmax, y, dy): (&[u32], &[f32], &[f32]),
    dx: &mut [f32],
) {
    let (plane_len, out_plane) = (s.height * s.width, s.out_height() * s.out_width());
    let planes = dx
        .chunks_exact_mut(plane_len)
        .zip(argmax.chunks_exact(out_plane))
        .zip(y.chunks_exact(out_plane))
        .zip(dy.chunks_exact(out_plane));
    for (p, (((dx, argmax), y), dy)) in planes.enumerate() {
        let offset = ((first + p) * plane_len) as u32;
        backward_plane((argmax, y, dy), offset, dx);
    }
}

/// One plane of [`forward`]; `offset` is the plane's first index in x.
fn forward_plane(
    x: &[f32],
    (height, width): (usize, usize),
    offset: u32,
    y: &mut [f32],
    argmax: &mut [u32],
) {
    let (oh, ow) = (height / 2, width / 2);
    let w = width as u32;
    for i in 0..oh {
        let top = &x[2 * i * width..][..2 * ow];
        let bottom = &x[(2 * i + 1) * width..][..2 * ow];
        let row_start = offset + 2 * i as u32 * w;
        let outputs = y[i * ow..][..ow]
            .iter_mut()
            .zip(&mut argmax[i * ow..][..ow]);
        let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
        for (j, ((y, argmax), (top, bottom))) in outputs.zip(windows).enumerate() {
            // Candidates in reading order, each replacing the best only if strictly greater, so
            // ties keep the first. Selects, not branches: which of four pixels wins is a coin
            // toss the branch predictor would lose.
            let (mut best, mut at) = (top[0], 0);
            for (value, place) in [(top[1], 1), (bottom[0], w), (bottom[1], w + 1)] {
                let greater = value > best;
                best = if greater { value } else { best };
                at = if greater { place } else { at };
            }
            *y = if best > 0.0 { best } else { 0.0 };
            *argmax = row_start + 2 * j as u32 + at;
        }
    }
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
    let per_task = planes_per_task(s.batch * s.channels);
    dx.par_chunks_mut(per_task * plane_len)
        .zip(dy.par_chunks(per_task * out_plane))
        .zip(argmax.par_chunks(per_task * out_plane))
        .zip(y.par_chunks(per_task * out_plane))
        .enumerate()
        .for_each(|(task, (((dx, dy), argmax), y))| {
            backward_planes(s, task * per_task, (argmax, y, dy), dx)
        });
}

/// One plane of [`backward`].
fn backward_plane((argmax, y, dy): (&[u32], &[f32], &[f32]), offset: u32, dx: &mut [f32]) {
    dx.fill(0.0);
    for ((&k, &g), &y) in argmax.iter().zip(dy).zip(y) {
        // ReLU's mask: no gradient where the output was clamped to 0 (or is NaN). A select, not
        // a branch, and a zero written where the mask is off.
        let g = if y > 0.0 { g } else { 0.0 };
        // The forward pass only ever picks from the window's own plane.
        dx[(k - offset) as usize] = g;
    }
}
