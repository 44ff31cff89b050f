//! Linear forward (plain and with the fused ReLU), input and weight gradients, in fp32 and TF32,
//! and the TF32 rounding itself.

use kernels::reference as r;
use kernels::{Activation, Device, LinearShape, Precision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{devices, download, linear, nan_buffer, upload};
use crate::gemm::{check, GemmInputs, GemmOp, Outputs};

impl GemmOp for LinearShape {
    fn lens(&self) -> [usize; 4] {
        [
            self.input_len(),
            self.weight_len(),
            self.out_features,
            self.output_len(),
        ]
    }

    fn run(&self, dev: &Device, precision: Precision, i: &GemmInputs) -> Outputs {
        let s = self;
        let (x, w, b, dy) = (
            upload(dev, &i.x),
            upload(dev, &i.w),
            upload(dev, &i.b),
            upload(dev, &i.dy),
        );
        let mut y = nan_buffer(dev, s.output_len());
        let mut y_relu = nan_buffer(dev, s.output_len());
        let mut dx = nan_buffer(dev, s.input_len());
        let mut dw = nan_buffer(dev, s.weight_len());
        let mut db = nan_buffer(dev, s.out_features);
        let done = |result: kernels::Result<()>| result.map_err(|e| e.to_string());
        let plain = Activation::None;
        let forward = done(dev.linear_forward(s, precision, plain, &x, &w, &b, &mut y));
        let relu = Activation::Relu;
        let forward_relu = done(dev.linear_forward(s, precision, relu, &x, &w, &b, &mut y_relu));
        let input = done(dev.linear_backward_input(s, precision, &w, &dy, &mut dx));
        let weight = done(dev.linear_backward_weight(s, precision, &x, &dy, &mut dw, &mut db));
        vec![
            ("y", forward.map(|()| download(dev, &y))),
            ("relu(y)", forward_relu.map(|()| download(dev, &y_relu))),
            ("dx", input.map(|()| download(dev, &dx))),
            ("dweight", weight.clone().map(|()| download(dev, &dw))),
            ("dbias", weight.map(|()| download(dev, &db))),
        ]
    }

    fn reference(&self, [x, w, b, dy]: [Vec<f64>; 4]) -> Vec<(&'static str, Vec<f64>)> {
        let s = self;
        let mut y = vec![0.0; s.output_len()];
        let mut y_relu = vec![0.0; s.output_len()];
        let mut dx = vec![0.0; s.input_len()];
        let mut dw = vec![0.0; s.weight_len()];
        let mut db = vec![0.0; s.out_features];
        r::linear_forward(s, &x, &w, &b, &mut y);
        r::relu_forward(&y, &mut y_relu);
        r::linear_backward_input(s, &w, &dy, &mut dx);
        r::linear_backward_weight(s, &x, &dy, &mut dw, &mut db);
        vec![
            ("y", y),
            ("relu(y)", y_relu),
            ("dx", dx),
            ("dweight", dw),
            ("dbias", db),
        ]
    }

    /// The kernels' bias gradient sums dy in fp32 (a conv's bias gradient is a column of its
    /// product).
    fn fp32_outputs(&self) -> &'static [&'static str] {
        &["dbias"]
    }
}

/// Shapes checked in both precisions: odd sizes, more than one 64-wide tile, the network's last
/// layer, and the last layer at a large batch, whose weight gradient splits its sum over the
/// batch on the kernels.
const SHAPES: [LinearShape; 8] = [
    linear(1, 1, 1),
    linear(1, 7, 3),
    linear(5, 37, 13),
    linear(13, 33, 17),
    linear(70, 129, 65),
    linear(64, 300, 130),
    linear(64, 512, 10),
    linear(1024, 512, 10),
];

#[test]
fn linear_fp32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    // fc1 whole: its forward pass and input gradient split their sums across blocks on the
    // kernels; and large products the cpu device splits across threads, unevenly.
    let large = [
        linear(64, 3136, 1024),
        linear(5, 3136, 1024),
        linear(64, 1000, 513),
    ];
    for s in SHAPES.into_iter().chain(large) {
        check(&s, Precision::Fp32, &mut rng);
    }
    for _ in 0..10 {
        let s = linear(
            rng.random_range(1..=70),
            rng.random_range(1..=300),
            rng.random_range(1..=300),
        );
        check(&s, Precision::Fp32, &mut rng);
    }
}

#[test]
fn linear_tf32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(15);
    // fc2 in place of fc1: its forward pass and input gradient split their sums too, at a third
    // of the cost of three references.
    for s in SHAPES.into_iter().chain([linear(64, 1024, 512)]) {
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
    for dev in devices().iter().filter(|dev| **dev != Device::Cpu) {
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
