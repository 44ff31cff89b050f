//! Linear forward (plain and with the fused ReLU), input and weight gradients, in fp32 and TF32,
//! and the TF32 rounding itself.

use kernels::{Activation, Device, Precision};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::gemm::{check, random_linear, LINEAR_LARGE, LINEAR_SHAPES};
use crate::common::{devices, download, linear, nan_buffer, upload};

#[test]
fn linear_fp32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for s in LINEAR_SHAPES.into_iter().chain(LINEAR_LARGE) {
        check(&s, Precision::Fp32, &mut rng);
    }
    for _ in 0..10 {
        let s = random_linear(&mut rng);
        check(&s, Precision::Fp32, &mut rng);
    }
}

#[test]
fn linear_tf32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(15);
    // fc2 in place of fc1: its forward pass and input gradient split their sums too, at a third
    // of the cost of three references.
    for s in LINEAR_SHAPES.into_iter().chain([linear(64, 1024, 512)]) {
        check(&s, Precision::Tf32, &mut rng);
    }
}

/// No images, no input features: empty outputs, or sums of nothing (the bias alone, and 0).
#[test]
fn linear_of_empty_shapes_matches_reference() {
    let mut rng = StdRng::seed_from_u64(16);
    for s in [linear(0, 5, 3), linear(2, 0, 3)] {
        check(&s, Precision::Fp32, &mut rng);
    }
}

/// TF32 rounds to nearest with ties away from zero before multiplying: 1 + 2^-11 (a tie) becomes
/// 1 + 2^-10, and 1 + 2^-12 becomes 1, so x·w differs from fp32 in a way only rounding explains.
/// (Truncation, or no rounding at all, gives other sums; these are exact in fp32.)
#[test]
fn linear_tf32_rounds_operands_to_nearest_ties_away() {
    let s = linear(1, 8, 1);
    let x = [1.0 + 2f32.powi(-11); 8];
    let w = [1.0 + 2f32.powi(-12); 8];
    let with_tf32 = |dev: &&Device| dev.check_precision(Precision::Tf32).is_ok();
    for dev in devices().iter().filter(with_tf32) {
        let (xb, wb, b) = (upload(dev, &x), upload(dev, &w), upload(dev, &[0.0]));
        let mut y = nan_buffer(dev, 1);
        for (precision, want) in [
            (Precision::Tf32, 8.0 * (1.0 + 2f32.powi(-10))),
            (
                Precision::Fp32,
                8.0 * (1.0 + 2f32.powi(-11)) * (1.0 + 2f32.powi(-12)),
            ),
        ] {
            dev.linear_forward(&s, precision, Activation::None, &xb, &wb, &b, &mut y)
                .unwrap();
            assert_eq!(download(dev, &y), [want], "{} {precision}", dev.name());
        }
    }
}
