//! How the kernel of `kernels/relu.cu` is launched: one thread per element.

use super::{int, KernelArg, Launch, BLOCK};

pub(crate) fn backward(len: usize, y: KernelArg, dy: KernelArg, dx: KernelArg) -> Vec<Launch> {
    let args = vec![y, dy, dx, int(len)];
    vec![Launch::linear("relu_backward", len, BLOCK, args)]
}
