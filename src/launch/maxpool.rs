//! How the kernels of `kernels/maxpool.cu` are launched: one thread per output element (forward)
//! or per input element (backward).

use super::{int, KernelArg, Launch, BLOCK};
use crate::Pool2dShape;

/// `threads` threads of `kernel`, which takes `pointers` and then the planes, height and width.
fn pool(kernel: &'static str, threads: usize, pointers: &[KernelArg], s: &Pool2dShape) -> Launch {
    let sizes = [int(s.batch * s.channels), int(s.height), int(s.width)];
    Launch::linear(kernel, threads, BLOCK, [pointers, &sizes].concat())
}

pub(crate) fn relu_forward(
    s: &Pool2dShape,
    x: KernelArg,
    y: KernelArg,
    argmax: KernelArg,
) -> Vec<Launch> {
    let pointers = [x, y, argmax];
    vec![pool("maxpool2d_relu_forward", s.output_len(), &pointers, s)]
}

pub(crate) fn relu_backward(
    s: &Pool2dShape,
    argmax: KernelArg,
    y: KernelArg,
    dy: KernelArg,
    dx: KernelArg,
) -> Vec<Launch> {
    let pointers = [argmax, y, dy, dx];
    vec![pool("maxpool2d_relu_backward", s.input_len(), &pointers, s)]
}
