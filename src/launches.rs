//! How each op of the CUDA kernels in `kernels/*.cu` is launched: grid, block, shared memory and
//! argument order, built once and run by either executor (GPU or emulator).
//!
//! The arguments follow each kernel's C signature exactly. Sizes travel as `int`: every index a
//! kernel computes is below the length of some buffer, so buffers must hold fewer than 2³¹
//! elements.

use crate::data_launches;
use crate::launch::{KernelArg, Launch};
use crate::{
    Activation, AdamHyper, AdamStep, Conv2dShape, LinearShape, Pool2dShape, Precision, XentShape,
};

/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;
/// Rows and columns of the output tile of one block of the GEMM kernels (`TILE` in linear.cu and
/// conv2d.cu), which run `GEMM_THREADS` threads each (a 16x16 grid of 4x4 micro-tiles).
const GEMM_TILE: usize = 64;
const GEMM_THREADS: u32 = 256;
/// Depth of the operand slices the GEMM kernels stage in shared memory (`TILE_DEPTH`): a split of
/// a sum takes whole slices.
const GEMM_TILE_DEPTH: usize = 16;
/// Blocks a GEMM grid should have: two per SM of a big GPU (132 on an H100 or H200), so that
/// every SM has a second block to run while the first waits for memory.
const GEMM_TARGET_BLOCKS: usize = 2 * 132;
/// The shortest part of a sum worth a block of its own: shorter, and zeroing the output and adding
/// the parts atomically cost more than the extra blocks gain.
const MIN_SPLIT_DEPTH: usize = 128;
/// Threads per warp, the unit of work of the softmax kernels (one row each).
const WARP: u32 = 32;
/// The fused loss runs in one block of at most this many threads (32 warps).
const MAX_FUSED_XENT_THREADS: u32 = 1024;

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

/// Into how many parts (`blockIdx.z`) a GEMM with `tiles` output tiles splits its sum over
/// `depth`: enough for `GEMM_TARGET_BLOCKS` blocks in all, none shorter than `MIN_SPLIT_DEPTH`,
/// and, as the kernels' `depth_range` gives part z the slices [z·per_part, (z + 1)·per_part),
/// none left empty.
fn depth_splits(tiles: usize, depth: usize) -> usize {
    let wanted = GEMM_TARGET_BLOCKS
        .div_ceil(tiles)
        .min(depth / MIN_SPLIT_DEPTH)
        .max(1);
    let slices = depth.div_ceil(GEMM_TILE_DEPTH).max(1);
    let slices_per_part = slices.div_ceil(wanted);
    slices.div_ceil(slices_per_part)
}

/// A GEMM launch whose sum over `depth` is split across blocks where its output has too few
/// tiles to fill the GPU. The parts are added atomically into the `outputs` (buffer, length), so
/// `fill_zero` launches clear them first; an unsplit launch stores its tiles directly.
fn split_gemm(
    kernel: &'static str,
    rows: usize,
    cols: usize,
    depth: usize,
    outputs: &[(KernelArg, usize)],
    args: Vec<KernelArg>,
) -> Vec<Launch> {
    let mut launch = gemm(kernel, rows, cols, args);
    let splits = depth_splits((launch.grid[0] * launch.grid[1]) as usize, depth);
    if splits == 1 {
        return vec![launch];
    }
    launch.grid[2] = splits as u32;
    let mut launches: Vec<Launch> = outputs
        .iter()
        .flat_map(|&(buf, len)| data_launches::fill_zero(len as u32, buf))
        .collect();
    launches.push(launch);
    launches
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
    _precision: Precision,
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
    _precision: Precision,
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
    _precision: Precision,
    x: KernelArg,
    dy: KernelArg,
    dw: KernelArg,
    db: KernelArg,
) -> Vec<Launch> {
    // One column per weight of an output channel, and one more for its bias.
    let cols = s.in_channels * s.kernel * s.kernel + 1;
    let pixels = s.batch * s.out_height() * s.out_width();
    let mut args = vec![x, dy, dw, db];
    args.extend(conv_sizes(s));
    let outputs = [(dw, s.weight_len()), (db, s.out_channels)];
    split_gemm(
        "conv2d_backward_weight",
        s.out_channels,
        cols,
        pixels,
        &outputs,
        args,
    )
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
    _precision: Precision,
    activation: Activation,
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
    let outputs = [(y, s.batch * s.out_features)];
    let mut launches = split_gemm(
        "linear_forward",
        s.batch,
        s.out_features,
        s.in_features,
        &outputs,
        args,
    );
    if activation == Activation::Relu {
        launches.extend(relu_forward(s.batch * s.out_features, y, y));
    }
    launches
}

pub(crate) fn linear_backward_input(
    s: &LinearShape,
    _precision: Precision,
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
    let outputs = [(dx, s.batch * s.in_features)];
    split_gemm(
        "linear_backward_input",
        s.batch,
        s.in_features,
        s.out_features,
        &outputs,
        args,
    )
}

pub(crate) fn linear_backward_weight(
    s: &LinearShape,
    _precision: Precision,
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
    let outputs = [(dw, s.out_features * s.in_features)];
    let mut launches = split_gemm(
        "linear_backward_weight",
        s.out_features,
        s.in_features,
        s.batch,
        &outputs,
        args,
    );
    launches.push(Launch::linear(
        "linear_backward_bias",
        s.out_features,
        BLOCK,
        bias_args,
    ));
    launches
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

pub(crate) fn maxpool2d_relu_forward(
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

pub(crate) fn maxpool2d_relu_backward(
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

/// One block, as many warps as rows up to 32 (a warp per row at a time): the row count and the
/// totals are then summed in a fixed order.
pub(crate) fn softmax_xent_fused(
    s: &XentShape,
    logits: KernelArg,
    labels: KernelArg,
    totals: KernelArg,
    dlogits: KernelArg,
) -> Vec<Launch> {
    let args = vec![
        logits,
        labels,
        totals,
        dlogits,
        int(s.batch),
        int(s.classes),
    ];
    let warps = s.batch.clamp(1, (MAX_FUSED_XENT_THREADS / WARP) as usize) as u32;
    vec![Launch {
        kernel: "softmax_xent_fused",
        grid: [1, 1, 1],
        block: [warps * WARP, 1, 1],
        shared_bytes: 0,
        args,
    }]
}

/// One thread per parameter of all the tensors together.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adam_update_tensors(
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

#[cfg(test)]
mod tests {
    use super::*;

    // Distinct pointers, so that a test can tell which buffer a launch clears.
    const X: KernelArg = KernelArg::Ptr(0x1000);
    const W: KernelArg = KernelArg::Ptr(0x2000);
    const B: KernelArg = KernelArg::Ptr(0x3000);
    const DY: KernelArg = KernelArg::Ptr(0x4000);
    const OUT: KernelArg = KernelArg::Ptr(0x5000);
    const DB: KernelArg = KernelArg::Ptr(0x6000);

    /// A 3x3 convolution that keeps the image size, as both of the network's are.
    fn conv(batch: usize, in_channels: usize, out_channels: usize, size: usize) -> Conv2dShape {
        Conv2dShape {
            batch,
            in_channels,
            out_channels,
            height: size,
            width: size,
            kernel: 3,
            stride: 1,
            padding: 1,
        }
    }

    fn linear(batch: usize, in_features: usize, out_features: usize) -> LinearShape {
        LinearShape {
            batch,
            in_features,
            out_features,
        }
    }

    fn clear(buf: KernelArg, len: usize) -> Vec<Launch> {
        data_launches::fill_zero(len as u32, buf)
    }

    /// The launch of `kernel` among `launches`, checked against the GPU's limits.
    fn find<'a>(launches: &'a [Launch], kernel: &str) -> &'a Launch {
        let launch = launches.iter().find(|l| l.kernel == kernel).unwrap();
        launch.check_limits().unwrap();
        launch
    }

    #[test]
    fn the_networks_long_sums_are_split_after_clearing_their_outputs() {
        for s in [
            conv(64, 1, 32, 28),
            conv(64, 32, 64, 14),
            conv(1024, 1, 32, 28),
            conv(1024, 32, 64, 14),
        ] {
            let launches = conv2d_backward_weight(&s, Precision::Fp32, X, DY, OUT, DB);
            let cleared = [clear(OUT, s.weight_len()), clear(DB, s.out_channels)].concat();
            assert_eq!(launches[..2], cleared, "{s:?}");
            assert!(
                find(&launches, "conv2d_backward_weight").grid[2] > 1,
                "{s:?}"
            );
        }
        for s in [
            linear(64, 3136, 1024),
            linear(64, 1024, 512),
            linear(64, 512, 10),
        ] {
            let launches = linear_forward(&s, Precision::Fp32, Activation::None, X, W, B, OUT);
            assert_eq!(launches[..1], clear(OUT, s.batch * s.out_features), "{s:?}");
            assert!(find(&launches, "linear_forward").grid[2] > 1, "{s:?}");
        }
        for s in [linear(64, 3136, 1024), linear(64, 1024, 512)] {
            let launches = linear_backward_input(&s, Precision::Fp32, W, DY, OUT);
            assert_eq!(launches[..1], clear(OUT, s.batch * s.in_features), "{s:?}");
            assert!(
                find(&launches, "linear_backward_input").grid[2] > 1,
                "{s:?}"
            );
        }
        for s in [linear(1024, 1024, 512), linear(1024, 512, 10)] {
            let launches = linear_backward_weight(&s, Precision::Fp32, X, DY, OUT, DB);
            let cleared = clear(OUT, s.out_features * s.in_features);
            assert_eq!(launches[..1], cleared, "{s:?}");
            assert!(
                find(&launches, "linear_backward_weight").grid[2] > 1,
                "{s:?}"
            );
        }
    }

    #[test]
    fn short_sums_and_many_tiles_are_not_split() {
        for s in [conv(1, 1, 4, 5), conv(2, 3, 8, 6)] {
            let launches = conv2d_backward_weight(&s, Precision::Fp32, X, DY, OUT, DB);
            assert_eq!(launches.len(), 1, "{s:?}");
            assert_eq!(find(&launches, "conv2d_backward_weight").grid[2], 1);
        }
        // The batch of 64 is the weight gradient's whole sum; fc1's at 1024 has 784 tiles.
        for s in [
            linear(64, 3136, 1024),
            linear(64, 512, 10),
            linear(1024, 3136, 1024),
        ] {
            let launches = linear_backward_weight(&s, Precision::Fp32, X, DY, OUT, DB);
            assert_eq!(launches.len(), 2, "{s:?}");
            assert_eq!(find(&launches, "linear_backward_weight").grid[2], 1);
        }
        // fc3's input gradient sums over its 10 outputs.
        let launches = linear_backward_input(&linear(64, 512, 10), Precision::Fp32, W, DY, OUT);
        assert_eq!(launches.len(), 1);
        let launches = linear_forward(
            &linear(5, 37, 13),
            Precision::Fp32,
            Activation::None,
            X,
            W,
            B,
            OUT,
        );
        assert_eq!(launches.len(), 1);
    }

    #[test]
    fn splits_cover_the_depth_in_nonempty_parts_of_whole_slices() {
        for tiles in [1, 5, 16, 100, 264, 1000] {
            for depth in [0, 1, 255, 256, 257, 1000, 3136, 12_544, 50_176, 802_816] {
                let splits = depth_splits(tiles, depth);
                // As the kernels' depth_range cuts it:
                let slices = depth.div_ceil(GEMM_TILE_DEPTH).max(1);
                let slices_per_part = slices.div_ceil(splits);
                let what = format!("{tiles} tiles, depth {depth}: {splits} splits");
                assert!((splits - 1) * slices_per_part < slices, "{what}: one empty");
                assert!(splits * slices_per_part >= slices, "{what}: depth left out");
                assert!(
                    splits == 1 || depth / splits >= MIN_SPLIT_DEPTH,
                    "{what}: too short"
                );
                assert!(
                    splits * tiles <= GEMM_TARGET_BLOCKS + tiles,
                    "{what}: too many"
                );
            }
        }
    }
}
