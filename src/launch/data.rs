//! How the data-movement kernels of `kernels/data.cu` are launched: one thread per element.

use super::{KernelArg, Launch, BLOCK};

/// One thread per output pixel of `count` images.
pub(crate) fn gather_images(
    image_len: u32,
    image_count: u32,
    count: u32,
    images: KernelArg,
    indices: KernelArg,
    out: KernelArg,
) -> Vec<Launch> {
    use KernelArg::U32;
    let threads = count as usize * image_len as usize;
    let args = vec![
        images,
        indices,
        out,
        U32(image_len),
        U32(image_count),
        U32(count),
    ];
    vec![Launch::linear("gather_images", threads, BLOCK, args)]
}

/// One thread per label.
pub(crate) fn gather_labels(
    label_count: u32,
    count: u32,
    labels: KernelArg,
    indices: KernelArg,
    out: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        labels,
        indices,
        out,
        KernelArg::U32(label_count),
        KernelArg::U32(count),
    ];
    vec![Launch::linear("gather_labels", count as usize, BLOCK, args)]
}

/// One thread per 32-bit word.
pub(crate) fn fill_zero(words: u32, buf: KernelArg) -> Vec<Launch> {
    vec![Launch::linear(
        "fill_zero",
        words as usize,
        BLOCK,
        vec![buf, KernelArg::U32(words)],
    )]
}
