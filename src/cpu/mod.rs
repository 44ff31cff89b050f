//! Fast CPU ops: the `cpu` device. Same contracts as [`crate::reference`], f32 only.
//!
//! (Skeleton: each op still calls the reference; the fast versions replace these bodies.)

use crate::{reference, AdamStep, Conv2dShape, LinearShape, Pool2dShape, XentShape};

pub fn conv2d_forward(s: &Conv2dShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    reference::conv2d_forward(s, x, w, b, y)
}

pub fn conv2d_backward_input(s: &Conv2dShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    reference::conv2d_backward_input(s, w, dy, dx)
}

pub fn conv2d_backward_weight(
    s: &Conv2dShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    reference::conv2d_backward_weight(s, x, dy, dw, db)
}

pub fn maxpool2d_forward(s: &Pool2dShape, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    reference::maxpool2d_forward(s, x, y, argmax)
}

pub fn maxpool2d_backward(s: &Pool2dShape, argmax: &[u32], dy: &[f32], dx: &mut [f32]) {
    reference::maxpool2d_backward(s, argmax, dy, dx)
}

pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    reference::relu_forward(x, y)
}

pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    reference::relu_backward(y, dy, dx)
}

pub fn linear_forward(s: &LinearShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    reference::linear_forward(s, x, w, b, y)
}

pub fn linear_backward_input(s: &LinearShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    reference::linear_backward_input(s, w, dy, dx)
}

pub fn linear_backward_weight(
    s: &LinearShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    reference::linear_backward_weight(s, x, dy, dw, db)
}

pub fn softmax_xent_forward(s: &XentShape, logits: &[f32], labels: &[u32], totals: &mut [f32]) {
    reference::softmax_xent_forward(s, logits, labels, totals)
}

pub fn softmax_xent_backward(s: &XentShape, logits: &[f32], labels: &[u32], dlogits: &mut [f32]) {
    reference::softmax_xent_backward(s, logits, labels, dlogits)
}

pub fn adam_update(
    step: &AdamStep,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    reference::adam_update(step, params, grads, m, v)
}

pub fn gather_images(images: &[u8], image_len: usize, indices: &[u32], out: &mut [f32]) {
    reference::gather_images(images, image_len, indices, out)
}

pub fn gather_labels(labels: &[u8], indices: &[u32], out: &mut [u32]) {
    reference::gather_labels(labels, indices, out)
}
