//! Elementwise and gather ops: memory-bound loops split into chunks across threads.
//!
//! Handing work to the pool costs a wake-up of a few microseconds, so tensors of one chunk or
//! less run on the calling thread.

use super::gemm::Kernel;
use crate::{AdamHyper, PAD_INDEX};
use rayon::prelude::*;

/// Elements per task: large enough that scheduling is noise, small enough to balance two threads.
const CHUNK: usize = 1 << 15;

pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    fn mask(y: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
            *dx = if y > 0.0 { dy } else { 0.0 };
        }
    }
    if y.len() <= CHUNK {
        return mask(y, dy, dx);
    }
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .zip(dy.par_chunks(CHUNK))
        .for_each(|((dx, y), dy)| mask(y, dy, dx));
}

/// The whole update in one pass over memory; torch's unfused Adam makes seven. Any slice of
/// parameters works, a flat buffer of all of them included, split in chunks across threads.
/// `scalars` are the step's [`crate::AdamStep::scalars`].
pub fn adam_update(
    hyper: &AdamHyper,
    scalars: [f32; 2],
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    if params.len() <= CHUNK {
        return adam_chunk(hyper, scalars, params, grads, m, v);
    }
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((params, grads), m), v)| adam_chunk(hyper, scalars, params, grads, m, v));
}

/// One chunk of [`adam_update`], in the vectors of the kernel [`Kernel::detect`] picks: 16
/// floats on AVX-512, 8 on AVX2. The same operations in the same order (no fused multiply-add),
/// so every path rounds alike.
pub(super) fn adam_chunk(
    hyper: &AdamHyper,
    scalars: [f32; 2],
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    match Kernel::detect() {
        // SAFETY: the CPU has AVX-512F (the kernel is one it runs).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { adam_avx512(hyper, scalars, params, grads, m, v) },
        // SAFETY: the CPU has AVX2 (as above).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => unsafe { adam_avx2(hyper, scalars, params, grads, m, v) },
        _ => adam_loop(hyper, scalars, params, grads, m, v),
    }
}

/// [`adam_loop`] compiled for AVX-512: the same code, vectorised 16 wide.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn adam_avx512(
    hyper: &AdamHyper,
    scalars: [f32; 2],
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    adam_loop(hyper, scalars, params, grads, m, v)
}

/// [`adam_loop`] compiled for AVX2: the same code, vectorised 8 wide.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adam_avx2(
    hyper: &AdamHyper,
    scalars: [f32; 2],
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    adam_loop(hyper, scalars, params, grads, m, v)
}

#[inline(always)]
fn adam_loop(
    hyper: &AdamHyper,
    scalars: [f32; 2],
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let AdamHyper { beta1, beta2, eps } = *hyper;
    let [step_size, bias_correction2_sqrt] = scalars;
    for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
        *m = beta1 * *m + (1.0 - beta1) * g;
        *v = beta2 * *v + (1.0 - beta2) * g * g;
        *p -= step_size * *m / (v.sqrt() / bias_correction2_sqrt + eps);
    }
}

pub fn gather_images(images: &[u8], image_len: usize, indices: &[u32], out: &mut [f32]) {
    if image_len == 0 {
        return;
    }
    let gather = |row: &mut [f32], index: u32| {
        if index == PAD_INDEX {
            return row.fill(0.0);
        }
        let image = &images[index as usize * image_len..][..image_len];
        for (o, &pixel) in row.iter_mut().zip(image) {
            *o = (pixel as f32 / 255.0 - 0.5) / 0.5;
        }
    };
    if out.len() <= CHUNK {
        return out
            .chunks_exact_mut(image_len)
            .zip(indices)
            .for_each(|(row, &i)| gather(row, i));
    }
    out.par_chunks_mut(image_len)
        .zip(indices)
        .for_each(|(row, &i)| gather(row, i));
}
