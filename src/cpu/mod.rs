//! Fast CPU ops: the `cpu` device. Same contracts as [`crate::reference`], f32 only.
//!
//! Convolutions and linear layers are products on [`gemm`], an SGEMM with an AVX-512
//! micro-kernel (chosen at run time; portable loops elsewhere) that packs its operands into
//! panels or, where they already lie in runs it can read, reads them in place: convolutions one
//! per image, images split across threads, their patches taken straight from the image; linear
//! layers one product each, split along the output. Convolutions too shallow for a product
//! (conv1: one input channel, nine taps) are computed straight from the image (`shallow.rs`),
//! deep 3x3 ones that keep the image's size (conv2) by Winograd's transforms (`winograd.rs`),
//! and each convolution with the pool after it image by image (`conv_pool.rs`). The rest are
//! single passes over memory in parallel chunks. All threads are rayon's global pool, set up by [`init_threads`], which every op calls
//! first.
//!
//! For fused ops: [`linear_relu_forward`] is the linear forward with ReLU in the GEMM's
//! epilogue; [`adam_update`] takes any slice, a flat buffer of every parameter included; and
//! [`gemm::gemm`] takes an [`gemm::Epilogue`] (accumulate, bias per row or column, ReLU).

mod conv;
mod conv_pool;
mod elementwise;
mod fused;
pub mod gemm;
mod linear;
mod microkernel;
#[cfg(target_arch = "x86_64")]
mod pack;
mod pool;
mod scratch;
#[cfg(target_arch = "x86_64")]
mod shallow;
mod winograd;

use crate::{reference, AdamHyper, Conv2dShape, LinearShape, Pool2dShape, XentShape};
use std::sync::Once;

/// Sets flush-to-zero and denormals-are-zero on the calling thread, and once per process builds
/// rayon's global pool with every worker set the same way (the main thread one of them, when it
/// is the first to call).
///
/// Why: Adam's first moment of a weight that sees no gradient decays by β1 each step and turns
/// subnormal after a few hundred steps; arithmetic on subnormals is many times slower, enough to
/// slow a whole training step by ~40%. Flushing them to zero changes no result that matters.
/// Idempotent and cheap; every op here calls it, so callers need not.
pub fn init_threads() {
    static POOL: Once = Once::new();
    flush_denormals();
    POOL.call_once(|| {
        let mut pool = rayon::ThreadPoolBuilder::new().start_handler(|_| flush_denormals());
        // The program's main thread, which runs the training loop, joins the pool as one of its
        // threads: each op then starts its parallel work as a `join` whose other half the
        // second thread steals, instead of handing it in from outside and sleeping until it is
        // done (a wake-up more per op). Other threads (a test harness's) stay outside it.
        if std::thread::current().name() == Some("main") {
            pool = pool.use_current_thread();
        }
        let built = pool.build_global();
        if built.is_err() {
            // Someone built the global pool first: set its workers now instead.
            rayon::broadcast(|_| flush_denormals());
        }
    });
}

/// Sets MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) on this thread.
#[cfg(target_arch = "x86_64")]
fn flush_denormals() {
    const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
    let mut csr = 0u32;
    // SAFETY: stmxcsr/ldmxcsr only read and write the control word at a valid local; the new
    // word differs only in the two flush bits, which mask no exception and change no rounding.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        csr |= FTZ_DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags, readonly));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn flush_denormals() {}

pub fn conv2d_forward(s: &Conv2dShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    init_threads();
    conv::forward(s, x, w, b, y)
}

pub fn conv2d_backward_input(s: &Conv2dShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    init_threads();
    conv::backward_input(s, w, dy, dx)
}

pub fn conv2d_backward_weight(
    s: &Conv2dShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    init_threads();
    conv::backward_weight(s, x, dy, dw, db)
}

/// conv2d, then max-pool and ReLU, image by image (see `conv_pool.rs`): y and argmax as
/// [`maxpool2d_relu_forward`] gives them on [`conv2d_forward`]'s output, which is written to
/// `conv_out` only where the shape has nothing to fuse.
#[allow(clippy::too_many_arguments)] // the op's operands
pub fn conv2d_maxpool2d_relu_forward(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    conv_out: &mut [f32],
    y: &mut [f32],
    argmax: &mut [u32],
) {
    init_threads();
    conv_pool::forward(s, (x, w, b), conv_out, y, argmax)
}

/// The gradients of [`conv2d_maxpool2d_relu_forward`]: dw, db, and dx where asked for;
/// `dconv`, the gradient to the convolution's output, is written only where the pass is not
/// fused.
#[allow(clippy::too_many_arguments)] // the op's operands
pub fn maxpool2d_relu_conv2d_backward(
    s: &Conv2dShape,
    (x, w): (&[f32], &[f32]),
    (argmax, y, dy): (&[u32], &[f32], &[f32]),
    dconv: &mut [f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    init_threads();
    conv_pool::backward(s, (x, w), (argmax, y, dy), dconv, dx, dw, db)
}

/// Max-pool then ReLU in one pass: negative maxima set to 0 (the argmax is the pool's).
pub fn maxpool2d_relu_forward(s: &Pool2dShape, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    init_threads();
    pool::forward(s, x, y, argmax);
}

/// The pool's gradient, passed only where the fused output y is positive.
pub fn maxpool2d_relu_backward(
    s: &Pool2dShape,
    argmax: &[u32],
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) {
    init_threads();
    pool::backward(s, argmax, y, dy, dx)
}

pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    init_threads();
    elementwise::relu_backward(y, dy, dx)
}

pub fn linear_forward(s: &LinearShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    init_threads();
    linear::forward(s, x, w, b, false, y)
}

/// [`linear_forward`] then ReLU, in one pass: y = max(0, x·Wᵀ + b).
pub fn linear_relu_forward(s: &LinearShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    init_threads();
    linear::forward(s, x, w, b, true, y)
}

pub fn linear_backward_input(s: &LinearShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    init_threads();
    linear::backward_input(s, w, dy, dx)
}

pub fn linear_backward_weight(
    s: &LinearShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    init_threads();
    linear::backward_weight(s, x, dy, dw, db)
}

/// [`linear_backward_weight`] and then [`adam_update`] on the weight, fused: the weight gradient
/// is never stored (see `linear.rs`); the bias gradient is, for its own Adam step. W, m and v
/// are `[out, in]`; the bits are those of the two ops.
pub fn linear_backward_weight_adam(
    s: &LinearShape,
    x: &[f32],
    dy: &[f32],
    adam: (&AdamHyper, [f32; 2]),
    weight: (&mut [f32], &mut [f32], &mut [f32]),
    db: &mut [f32],
) {
    init_threads();
    linear::backward_weight_adam(s, x, dy, adam, weight, db)
}

/// One Adam step over any slice of parameters, a whole flat buffer included; `scalars` are the
/// step's [`crate::AdamStep::scalars`] (step size and √(1 − β2ᵗ)), computed once per step.
pub fn adam_update(
    hyper: &AdamHyper,
    scalars: [f32; 2],
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    init_threads();
    elementwise::adam_update(hyper, scalars, params, grads, m, v)
}

/// The loss forward and backward in one pass, padding rows ignored (see `fused.rs`).
pub fn softmax_xent_fused(
    s: &XentShape,
    logits: &[f32],
    labels: &[u32],
    totals: &mut [f32],
    dlogits: &mut [f32],
) {
    init_threads();
    fused::softmax_xent(s, logits, labels, totals, dlogits)
}

pub fn gather_images(images: &[u8], image_len: usize, indices: &[u32], out: &mut [f32]) {
    init_threads();
    elementwise::gather_images(images, image_len, indices, out)
}

/// One integer per image: the reference loop is already the right code (padding included).
pub fn gather_labels(labels: &[u8], indices: &[u32], out: &mut [u32]) {
    reference::gather_labels(labels, indices, out)
}
