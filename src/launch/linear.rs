//! How the kernels of `kernels/linear.cu` are launched: each pass is a GEMM (see `gemm.rs`).

use super::gemm::{engine, split_gemm, GemmContext, NO_PARTS};
use super::{int, KernelArg, Launch, BLOCK};
use crate::{Activation, LinearShape, Precision};

/// The pass that adds the parts of a split linear product C [rows, cols], then stores it as the
/// product's own kernel would (bias and relu for the forward pass).
fn linear_sum_parts(
    ctx: &GemmContext,
    splits: usize,
    bias: KernelArg,
    c: KernelArg,
    rows: usize,
    cols: usize,
    relu: bool,
) -> Launch {
    let args = vec![
        ctx.parts,
        int(splits),
        bias,
        c,
        int(rows),
        int(cols),
        int(relu as usize),
    ];
    Launch::linear("linear_sum_parts", rows * cols, BLOCK, args)
}

#[allow(clippy::too_many_arguments)] // the op's operands, and how it computes
pub(crate) fn forward(
    s: &LinearShape,
    precision: Precision,
    activation: Activation,
    ctx: &GemmContext,
    x: KernelArg,
    w: KernelArg,
    b: KernelArg,
    y: KernelArg,
) -> Vec<Launch> {
    let relu = activation == Activation::Relu;
    let sizes = [int(s.batch), int(s.in_features), int(s.out_features)];
    let args = |parts| [&[x, w, b, y, parts][..], &sizes, &[int(relu as usize)]].concat();
    let kernel = engine!(precision, "linear_forward");
    let sum_parts = |splits| linear_sum_parts(ctx, splits, b, y, s.batch, s.out_features, relu);
    let (rows, cols, depth) = (s.batch, s.out_features, s.in_features);
    split_gemm(kernel, rows, cols, depth, ctx, args, sum_parts)
}

pub(crate) fn backward_input(
    s: &LinearShape,
    precision: Precision,
    ctx: &GemmContext,
    w: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let sizes = [int(s.batch), int(s.in_features), int(s.out_features)];
    let args = |parts| [&[w, dy, dx, parts][..], &sizes].concat();
    let kernel = engine!(precision, "linear_backward_input");
    let sum_parts =
        |splits| linear_sum_parts(ctx, splits, NO_PARTS, dx, s.batch, s.in_features, false);
    let (rows, cols, depth) = (s.batch, s.in_features, s.out_features);
    split_gemm(kernel, rows, cols, depth, ctx, args, sum_parts)
}

#[allow(clippy::too_many_arguments)] // the op's operands, and how it computes
pub(crate) fn backward_weight(
    s: &LinearShape,
    precision: Precision,
    ctx: &GemmContext,
    x: KernelArg,
    dy: KernelArg,
    dw: KernelArg,
    db: KernelArg,
) -> Vec<Launch> {
    let sizes = [int(s.batch), int(s.in_features), int(s.out_features)];
    let args = |parts| [&[x, dy, dw, parts][..], &sizes].concat();
    let kernel = engine!(precision, "linear_backward_weight");
    let sum_parts = |splits| {
        linear_sum_parts(
            ctx,
            splits,
            NO_PARTS,
            dw,
            s.out_features,
            s.in_features,
            false,
        )
    };
    let (rows, cols, depth) = (s.out_features, s.in_features, s.batch);
    let mut launches = split_gemm(kernel, rows, cols, depth, ctx, args, sum_parts);
    let bias_args = vec![dy, db, int(s.batch), int(s.out_features)];
    launches.push(Launch::linear(
        "linear_backward_bias",
        s.out_features,
        BLOCK,
        bias_args,
    ));
    launches
}
