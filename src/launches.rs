//! How each op of the CUDA kernels in `kernels/*.cu` is launched: grid, block, shared memory and
//! argument order, built once and run by either executor (GPU or emulator).
//!
//! The arguments follow each kernel's C signature exactly. Sizes travel as `int`: every index a
//! kernel computes is below the length of some buffer, so buffers must hold fewer than 2³¹
//! elements.

use crate::launch::{KernelArg, Launch};
use crate::{AdamStep, Conv2dShape, LinearShape, Pool2dShape, XentShape};

/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;
/// Rows and columns of the output tile of one block of the GEMM kernels (`TILE` in linear.cu and
/// conv2d.cu), which run `GEMM_THREADS` threads each (a 16x16 grid of 4x4 micro-tiles).
const GEMM_TILE: usize = 64;
const GEMM_THREADS: u32 = 256;
/// Threads per warp, the unit of work of the softmax kernels (one row each).
const WARP: u32 = 32;

fn int(v: usize) -> KernelArg {
    KernelArg::I32(v as i32)
}

/// A 2-D grid of GEMM blocks covering an output matrix of `rows` x `cols`: x runs along columns.
fn gemm(kernel: &'static str, rows: usize, cols: usize, args: Vec<KernelArg>) -> Launch {
    Launch {
        kernel,
        grid: [
            cols.div_ceil(GEMM_TILE).max(1) as u32,
            rows.div_ceil(GEMM_TILE).max(1) as u32,
            1,
        ],
        block: [GEMM_THREADS, 1, 1],
        shared_bytes: 0,
        args,
    }
}

/// The ten sizes every conv kernel takes after its pointers, in its signature's order.
fn conv_sizes(s: &Conv2dShape) -> [KernelArg; 10] {
    [
        int(s.batch),
        int(s.in_channels),
        int(s.out_channels),
        int(s.height),
        int(s.width),
        int(s.kernel),
        int(s.stride),
        int(s.padding),
        int(s.out_height()),
        int(s.out_width()),
    ]
}

pub(crate) fn conv2d_forward(
    s: &Conv2dShape,
    x: KernelArg,
    w: KernelArg,
    b: KernelArg,
    y: KernelArg,
) -> Vec<Launch> {
    let pixels = s.batch * s.out_height() * s.out_width();
    let mut args = vec![x, w, b, y];
    args.extend(conv_sizes(s));
    vec![gemm("conv2d_forward", s.out_channels, pixels, args)]
}

pub(crate) fn conv2d_backward_input(
    s: &Conv2dShape,
    w: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let pixels = s.batch * s.height * s.width;
    let mut args = vec![w, dy, dx];
    args.extend(conv_sizes(s));
    vec![gemm("conv2d_backward_input", s.in_channels, pixels, args)]
}

pub(crate) fn conv2d_backward_weight(
    s: &Conv2dShape,
    x: KernelArg,
    dy: KernelArg,
    dw: KernelArg,
    db: KernelArg,
) -> Vec<Launch> {
    let patch_len = s.in_channels * s.kernel * s.kernel;
    let mut args = vec![x, dy, dw];
    args.extend(conv_sizes(s));
    let out_pixels = s.out_height() * s.out_width();
    vec![
        gemm("conv2d_backward_weight", s.out_channels, patch_len, args),
        Launch {
            kernel: "conv2d_backward_bias",
            grid: [s.out_channels.max(1) as u32, 1, 1],
            block: [BLOCK, 1, 1],
            shared_bytes: 0,
            args: vec![dy, db, int(s.batch), int(s.out_channels), int(out_pixels)],
        },
    ]
}

pub(crate) fn maxpool2d_forward(
    s: &Pool2dShape,
    x: KernelArg,
    y: KernelArg,
    argmax: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        x,
        y,
        argmax,
        int(s.batch * s.channels),
        int(s.height),
        int(s.width),
    ];
    vec![Launch::linear(
        "maxpool2d_forward",
        s.output_len(),
        BLOCK,
        args,
    )]
}

pub(crate) fn maxpool2d_backward(
    s: &Pool2dShape,
    argmax: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        argmax,
        dy,
        dx,
        int(s.batch * s.channels),
        int(s.height),
        int(s.width),
    ];
    vec![Launch::linear(
        "maxpool2d_backward",
        s.input_len(),
        BLOCK,
        args,
    )]
}

pub(crate) fn relu_forward(len: usize, x: KernelArg, y: KernelArg) -> Vec<Launch> {
    vec![Launch::linear(
        "relu_forward",
        len,
        BLOCK,
        vec![x, y, int(len)],
    )]
}

pub(crate) fn relu_backward(len: usize, y: KernelArg, dy: KernelArg, dx: KernelArg) -> Vec<Launch> {
    let args = vec![y, dy, dx, int(len)];
    vec![Launch::linear("relu_backward", len, BLOCK, args)]
}

pub(crate) fn linear_forward(
    s: &LinearShape,
    x: KernelArg,
    w: KernelArg,
    b: KernelArg,
    y: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        x,
        w,
        b,
        y,
        int(s.batch),
        int(s.in_features),
        int(s.out_features),
    ];
    vec![gemm("linear_forward", s.batch, s.out_features, args)]
}

pub(crate) fn linear_backward_input(
    s: &LinearShape,
    w: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        w,
        dy,
        dx,
        int(s.batch),
        int(s.in_features),
        int(s.out_features),
    ];
    vec![gemm("linear_backward_input", s.batch, s.in_features, args)]
}

pub(crate) fn linear_backward_weight(
    s: &LinearShape,
    x: KernelArg,
    dy: KernelArg,
    dw: KernelArg,
    db: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        x,
        dy,
        dw,
        int(s.batch),
        int(s.in_features),
        int(s.out_features),
    ];
    let bias_args = vec![dy, db, int(s.batch), int(s.out_features)];
    vec![
        gemm(
            "linear_backward_weight",
            s.out_features,
            s.in_features,
            args,
        ),
        Launch::linear("linear_backward_bias", s.out_features, BLOCK, bias_args),
    ]
}

/// Adds the batch's loss sum to totals[0] and its correct count to totals[1] (totals: 2 floats).
/// One block, so that the totals are summed in a fixed order.
pub(crate) fn softmax_xent_forward(
    s: &XentShape,
    logits: KernelArg,
    labels: KernelArg,
    totals: KernelArg,
) -> Vec<Launch> {
    let args = vec![logits, labels, totals, int(s.batch), int(s.classes)];
    vec![Launch {
        kernel: "softmax_xent_forward",
        grid: [1, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes: 0,
        args,
    }]
}

/// One warp per row.
pub(crate) fn softmax_xent_backward(
    s: &XentShape,
    logits: KernelArg,
    labels: KernelArg,
    dlogits: KernelArg,
) -> Vec<Launch> {
    let args = vec![logits, labels, dlogits, int(s.batch), int(s.classes)];
    let rows_per_block = (BLOCK / WARP) as usize;
    vec![Launch {
        kernel: "softmax_xent_backward",
        grid: [s.batch.div_ceil(rows_per_block).max(1) as u32, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes: 0,
        args,
    }]
}

pub(crate) fn adam_update(
    step: &AdamStep,
    len: usize,
    params: KernelArg,
    grads: KernelArg,
    m: KernelArg,
    v: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        params,
        grads,
        m,
        v,
        int(len),
        KernelArg::F32(step.beta1),
        KernelArg::F32(step.beta2),
        KernelArg::F32(step.eps),
        KernelArg::F32(step.step_size()),
        KernelArg::F32(step.bias_correction2_sqrt()),
    ];
    vec![Launch::linear("adam_update", len, BLOCK, args)]
}
