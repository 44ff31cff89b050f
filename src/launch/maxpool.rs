//! How the kernels of `kernels/maxpool.cu` are launched: one thread per output (forward) or per
//! input (backward) element.

use super::{int, KernelArg, Launch, BLOCK};
use crate::Pool2dShape;

pub(crate) fn relu_forward(
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
        "maxpool2d_relu_forward",
        s.output_len(),
        BLOCK,
        args,
    )]
}

pub(crate) fn relu_backward(
    s: &Pool2dShape,
    argmax: KernelArg,
    y: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        argmax,
        y,
        dy,
        dx,
        int(s.batch * s.channels),
        int(s.height),
        int(s.width),
    ];
    vec![Launch::linear(
        "maxpool2d_relu_backward",
        s.input_len(),
        BLOCK,
        args,
    )]
}
