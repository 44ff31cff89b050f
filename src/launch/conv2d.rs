//! How the kernels of `kernels/conv2d.cu` are launched: each pass is a GEMM over the image's
//! pixels (see `gemm.rs`).

use super::gemm::{engine, gemm, split_gemm, GemmContext};
use super::{int, KernelArg, Launch, BLOCK};
use crate::{Conv2dShape, Precision};

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

pub(crate) fn forward(
    s: &Conv2dShape,
    precision: Precision,
    x: KernelArg,
    w: KernelArg,
    b: KernelArg,
    y: KernelArg,
) -> Vec<Launch> {
    let pixels = s.batch * s.out_height() * s.out_width();
    let mut args = vec![x, w, b, y];
    args.extend(conv_sizes(s));
    let kernel = engine!(precision, "conv2d_forward");
    vec![gemm(kernel, s.out_channels, pixels, args)]
}

pub(crate) fn backward_input(
    s: &Conv2dShape,
    precision: Precision,
    w: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let pixels = s.batch * s.height * s.width;
    let mut args = vec![w, dy, dx];
    args.extend(conv_sizes(s));
    let kernel = engine!(precision, "conv2d_backward_input");
    vec![gemm(kernel, s.in_channels, pixels, args)]
}

pub(crate) fn backward_weight(
    s: &Conv2dShape,
    precision: Precision,
    ctx: &GemmContext,
    x: KernelArg,
    dy: KernelArg,
    dw: KernelArg,
    db: KernelArg,
) -> Vec<Launch> {
    // One column per weight of an output channel, and one more for its bias.
    let cols = s.in_channels * s.kernel * s.kernel + 1;
    let pixels = s.batch * s.out_height() * s.out_width();
    let kernel = engine!(precision, "conv2d_backward_weight");
    let args = |parts| [vec![x, dy, dw, db, parts], conv_sizes(s).to_vec()].concat();
    let sum_parts = |splits| {
        let args = [vec![ctx.parts, int(splits), dw, db], conv_sizes(s).to_vec()].concat();
        let name = "conv2d_backward_weight_sum_parts";
        Launch::linear(name, s.out_channels * cols, BLOCK, args)
    };
    split_gemm(kernel, s.out_channels, cols, pixels, ctx, args, sum_parts)
}
