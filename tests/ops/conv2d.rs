//! conv2d forward, input and weight gradients, in fp32 and TF32: odd shapes that fill no tile,
//! the network's layers, strides and paddings of every kind, random shapes, and empty ones.

use kernels::reference as r;
use kernels::{Conv2dShape, Device, Precision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{conv, download, nan_buffer, upload};
use crate::gemm::{check, GemmInputs, GemmOp, Outputs};

impl GemmOp for Conv2dShape {
    fn lens(&self) -> [usize; 4] {
        [
            self.input_len(),
            self.weight_len(),
            self.out_channels,
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
        let mut dx = nan_buffer(dev, s.input_len());
        let mut dw = nan_buffer(dev, s.weight_len());
        let mut db = nan_buffer(dev, s.out_channels);
        let done = |result: kernels::Result<()>| result.map_err(|e| e.to_string());
        let forward = done(dev.conv2d_forward(s, precision, &x, &w, &b, &mut y));
        let input = done(dev.conv2d_backward_input(s, precision, &w, &dy, &mut dx));
        let weight = done(dev.conv2d_backward_weight(s, precision, &x, &dy, &mut dw, &mut db));
        vec![
            ("y", forward.map(|()| download(dev, &y))),
            ("dx", input.map(|()| download(dev, &dx))),
            ("dweight", weight.clone().map(|()| download(dev, &dw))),
            ("dbias", weight.map(|()| download(dev, &db))),
        ]
    }

    fn reference(&self, [x, w, b, dy]: [Vec<f64>; 4]) -> Vec<(&'static str, Vec<f64>)> {
        let s = self;
        let mut y = vec![0.0; s.output_len()];
        let mut dx = vec![0.0; s.input_len()];
        let mut dw = vec![0.0; s.weight_len()];
        let mut db = vec![0.0; s.out_channels];
        r::conv2d_forward(s, &x, &w, &b, &mut y);
        r::conv2d_backward_input(s, &w, &dy, &mut dx);
        r::conv2d_backward_weight(s, &x, &dy, &mut dw, &mut db);
        vec![("y", y), ("dx", dx), ("dweight", dw), ("dbias", db)]
    }
}

/// Shapes checked in both precisions.
const SHAPES: [Conv2dShape; 14] = [
    // The network's two layers, with small batches.
    conv(1, 1, 32, 28, 28, 3, 1, 1),
    conv(3, 1, 32, 28, 28, 3, 1, 1),
    conv(2, 32, 64, 14, 14, 3, 1, 1),
    conv(2, 3, 5, 7, 9, 3, 1, 1),
    // Strides, paddings and kernels of other sizes.
    conv(2, 4, 6, 9, 8, 3, 2, 0),
    conv(1, 3, 5, 7, 9, 3, 2, 0),
    conv(2, 4, 3, 11, 6, 3, 2, 2),
    conv(5, 2, 7, 13, 13, 5, 1, 2),
    conv(1, 2, 3, 8, 7, 5, 2, 2),
    conv(3, 2, 3, 7, 10, 4, 3, 1),
    // More than one tile of output channels, then of input channels.
    conv(3, 5, 70, 6, 5, 3, 2, 1),
    conv(2, 70, 3, 5, 5, 1, 1, 0),
    // One pixel; a kernel larger than the input, which only the padding makes fit.
    conv(1, 1, 1, 1, 1, 1, 1, 0),
    conv(1, 2, 2, 2, 3, 3, 1, 2),
];

/// A shape with every size random: batches, channels and sides that are multiples of nothing.
fn random_shape(rng: &mut StdRng) -> Conv2dShape {
    let kernel: usize = rng.random_range(1..=5);
    let padding = rng.random_range(0..=kernel.min(3) - 1);
    let side = kernel.saturating_sub(2 * padding).max(1)..=17;
    Conv2dShape {
        batch: rng.random_range(1..=4),
        in_channels: rng.random_range(1..=6),
        out_channels: rng.random_range(1..=9),
        height: rng.random_range(side.clone()),
        width: rng.random_range(side),
        kernel,
        stride: rng.random_range(1..=3),
        padding,
    }
}

#[test]
fn conv2d_fp32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(10);
    // The network's two layers, whole: long sums over the batch, which the weight gradient splits
    // across blocks on the kernels.
    let whole_network = [
        conv(64, 1, 32, 28, 28, 3, 1, 1),
        conv(64, 32, 64, 14, 14, 3, 1, 1),
    ];
    for s in SHAPES.into_iter().chain(whole_network) {
        check(&s, Precision::Fp32, &mut rng);
    }
    for _ in 0..20 {
        let s = random_shape(&mut rng);
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
    for s in SHAPES.into_iter().chain(network) {
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
