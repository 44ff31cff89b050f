//! conv2d forward, input and weight gradients, in fp32 and TF32: odd shapes that fill no tile,
//! the network's layers, strides and paddings of every kind, random shapes, and empty ones.

use kernels::Precision;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::conv;
use crate::common::gemm::{check, random_conv, random_deep_conv, CONV_SHAPES};

#[test]
fn conv2d_fp32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(10);
    // The network's two layers, whole: long sums over the batch, which the weight gradient splits
    // across blocks on the kernels.
    let whole_network = [
        conv(64, 1, 32, 28, 28, 3, 1, 1),
        conv(64, 32, 64, 14, 14, 3, 1, 1),
    ];
    for s in CONV_SHAPES.into_iter().chain(whole_network) {
        check(&s, Precision::Fp32, &mut rng);
    }
    for _ in 0..20 {
        let s = random_conv(&mut rng);
        check(&s, Precision::Fp32, &mut rng);
    }
    for _ in 0..5 {
        let s = random_deep_conv(&mut rng);
        check(&s, Precision::Fp32, &mut rng);
    }
}

#[test]
fn conv2d_tf32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(12);
    // The network's layers at batch 8, not 64: the weight gradients still split their sums, and
    // the emulated tensor cores cost a few times the SIMT engine.
    let network = [
        conv(8, 1, 32, 28, 28, 3, 1, 1),
        conv(8, 32, 64, 14, 14, 3, 1, 1),
    ];
    for s in CONV_SHAPES.into_iter().chain(network) {
        check(&s, Precision::Tf32, &mut rng);
    }
}

/// No images, no input channels, no output channels: empty outputs, or sums of nothing (0).
#[test]
fn conv2d_of_empty_shapes_matches_reference() {
    let mut rng = StdRng::seed_from_u64(17);
    for s in [
        conv(0, 2, 3, 4, 4, 3, 1, 1),
        conv(2, 0, 3, 4, 4, 3, 1, 1),
        conv(2, 2, 0, 4, 4, 3, 1, 1),
    ] {
        check(&s, Precision::Fp32, &mut rng);
    }
}
