//! Reference ops: plain loops, written to be obviously correct rather than fast.
//!
//! Generic over [`Real`] so the finite-difference gradient checks can run in f64. Every fast CPU op
//! and every kernel is tested against these. Outputs are overwritten, never accumulated into,
//! except `softmax_xent_forward`'s running totals.
//!
//! Read a backward next to its forward. Every backward applies the chain rule to one forward
//! formula: if the forward computed y = f(x, w), the backward receives dy = ∂L/∂y (L is the
//! batch's loss) and returns ∂L/∂x = Σ_y dy · ∂y/∂x, one sum over every output that x fed. So a
//! backward loop walks the forward's loop nest again and sends each dy back along the edges that
//! produced it: where the forward read an input, the backward adds into that input's gradient.
//! `docs/` derives each op once with shapes and indices and links to every implementation.

use crate::{AdamStep, Conv2dShape, LinearShape, Pool2dShape, XentShape, IGNORE_LABEL, PAD_INDEX};

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
    let (oh, ow) = (s.out_height(), s.out_width());
    for n in 0..s.batch {
        for o in 0..s.out_channels {
            for i in 0..oh {
                for j in 0..ow {
                    let mut sum = b[o];
                    for c in 0..s.in_channels {
                        for di in 0..s.kernel {
                            for dj in 0..s.kernel {
                                if let Some((h, v)) = input_pixel(s, i, j, di, dj) {
                                    let xi = ((n * s.in_channels + c) * s.height + h) * s.width + v;
                                    let wi =
                                        ((o * s.in_channels + c) * s.kernel + di) * s.kernel + dj;
                                    sum += x[xi] * w[wi];
                                }
                            }
                        }
                    }
                    y[((n * s.out_channels + o) * oh + i) * ow + j] = sum;
                }
            }
        }
    }
}

/// dx = ∂L/∂x given dy = ∂L/∂y.
///
/// The forward was y[n,o,i,j] = b[o] + Σ_{c,di,dj} w[o,c,di,dj] · x[n,c,i·s+di−p, j·s+dj−p]:
/// each input pixel x[n,c,h,v] is read once for every output pixel (i, j) and tap (di, dj) with
/// i·s+di−p = h and j·s+dj−p = v, by every output channel o, each time with weight w[o,c,di,dj].
/// So ∂y[n,o,i,j]/∂x[n,c,h,v] = w[o,c,di,dj] on exactly those edges and
/// dx[n,c,h,v] = Σ_{o,i,j,di,dj on an edge} w[o,c,di,dj] · dy[n,o,i,j]:
/// the same loops as the forward, adding into dx where the forward read x (a "transposed
/// convolution" of dy with the weights).
pub fn conv2d_backward_input<T: Real>(s: &Conv2dShape, w: &[T], dy: &[T], dx: &mut [T]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    dx.fill(T::ZERO);
    // Each output pixel sends its gradient back along the same edges the forward pass read.
    for n in 0..s.batch {
        for o in 0..s.out_channels {
            for i in 0..oh {
                for j in 0..ow {
                    let g = dy[((n * s.out_channels + o) * oh + i) * ow + j];
                    for c in 0..s.in_channels {
                        for di in 0..s.kernel {
                            for dj in 0..s.kernel {
                                if let Some((h, v)) = input_pixel(s, i, j, di, dj) {
                                    let xi = ((n * s.in_channels + c) * s.height + h) * s.width + v;
                                    let wi =
                                        ((o * s.in_channels + c) * s.kernel + di) * s.kernel + dj;
                                    dx[xi] += w[wi] * g;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// dw = ∂L/∂w and db = ∂L/∂b (summed over the batch) given dy.
///
/// In the forward, weight w[o,c,di,dj] multiplies x[n,c,i·s+di−p, j·s+dj−p] in every output
/// pixel y[n,o,i,j] of channel o, for every image n; so ∂y[n,o,i,j]/∂w[o,c,di,dj] is that input
/// pixel and dw[o,c,di,dj] = Σ_{n,i,j} dy[n,o,i,j] · x[n,c,i·s+di−p, j·s+dj−p]: the correlation
/// of the output gradient with the input. The bias is added to every pixel of channel o with
/// factor 1, so db[o] = Σ_{n,i,j} dy[n,o,i,j].
pub fn conv2d_backward_weight<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: &mut [T],
) {
    let (oh, ow) = (s.out_height(), s.out_width());
    dw.fill(T::ZERO);
    db.fill(T::ZERO);
    for n in 0..s.batch {
        for o in 0..s.out_channels {
            for i in 0..oh {
                for j in 0..ow {
                    let g = dy[((n * s.out_channels + o) * oh + i) * ow + j];
                    db[o] += g;
                    for c in 0..s.in_channels {
                        for di in 0..s.kernel {
                            for dj in 0..s.kernel {
                                if let Some((h, v)) = input_pixel(s, i, j, di, dj) {
                                    let xi = ((n * s.in_channels + c) * s.height + h) * s.width + v;
                                    let wi =
                                        ((o * s.in_channels + c) * s.kernel + di) * s.kernel + dj;
                                    dw[wi] += x[xi] * g;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The input pixel (row, column) that kernel tap (di, dj) of output pixel (i, j) reads, or None
/// where it falls in the zero padding.
fn input_pixel(
    s: &Conv2dShape,
    i: usize,
    j: usize,
    di: usize,
    dj: usize,
) -> Option<(usize, usize)> {
    let h = (i * s.stride + di).checked_sub(s.padding)?;
    let v = (j * s.stride + dj).checked_sub(s.padding)?;
    (h < s.height && v < s.width).then_some((h, v))
}

/// y = max over each 2x2 window; argmax gets the flat index into x of the maximum (first on ties).
pub fn maxpool2d_forward<T: Real>(s: &Pool2dShape, x: &[T], y: &mut [T], argmax: &mut [u32]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    for plane in 0..s.batch * s.channels {
        for i in 0..oh {
            for j in 0..ow {
                let mut best = plane * s.height * s.width + 2 * i * s.width + 2 * j;
                for (di, dj) in [(0, 1), (1, 0), (1, 1)] {
                    let k = plane * s.height * s.width + (2 * i + di) * s.width + 2 * j + dj;
                    if x[k] > x[best] {
                        best = k;
                    }
                }
                let out = (plane * oh + i) * ow + j;
                y[out] = x[best];
                argmax[out] = best as u32;
            }
        }
    }
}

/// dx = 0 except dx[argmax[i]] = dy[i].
///
/// The forward was y[i] = x[argmax[i]]: a copy of one input per window. The maximum is locally
/// the identity on the winning input and ignores the other three, so ∂y[i]/∂x[k] = 1 if
/// k = argmax[i], else 0, and each window passes its gradient to its winner alone. The windows
/// don't overlap (2x2, stride 2), so each dx element receives at most one dy: a store, not a sum.
pub fn maxpool2d_backward<T: Real>(s: &Pool2dShape, argmax: &[u32], dy: &[T], dx: &mut [T]) {
    dx.fill(T::ZERO);
    for (&k, &g) in argmax.iter().zip(dy).take(s.output_len()) {
        dx[k as usize] = g;
    }
}

/// y = max(x, 0).
pub fn relu_forward<T: Real>(x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if x > T::ZERO { x } else { T::ZERO };
    }
}

/// dx = dy where y > 0, else 0 (y is relu's output).
///
/// The forward was y = max(x, 0), elementwise, whose derivative is 1 where x > 0 and 0 where
/// x < 0 (at x = 0 we take 0, as PyTorch does). y > 0 exactly where x > 0, so the output alone
/// decides, and the layer need not keep its input.
pub fn relu_backward<T: Real>(y: &[T], dy: &[T], dx: &mut [T]) {
    for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
        *dx = if y > T::ZERO { dy } else { T::ZERO };
    }
}

/// y = x·Wᵀ + b.
pub fn linear_forward<T: Real>(s: &LinearShape, x: &[T], w: &[T], b: &[T], y: &mut [T]) {
    for n in 0..s.batch {
        for o in 0..s.out_features {
            let mut sum = b[o];
            for i in 0..s.in_features {
                sum += x[n * s.in_features + i] * w[o * s.in_features + i];
            }
            y[n * s.out_features + o] = sum;
        }
    }
}

/// dx = dy·W.
///
/// The forward was y[n,o] = b[o] + Σ_i x[n,i] · W[o,i]: x[n,i] feeds every output o of its row
/// with factor W[o,i], so dx[n,i] = Σ_o dy[n,o] · W[o,i], the product dy·W.
pub fn linear_backward_input<T: Real>(s: &LinearShape, w: &[T], dy: &[T], dx: &mut [T]) {
    for n in 0..s.batch {
        for i in 0..s.in_features {
            let mut sum = T::ZERO;
            for o in 0..s.out_features {
                sum += dy[n * s.out_features + o] * w[o * s.in_features + i];
            }
            dx[n * s.in_features + i] = sum;
        }
    }
}

/// dW = dyᵀ·x, db = Σ_batch dy.
///
/// In the forward y[n,o] = b[o] + Σ_i x[n,i] · W[o,i], weight W[o,i] multiplies x[n,i] in every
/// row n of the batch, so dW[o,i] = Σ_n dy[n,o] · x[n,i] (= dyᵀ·x); b[o] is added to every row
/// with factor 1, so db[o] = Σ_n dy[n,o].
pub fn linear_backward_weight<T: Real>(
    s: &LinearShape,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: &mut [T],
) {
    for o in 0..s.out_features {
        let mut bias_sum = T::ZERO;
        for n in 0..s.batch {
            bias_sum += dy[n * s.out_features + o];
        }
        db[o] = bias_sum;
        for i in 0..s.in_features {
            let mut sum = T::ZERO;
            for n in 0..s.batch {
                sum += dy[n * s.out_features + o] * x[n * s.in_features + i];
            }
            dw[o * s.in_features + i] = sum;
        }
    }
}

/// Adds Σ_n −log softmax(logits[n])[labels[n]] to totals[0] and the number of rows whose first
/// maximum is at the label to totals[1], over the rows whose label is not [`IGNORE_LABEL`]
/// (padding rows add nothing, as PyTorch's `ignore_index`).
pub fn softmax_xent_forward<T: Real>(
    s: &XentShape,
    logits: &[T],
    labels: &[u32],
    totals: &mut [T],
) {
    for (row, &label) in logits.chunks_exact(s.classes).zip(labels).take(s.batch) {
        if label == IGNORE_LABEL {
            continue;
        }
        let (max, first_max) = row_max(row);
        // log Σ exp(l − max) − (l[label] − max): exact, and exp never overflows.
        let mut sum = T::ZERO;
        for &l in row {
            sum += (l - max).exp();
        }
        totals[0] += sum.ln() - (row[label as usize] - max);
        if first_max == label as usize {
            totals[1] += T::ONE;
        }
    }
}

/// dlogits = (softmax(logits) − onehot(labels)) / rows: the gradient of the mean loss over the
/// `rows` real rows (those not labelled [`IGNORE_LABEL`]); padding rows get zero gradient.
///
/// The forward's loss for row n with label t is ℓ = −log p_t with p_k = e^{l_k} / Σ_j e^{l_j},
/// i.e. ℓ = log Σ_j e^{l_j} − l_t. Differentiating, ∂ℓ/∂l_k = e^{l_k} / Σ_j e^{l_j} − [k = t]
/// = p_k − onehot_k. The training loss is the mean over the real rows, L = (1/rows) Σ_n ℓ_n,
/// hence the division; a padding row is in no ℓ_n. Subtracting the row's maximum first changes
/// neither p nor the gradient, and keeps every exponential ≤ 1. With every row padding the
/// gradient is all zeros (PyTorch's mean loss is then 0/0 = NaN; its gradient is zeros too).
pub fn softmax_xent_backward<T: Real>(
    s: &XentShape,
    logits: &[T],
    labels: &[u32],
    dlogits: &mut [T],
) {
    let labels = &labels[..s.batch];
    let real = labels.iter().filter(|&&l| l != IGNORE_LABEL).count();
    let rows = T::from_f64(real as f64);
    let grad_rows = logits
        .chunks_exact(s.classes)
        .zip(dlogits.chunks_exact_mut(s.classes));
    for ((row, drow), &label) in grad_rows.zip(labels) {
        if label == IGNORE_LABEL {
            drow.fill(T::ZERO);
            continue;
        }
        let (max, _) = row_max(row);
        let mut sum = T::ZERO;
        for &l in row {
            sum += (l - max).exp();
        }
        for (k, (d, &l)) in drow.iter_mut().zip(row).enumerate() {
            let onehot = if k == label as usize { T::ONE } else { T::ZERO };
            *d = ((l - max).exp() / sum - onehot) / rows;
        }
    }
}

/// The largest value of a row and the index of its first occurrence.
fn row_max<T: Real>(row: &[T]) -> (T, usize) {
    let mut first_max = 0;
    for (k, &l) in row.iter().enumerate() {
        if l > row[first_max] {
            first_max = k;
        }
    }
    (row[first_max], first_max)
}

/// One fused Adam step over a parameter tensor, as torch.optim.Adam:
/// m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; p −= step_size · m / (√v / √(1−β2ᵗ) + eps).
///
/// m and v are running means of the gradient and its square; started at zero they are biased
/// toward zero by the factors 1−β1ᵗ and 1−β2ᵗ. Adam's update is lr · m̂ / (√v̂ + eps) with the
/// corrected m̂ = m / (1−β1ᵗ) and v̂ = v / (1−β2ᵗ); folding 1/(1−β1ᵗ) into
/// step_size = lr / (1−β1ᵗ) gives the form above, the last line in the order of operations of
/// torch.optim.Adam's single-tensor path. The moments are not rounded as there: PyTorch updates m
/// with `lerp_(g, 1−β1)` (one fused multiply-add), fuses v's update likewise, and keeps β and the
/// step size in f64 (1−β1 = 0.1, where here it is 1 − 0.9f32 = 0.10000002), so in f32 the two
/// differ by an ulp or so per step; docs/adam.md says where.
pub fn adam_update<T: Real>(
    step: &AdamStep,
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    let beta1 = T::from_f64(step.beta1 as f64);
    let beta2 = T::from_f64(step.beta2 as f64);
    let eps = T::from_f64(step.eps as f64);
    let step_size = T::from_f64(step.step_size() as f64);
    let bc2_sqrt = T::from_f64(step.bias_correction2_sqrt() as f64);
    for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
        *m = beta1 * *m + (T::ONE - beta1) * g;
        *v = beta2 * *v + (T::ONE - beta2) * g * g;
        *p = *p - step_size * *m / (v.sqrt() / bc2_sqrt + eps);
    }
}

/// out[i, :] = (images[indices[i], :] / 255 − 0.5) / 0.5 for u8 images of `image_len` pixels;
/// zeros for [`PAD_INDEX`].
pub fn gather_images(images: &[u8], image_len: usize, indices: &[u32], out: &mut [f32]) {
    if image_len == 0 {
        return;
    }
    for (row, &index) in out.chunks_exact_mut(image_len).zip(indices) {
        if index == PAD_INDEX {
            row.fill(0.0);
            continue;
        }
        let image = &images[index as usize * image_len..][..image_len];
        for (o, &pixel) in row.iter_mut().zip(image) {
            *o = (pixel as f32 / 255.0 - 0.5) / 0.5;
        }
    }
}

/// out[i] = labels[indices[i]]; [`IGNORE_LABEL`] for [`PAD_INDEX`].
pub fn gather_labels(labels: &[u8], indices: &[u32], out: &mut [u32]) {
    for (o, &index) in out.iter_mut().zip(indices) {
        *o = match index {
            PAD_INDEX => IGNORE_LABEL,
            _ => labels[index as usize] as u32,
        };
    }
}
