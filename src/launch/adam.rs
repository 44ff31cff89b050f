//! How the kernel of `kernels/adam.cu` is launched.

use super::{int, KernelArg, Launch, BLOCK};
use crate::AdamHyper;

/// One thread per parameter of all the tensors together.
#[allow(clippy::too_many_arguments)]
pub(crate) fn update_tensors(
    hyper: &AdamHyper,
    total: usize,
    tensors: usize,
    params: KernelArg,
    grads: KernelArg,
    offsets: KernelArg,
    m: KernelArg,
    v: KernelArg,
    scalars: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        params,
        grads,
        offsets,
        int(tensors),
        m,
        v,
        KernelArg::F32(hyper.beta1),
        KernelArg::F32(hyper.beta2),
        KernelArg::F32(hyper.eps),
        scalars,
    ];
    vec![Launch::linear("adam_update_tensors", total, BLOCK, args)]
}
