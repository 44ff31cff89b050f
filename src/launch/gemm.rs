//! The launch of every GEMM-shaped kernel (conv2d.cu and linear.cu, on the tile loop of
//! `kernels/gemm.cuh`): a 2-D grid of output tiles, and a sum split across blocks where the output
//! has too few tiles to fill the GPU.

use super::{KernelArg, Launch};
use crate::gpu_arch::{self, ComputeCapability};

/// Rows and columns of the output tile of one block of the GEMM kernels (`GEMM_TILE` in
/// kernels/gemm.cuh), which run `GEMM_THREADS` threads each.
const GEMM_TILE: usize = 64;
const GEMM_THREADS: u32 = 256;
/// Depth of the operand slices the GEMM kernels stage in shared memory (`GEMM_DEPTH`): a split of
/// a sum takes whole slices.
const GEMM_TILE_DEPTH: usize = 16;
/// The shortest part of a sum worth a block of its own: shorter, and writing and adding the parts
/// costs more than the extra blocks gain.
const MIN_SPLIT_DEPTH: usize = 128;

/// What a GEMM launch needs to know of its device: how many SMs to fill, its compute capability
/// (whose code's registers say how many blocks an SM holds), and where split sums write their
/// partial products (`parts`, `parts_len` floats, held by the device for the op).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmContext {
    pub sm_count: usize,
    pub capability: ComputeCapability,
    pub parts: KernelArg,
    pub parts_len: usize,
}

/// Blocks per SM a split grid aims at without a ptxas report (a binary built without NVRTC):
/// a second block to run while the first waits for memory.
const DEFAULT_BLOCKS_PER_SM: usize = 2;
/// The most blocks per SM a split grid aims at: what the GEMM kernels' registers allow at best
/// (64 registers at 256 threads). More parts would only add partial tiles to write and add.
const MAX_BLOCKS_PER_SM: usize = 4;

/// Blocks a GEMM grid should have: as many as the SMs hold at once, `blocks_per_sm` each.
fn target_blocks(sm_count: usize, blocks_per_sm: usize) -> usize {
    blocks_per_sm.clamp(1, MAX_BLOCKS_PER_SM) * sm_count.max(1)
}

/// Floats of workspace that every split GEMM fits in. A sum is split only when its output has
/// fewer tiles than `target_blocks`, into at most ⌈target / tiles⌉ parts, so the parts cover
/// fewer than 2·target tiles.
pub(crate) fn gemm_parts_len(sm_count: usize) -> usize {
    2 * target_blocks(sm_count, MAX_BLOCKS_PER_SM) * GEMM_TILE * GEMM_TILE
}

/// A null pointer, for the parts of a sum that is not split.
pub(super) const NO_PARTS: KernelArg = KernelArg::Ptr(0);

/// The kernel that runs pass `$fp32` with `$precision`: `$fp32` itself on the SIMT engine, its
/// `_tf32` twin on the tensor cores.
macro_rules! engine {
    ($precision:expr, $fp32:literal) => {
        match $precision {
            crate::Precision::Fp32 => $fp32,
            crate::Precision::Tf32 => concat!($fp32, "_tf32"),
        }
    };
}
pub(super) use engine;

/// A 2-D grid of GEMM blocks covering an output matrix of `rows` x `cols`: x runs along columns.
pub(crate) fn gemm(kernel: &'static str, rows: usize, cols: usize, args: Vec<KernelArg>) -> Launch {
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
/// `depth`: enough for `target` blocks in all, none shorter than `MIN_SPLIT_DEPTH`, and, as the
/// kernels' `depth_range` gives part z the slices [z·per_part, (z + 1)·per_part), none left empty.
fn depth_splits(tiles: usize, depth: usize, target: usize) -> usize {
    let wanted = target.div_ceil(tiles).min(depth / MIN_SPLIT_DEPTH).max(1);
    let slices = depth.div_ceil(GEMM_TILE_DEPTH).max(1);
    let slices_per_part = slices.div_ceil(wanted);
    slices.div_ceil(slices_per_part)
}

/// A GEMM launch whose sum over `depth` is split across blocks where its output has too few
/// tiles to fill the GPU. `args(parts)` are the kernel's arguments given where its partial
/// products go; split, they go to the context's workspace and `sum_parts(splits)` launches the
/// pass that adds them up in order. Unsplit, the kernel stores its tiles directly.
pub(super) fn split_gemm(
    kernel: &'static str,
    rows: usize,
    cols: usize,
    depth: usize,
    ctx: &GemmContext,
    args: impl Fn(KernelArg) -> Vec<KernelArg>,
    sum_parts: impl FnOnce(usize) -> Launch,
) -> Vec<Launch> {
    let mut launch = gemm(kernel, rows, cols, args(NO_PARTS));
    let tiles = (launch.grid[0] * launch.grid[1]) as usize;
    let blocks_per_sm = gpu_arch::resident_blocks(kernel, GEMM_THREADS, ctx.capability)
        .unwrap_or(DEFAULT_BLOCKS_PER_SM);
    let splits = depth_splits(tiles, depth, target_blocks(ctx.sm_count, blocks_per_sm));
    // Always true by gemm_parts_len's bound; a guard, not a path.
    let fits = splits * rows * cols <= ctx.parts_len;
    if splits == 1 || !fits {
        return vec![launch];
    }
    launch.grid[2] = splits as u32;
    launch.args = args(ctx.parts);
    vec![launch, sum_parts(splits)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::{conv2d, linear};
    use crate::{Activation, Conv2dShape, LinearShape, Precision};

    // Distinct pointers, so that a test can tell which buffer a launch writes.
    const X: KernelArg = KernelArg::Ptr(0x1000);
    const W: KernelArg = KernelArg::Ptr(0x2000);
    const B: KernelArg = KernelArg::Ptr(0x3000);
    const DY: KernelArg = KernelArg::Ptr(0x4000);
    const OUT: KernelArg = KernelArg::Ptr(0x5000);
    const DB: KernelArg = KernelArg::Ptr(0x6000);
    const PARTS: KernelArg = KernelArg::Ptr(0x7000);

    /// An H200's context.
    const CTX: GemmContext = GemmContext {
        sm_count: 132,
        capability: ComputeCapability::new(9, 0),
        parts: PARTS,
        parts_len: 2 * 4 * 132 * 64 * 64,
    };
    const FP32: Precision = Precision::Fp32;

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

    fn fc(batch: usize, in_features: usize, out_features: usize) -> LinearShape {
        LinearShape {
            batch,
            in_features,
            out_features,
        }
    }

    /// The launch of `kernel` among `launches`, checked against the GPU's limits.
    fn find<'a>(launches: &'a [Launch], kernel: &str) -> &'a Launch {
        let launch = launches.iter().find(|l| l.kernel == kernel).unwrap();
        launch.check_limits().unwrap();
        launch
    }

    /// Checks a split: the product writes its parts, and the next launch adds them into `out`.
    fn assert_split(launches: &[Launch], kernel: &str, sum_kernel: &str, out: KernelArg) {
        let product = find(launches, kernel);
        let splits = product.grid[2];
        assert!(splits > 1, "{kernel} is not split");
        assert!(product.args.contains(&PARTS), "{kernel} writes no parts");
        let position = launches.iter().position(|l| l.kernel == kernel).unwrap();
        let sum = &launches[position + 1];
        assert_eq!(sum.kernel, sum_kernel);
        sum.check_limits().unwrap();
        assert_eq!(sum.args[..2], [PARTS, KernelArg::I32(splits as i32)]);
        assert!(
            sum.args.contains(&out),
            "{sum_kernel} does not write the output"
        );
        assert!(!launches.iter().any(|l| l.kernel == "fill_zero"));
    }

    /// conv1's weight gradient, one output tile over 64·784 pixels, is split into as many parts
    /// as the SMs hold blocks of its kernel at once, by ptxas's report for the GPU's code.
    #[test]
    fn split_grids_are_sized_from_the_kernels_occupancy() {
        let s = conv(64, 1, 32, 28);
        for capability in [ComputeCapability::new(7, 5), ComputeCapability::new(9, 0)] {
            let ctx = GemmContext { capability, ..CTX };
            let kernel = "conv2d_backward_weight";
            let Some(per_sm) = gpu_arch::resident_blocks(kernel, GEMM_THREADS, capability) else {
                eprintln!("skipped: built without NVRTC, no ptxas report");
                return;
            };
            let launches = conv2d::backward_weight(&s, FP32, &ctx, X, DY, OUT, DB);
            let depth = 64 * 28 * 28;
            let target = per_sm.clamp(1, MAX_BLOCKS_PER_SM) * 132;
            assert_eq!(
                find(&launches, kernel).grid[2] as usize,
                depth_splits(1, depth, target),
                "{capability}: {per_sm} blocks per SM"
            );
        }
    }

    #[test]
    fn the_networks_long_sums_are_split_into_parts_added_by_a_second_pass() {
        for s in [
            conv(64, 1, 32, 28),
            conv(64, 32, 64, 14),
            conv(1024, 1, 32, 28),
            conv(1024, 32, 64, 14),
        ] {
            let launches = conv2d::backward_weight(&s, FP32, &CTX, X, DY, OUT, DB);
            let sum = "conv2d_backward_weight_sum_parts";
            assert_split(&launches, "conv2d_backward_weight", sum, OUT);
            assert!(launches[1].args.contains(&DB), "{s:?}");
        }
        for s in [fc(64, 3136, 1024), fc(64, 1024, 512), fc(64, 512, 10)] {
            let relu = Activation::Relu;
            let launches = linear::forward(&s, FP32, relu, &CTX, X, W, B, OUT);
            assert_split(&launches, "linear_forward", "linear_sum_parts", OUT);
            // The second pass applies the epilogue: the bias, and relu (the last argument).
            assert!(launches[1].args.contains(&B));
            assert_eq!(launches[1].args.last(), Some(&KernelArg::I32(1)));
        }
        for s in [fc(64, 3136, 1024), fc(64, 1024, 512)] {
            let launches = linear::backward_input(&s, FP32, &CTX, W, DY, OUT);
            assert_split(&launches, "linear_backward_input", "linear_sum_parts", OUT);
        }
        for s in [fc(1024, 1024, 512), fc(1024, 512, 10)] {
            let launches = linear::backward_weight(&s, FP32, &CTX, X, DY, OUT, DB);
            assert_split(&launches, "linear_backward_weight", "linear_sum_parts", OUT);
            assert_eq!(launches.last().unwrap().kernel, "linear_backward_bias");
        }
    }

    #[test]
    fn short_sums_and_many_tiles_are_not_split() {
        for s in [conv(1, 1, 4, 5), conv(2, 3, 8, 6)] {
            let launches = conv2d::backward_weight(&s, FP32, &CTX, X, DY, OUT, DB);
            assert_eq!(launches.len(), 1, "{s:?}");
            let launch = find(&launches, "conv2d_backward_weight");
            assert_eq!(launch.grid[2], 1);
            assert!(launch.args.contains(&NO_PARTS));
        }
        // The batch of 64 is the weight gradient's whole sum; fc1's at 1024 has 784 tiles.
        for s in [fc(64, 3136, 1024), fc(64, 512, 10), fc(1024, 3136, 1024)] {
            let launches = linear::backward_weight(&s, FP32, &CTX, X, DY, OUT, DB);
            assert_eq!(launches.len(), 2, "{s:?}");
            assert_eq!(find(&launches, "linear_backward_weight").grid[2], 1);
        }
        // fc3's input gradient sums over its 10 outputs.
        let launches = linear::backward_input(&fc(64, 512, 10), FP32, &CTX, W, DY, OUT);
        assert_eq!(launches.len(), 1);
        let none = Activation::None;
        let launches = linear::forward(&fc(5, 37, 13), FP32, none, &CTX, X, W, B, OUT);
        assert_eq!(launches.len(), 1);
    }

    #[test]
    fn tf32_picks_the_tensor_core_kernels_with_the_same_arguments() {
        let (c, l) = (conv(64, 32, 64, 14), fc(64, 3136, 1024));
        let tf32 = Precision::Tf32;
        let none = Activation::None;
        let pairs = [
            (
                conv2d::forward(&c, FP32, X, W, B, OUT),
                conv2d::forward(&c, tf32, X, W, B, OUT),
            ),
            (
                conv2d::backward_input(&c, FP32, W, DY, OUT),
                conv2d::backward_input(&c, tf32, W, DY, OUT),
            ),
            (
                conv2d::backward_weight(&c, FP32, &CTX, X, DY, OUT, DB),
                conv2d::backward_weight(&c, tf32, &CTX, X, DY, OUT, DB),
            ),
            (
                linear::forward(&l, FP32, none, &CTX, X, W, B, OUT),
                linear::forward(&l, tf32, none, &CTX, X, W, B, OUT),
            ),
            (
                linear::backward_input(&l, FP32, &CTX, W, DY, OUT),
                linear::backward_input(&l, tf32, &CTX, W, DY, OUT),
            ),
            (
                linear::backward_weight(&l, FP32, &CTX, X, DY, OUT, DB),
                linear::backward_weight(&l, tf32, &CTX, X, DY, OUT, DB),
            ),
        ];
        for (fp32, tf32) in pairs {
            assert_eq!(fp32.len(), tf32.len());
            let (product, product_tf32) = (&fp32[0], &tf32[0]);
            assert_eq!(product_tf32.kernel, format!("{}_tf32", product.kernel));
            assert_eq!(product_tf32.args, product.args);
            // The same tiles; how far the sum is split follows each kernel's own occupancy.
            assert_eq!(product_tf32.grid[..2], product.grid[..2]);
            let kernels =
                |launches: &[Launch]| launches.iter().map(|l| l.kernel).collect::<Vec<_>>();
            assert_eq!(
                kernels(&fp32[1..]),
                kernels(&tf32[1..]),
                "the passes after the product are shared"
            );
        }
    }

    #[test]
    fn splits_cover_the_depth_in_nonempty_parts_of_whole_slices_within_the_workspace() {
        for sm_count in [1, 16, 132] {
            let target = target_blocks(sm_count, MAX_BLOCKS_PER_SM);
            for tiles in [1, 5, 16, 100, 264, 1000] {
                for depth in [0, 1, 255, 256, 257, 1000, 3136, 12_544, 50_176, 802_816] {
                    let splits = depth_splits(tiles, depth, target);
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
                    assert!(splits * tiles <= target + tiles, "{what}: too many");
                    let parts = splits * tiles * GEMM_TILE * GEMM_TILE;
                    assert!(
                        splits == 1 || parts <= gemm_parts_len(sm_count),
                        "{what}: past the workspace"
                    );
                }
            }
        }
    }
}
