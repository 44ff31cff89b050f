//! The GEMM-shaped ops (convolutions and linear layers: forward, input and weight gradients) on
//! devices, against the reference, by the rule of each precision; and the shapes they are
//! checked on. The cpu device computes fp32 only: asked for TF32, each pass must refuse. Used by
//! the op suite (tests/ops) on every device, and by tests/cpu_vs_reference.rs on the cpu device
//! with each fallback micro-kernel.

use kernels::reference as r;
use kernels::{Activation, Buffer, Conv2dShape, Device, LinearShape, Precision};
use rand::rngs::StdRng;
use rand::Rng;

use super::{
    assert_close, assert_tf32_close, conv, devices, download, linear, nan_buffer, random, tf32,
    upload, widen,
};

/// Convolutions checked in both precisions.
pub const CONV_SHAPES: [Conv2dShape; 22] = [
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
    // Enough input channels for the cpu device to compute the input gradient as a convolution.
    conv(3, 10, 3, 8, 13, 5, 1, 2),
    conv(2, 8, 17, 5, 6, 3, 1, 0),
    // Shallow enough (in·k·k ≤ 9, stride 1) for the cpu device's direct convolution: rows of
    // 16 and of more than 16, output channels not a multiple of its blocks.
    conv(2, 1, 9, 20, 37, 3, 1, 1),
    conv(2, 2, 3, 6, 17, 2, 1, 0),
    conv(3, 9, 5, 5, 4, 1, 1, 0),
    // Deep 3x3 convolutions that keep the image's size, which the cpu device computes by
    // Winograd's transforms in 2x2 blocks: odd sides (a last block half outside), channels no
    // multiple of a vector, more than a tile of output channels, one row; the input gradient
    // too, where the output channels are as many.
    conv(3, 8, 5, 7, 9, 3, 1, 1),
    conv(2, 13, 70, 6, 11, 3, 1, 1),
    conv(2, 9, 16, 1, 3, 3, 1, 1),
];

/// A shape with every size random: batches, channels and sides that are multiples of nothing.
pub fn random_conv(rng: &mut StdRng) -> Conv2dShape {
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

/// A random deep 3x3 convolution that keeps the image's size (the cpu device's Winograd
/// shapes, and their input gradients where the output channels are 8 or more).
pub fn random_deep_conv(rng: &mut StdRng) -> Conv2dShape {
    Conv2dShape {
        batch: rng.random_range(1..=3),
        in_channels: rng.random_range(8..=40),
        out_channels: rng.random_range(1..=70),
        height: rng.random_range(1..=17),
        width: rng.random_range(1..=17),
        kernel: 3,
        stride: 1,
        padding: 1,
    }
}

/// Linear layers checked in both precisions: odd sizes, more than one 64-wide tile, the network's last
/// layer, and the last layer at a large batch, whose weight gradient splits its sum over the
/// batch on the kernels.
pub const LINEAR_SHAPES: [LinearShape; 8] = [
    linear(1, 1, 1),
    linear(1, 7, 3),
    linear(5, 37, 13),
    linear(13, 33, 17),
    linear(70, 129, 65),
    linear(64, 300, 130),
    linear(64, 512, 10),
    linear(1024, 512, 10),
];

/// fc1 whole (its forward pass and input gradient split their sums across blocks on the
/// kernels), and large products the cpu device splits across threads, unevenly: fp32 only.
pub const LINEAR_LARGE: [LinearShape; 3] = [
    linear(64, 3136, 1024),
    linear(5, 3136, 1024),
    linear(64, 1000, 513),
];

/// A linear layer with every size random.
pub fn random_linear(rng: &mut StdRng) -> LinearShape {
    linear(
        rng.random_range(1..=70),
        rng.random_range(1..=300),
        rng.random_range(1..=300),
    )
}

/// The inputs of a GEMM-shaped op's three passes.
pub struct GemmInputs {
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub dy: Vec<f32>,
}

impl GemmInputs {
    pub fn random(rng: &mut StdRng, [x, w, b, dy]: [usize; 4]) -> GemmInputs {
        GemmInputs {
            x: random(rng, x),
            w: random(rng, w),
            b: random(rng, b),
            dy: random(rng, dy),
        }
    }

    /// x, the weight, the bias and dy on `dev`.
    fn upload(&self, dev: &Device) -> [Buffer<f32>; 4] {
        [&self.x, &self.w, &self.b, &self.dy].map(|v| upload(dev, v))
    }

    /// Widened for the reference, each operand through `f` first (the bias is never a product's
    /// operand).
    fn widen(&self, f: impl Fn(f32) -> f32) -> [Vec<f64>; 4] {
        let through = |v: &[f32]| v.iter().map(|&x| f(x) as f64).collect::<Vec<_>>();
        [
            through(&self.x),
            through(&self.w),
            widen(&self.b),
            through(&self.dy),
        ]
    }
}

/// Each pass's named output: downloaded, or the pass's error.
pub type Outputs = Vec<(&'static str, Result<Vec<f32>, String>)>;

/// A GEMM-shaped op's passes, on a device and in the reference.
pub trait GemmOp: std::fmt::Debug {
    /// Lengths of x, the weight, the bias and dy.
    fn lens(&self) -> [usize; 4];
    fn run(&self, dev: &Device, precision: Precision, inputs: &GemmInputs) -> Outputs;
    fn reference(&self, inputs: [Vec<f64>; 4]) -> Vec<(&'static str, Vec<f64>)>;
    /// The outputs no tensor core computes, which stay exact fp32 in either precision.
    fn fp32_outputs(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Checks every pass of `op` on random inputs on every device, in `precision`.
pub fn check(op: &dyn GemmOp, precision: Precision, rng: &mut StdRng) {
    check_on(devices(), op, precision, rng)
}

/// [`check`] on the given devices only.
pub fn check_on(devices: &[Device], op: &dyn GemmOp, precision: Precision, rng: &mut StdRng) {
    let inputs = GemmInputs::random(rng, op.lens());
    let exact = op.reference(inputs.widen(|x| x));
    let tf32_references = (precision == Precision::Tf32).then(|| {
        // Σ|a·b| per element: the same products of the operands' magnitudes, without a bias.
        let mut magnitudes = inputs.widen(f32::abs);
        magnitudes[2].fill(0.0);
        (op.reference(inputs.widen(tf32)), op.reference(magnitudes))
    });
    for dev in devices {
        let outputs = op.run(dev, precision, &inputs);
        for (k, (name, got)) in outputs.iter().enumerate() {
            let what = format!("{} {op:?} {precision}: {name}", dev.name());
            // The cpu device and GPUs before 8.0 refuse TF32, saying why.
            let got = match (dev.check_precision(precision), got) {
                (Err(why), Err(e)) => {
                    assert!(e.contains(&why), "{what}: {e}");
                    continue;
                }
                (Err(_), Ok(_)) => panic!("{what}: computed, not refused"),
                (Ok(()), Err(e)) => panic!("{what}: {e}"),
                (Ok(()), Ok(got)) => got,
            };
            match &tf32_references {
                Some((rounded, magnitudes)) if !op.fp32_outputs().contains(name) => {
                    assert_tf32_close(&what, got, &rounded[k].1, &exact[k].1, &magnitudes[k].1)
                }
                _ => assert_close(&what, got, &exact[k].1),
            }
        }
    }
}

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
        let [x, w, b, dy] = i.upload(dev);
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
        let [x, w, b, dy] = i.upload(dev);
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
