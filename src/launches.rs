//! How each op of the CUDA kernels in `kernels/*.cu` is launched: grid, block, shared memory and
//! argument order, built once and run by either executor (GPU or emulator).
//!
//! (Skeleton: bodies arrive with the kernels.)
#![allow(dead_code)]

use crate::launch::{KernelArg, Launch};
use crate::{AdamStep, Conv2dShape, LinearShape, Pool2dShape, XentShape};

pub(crate) fn conv2d_forward(
    s: &Conv2dShape,
    x: KernelArg,
    w: KernelArg,
    b: KernelArg,
    y: KernelArg,
) -> Vec<Launch> {
    let _ = (s, x, w, b, y);
    todo!()
}

pub(crate) fn conv2d_backward_input(
    s: &Conv2dShape,
    w: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let _ = (s, w, dy, dx);
    todo!()
}

pub(crate) fn conv2d_backward_weight(
    s: &Conv2dShape,
    x: KernelArg,
    dy: KernelArg,
    dw: KernelArg,
    db: KernelArg,
) -> Vec<Launch> {
    let _ = (s, x, dy, dw, db);
    todo!()
}

pub(crate) fn maxpool2d_forward(
    s: &Pool2dShape,
    x: KernelArg,
    y: KernelArg,
    argmax: KernelArg,
) -> Vec<Launch> {
    let _ = (s, x, y, argmax);
    todo!()
}

pub(crate) fn maxpool2d_backward(
    s: &Pool2dShape,
    argmax: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let _ = (s, argmax, dy, dx);
    todo!()
}

pub(crate) fn relu_forward(len: usize, x: KernelArg, y: KernelArg) -> Vec<Launch> {
    let _ = (len, x, y);
    todo!()
}

pub(crate) fn relu_backward(len: usize, y: KernelArg, dy: KernelArg, dx: KernelArg) -> Vec<Launch> {
    let _ = (len, y, dy, dx);
    todo!()
}

pub(crate) fn linear_forward(
    s: &LinearShape,
    x: KernelArg,
    w: KernelArg,
    b: KernelArg,
    y: KernelArg,
) -> Vec<Launch> {
    let _ = (s, x, w, b, y);
    todo!()
}

pub(crate) fn linear_backward_input(
    s: &LinearShape,
    w: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let _ = (s, w, dy, dx);
    todo!()
}

pub(crate) fn linear_backward_weight(
    s: &LinearShape,
    x: KernelArg,
    dy: KernelArg,
    dw: KernelArg,
    db: KernelArg,
) -> Vec<Launch> {
    let _ = (s, x, dy, dw, db);
    todo!()
}

/// Adds the batch's loss sum to totals[0] and its correct count to totals[1] (totals: 2 floats).
pub(crate) fn softmax_xent_forward(
    s: &XentShape,
    logits: KernelArg,
    labels: KernelArg,
    totals: KernelArg,
) -> Vec<Launch> {
    let _ = (s, logits, labels, totals);
    todo!()
}

pub(crate) fn softmax_xent_backward(
    s: &XentShape,
    logits: KernelArg,
    labels: KernelArg,
    dlogits: KernelArg,
) -> Vec<Launch> {
    let _ = (s, logits, labels, dlogits);
    todo!()
}

pub(crate) fn adam_update(
    step: &AdamStep,
    len: usize,
    params: KernelArg,
    grads: KernelArg,
    m: KernelArg,
    v: KernelArg,
) -> Vec<Launch> {
    let _ = (step, len, params, grads, m, v);
    todo!()
}
