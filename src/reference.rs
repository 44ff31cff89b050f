//! Reference ops: plain loops, written to be obviously correct rather than fast.
//!
//! Generic over [`Real`] so the finite-difference gradient checks can run in f64. Every fast CPU op
//! and every kernel is tested against these. Outputs are overwritten, never accumulated into,
//! except `softmax_xent_forward`'s running totals.

use crate::{AdamStep, Conv2dShape, LinearShape, Pool2dShape, XentShape};

/// The float types the reference ops run in: f32 (as the devices) and f64 (for gradient checks).
pub trait Real:
    Copy
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// y[n,o,i,j] = b[o] + Σ_{c,di,dj} x[n,c,i·s+di−p,j·s+dj−p] · w[o,c,di,dj] (zero outside x).
pub fn conv2d_forward<T: Real>(s: &Conv2dShape, x: &[T], w: &[T], b: &[T], y: &mut [T]) {
    let _ = (s, x, w, b, y);
    todo!()
}

/// dx = ∂L/∂x given dy = ∂L/∂y.
pub fn conv2d_backward_input<T: Real>(s: &Conv2dShape, w: &[T], dy: &[T], dx: &mut [T]) {
    let _ = (s, w, dy, dx);
    todo!()
}

/// dw = ∂L/∂w and db = ∂L/∂b (summed over the batch) given dy.
pub fn conv2d_backward_weight<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: &mut [T],
) {
    let _ = (s, x, dy, dw, db);
    todo!()
}

/// y = max over each 2x2 window; argmax gets the flat index into x of the maximum (first on ties).
pub fn maxpool2d_forward<T: Real>(s: &Pool2dShape, x: &[T], y: &mut [T], argmax: &mut [u32]) {
    let _ = (s, x, y, argmax);
    todo!()
}

/// dx = 0 except dx[argmax[i]] = dy[i].
pub fn maxpool2d_backward<T: Real>(s: &Pool2dShape, argmax: &[u32], dy: &[T], dx: &mut [T]) {
    let _ = (s, argmax, dy, dx);
    todo!()
}

/// y = max(x, 0).
pub fn relu_forward<T: Real>(x: &[T], y: &mut [T]) {
    let _ = (x, y);
    todo!()
}

/// dx = dy where y > 0, else 0 (y is relu's output).
pub fn relu_backward<T: Real>(y: &[T], dy: &[T], dx: &mut [T]) {
    let _ = (y, dy, dx);
    todo!()
}

/// y = x·Wᵀ + b.
pub fn linear_forward<T: Real>(s: &LinearShape, x: &[T], w: &[T], b: &[T], y: &mut [T]) {
    let _ = (s, x, w, b, y);
    todo!()
}

/// dx = dy·W.
pub fn linear_backward_input<T: Real>(s: &LinearShape, w: &[T], dy: &[T], dx: &mut [T]) {
    let _ = (s, w, dy, dx);
    todo!()
}

/// dW = dyᵀ·x, db = Σ_batch dy.
pub fn linear_backward_weight<T: Real>(
    s: &LinearShape,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: &mut [T],
) {
    let _ = (s, x, dy, dw, db);
    todo!()
}

/// Adds Σ_n −log softmax(logits[n])[labels[n]] to totals[0] and the number of rows whose first
/// maximum is at the label to totals[1].
pub fn softmax_xent_forward<T: Real>(
    s: &XentShape,
    logits: &[T],
    labels: &[u32],
    totals: &mut [T],
) {
    let _ = (s, logits, labels, totals);
    todo!()
}

/// dlogits = (softmax(logits) − onehot(labels)) / batch: the gradient of the batch's mean loss.
pub fn softmax_xent_backward<T: Real>(
    s: &XentShape,
    logits: &[T],
    labels: &[u32],
    dlogits: &mut [T],
) {
    let _ = (s, logits, labels, dlogits);
    todo!()
}

/// One fused Adam step over a parameter tensor, as torch.optim.Adam:
/// m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; p −= step_size · m / (√v / √(1−β2ᵗ) + eps).
pub fn adam_update<T: Real>(
    step: &AdamStep,
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    let _ = (step, params, grads, m, v);
    todo!()
}

/// out[i, :] = (images[indices[i], :] / 255 − 0.5) / 0.5 for u8 images of `image_len` pixels.
pub fn gather_images(images: &[u8], image_len: usize, indices: &[u32], out: &mut [f32]) {
    let _ = (images, image_len, indices, out);
    todo!()
}

/// out[i] = labels[indices[i]].
pub fn gather_labels(labels: &[u8], indices: &[u32], out: &mut [u32]) {
    let _ = (labels, indices, out);
    todo!()
}
