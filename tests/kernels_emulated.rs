//! Every CUDA kernel against the reference ops, through the device API, on random inputs.
//!
//! The device is `emulated` (the kernels on the CPU emulator, so every CI run executes them), or
//! the one HANDWRITTEN_TEST_DEVICE names: `cuda` on a GPU machine. Shapes straddle the 64-wide
//! GEMM tiles and the 256-thread blocks so that the edges of every launch are exercised, and every
//! output buffer starts out as NaN so that an element a kernel forgets to write cannot pass.

mod common;

use common::conv;
use kernels::reference as r;
use kernels::{Activation, AdamStep, Buffer, Conv2dShape, Device, LinearShape, Precision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn device() -> Device {
    let name = std::env::var("HANDWRITTEN_TEST_DEVICE").unwrap_or_else(|_| "emulated".to_string());
    Device::from_name(&name).unwrap_or_else(|e| panic!("HANDWRITTEN_TEST_DEVICE={name}: {e}"))
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Values from a handful of levels, so that maxima tie and ReLU sees exact zeros.
fn coarse(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| rng.random_range(-2..=2) as f32 * 0.5)
        .collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn upload(dev: &Device, data: &[f32]) -> Buffer<f32> {
    dev.upload(data).unwrap()
}

/// An output buffer full of NaN.
fn output(dev: &Device, len: usize) -> Buffer<f32> {
    dev.upload(&vec![f32::NAN; len]).unwrap()
}

fn download(dev: &Device, buf: &Buffer<f32>) -> Vec<f32> {
    dev.download(buf).unwrap()
}

/// Asserts |got − want| ≤ 1e-4 · max|want| elementwise: the rounding error of a sum of products
/// grows with the size of its terms, which the largest output stands for.
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs())).max(1e-30);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = (g as f64 - w).abs() / scale;
        assert!(
            error <= 1e-4,
            "{what}[{i}]: got {g}, want {w} (error {error:.2e} of max |want| {scale:.3e})"
        );
    }
}

const CONV_SHAPES: [Conv2dShape; 9] = [
    conv(2, 3, 5, 7, 9, 3, 1, 1),
    conv(2, 4, 6, 9, 8, 3, 2, 0),
    // The network's two layers, with small batches.
    conv(1, 1, 32, 28, 28, 3, 1, 1),
    conv(2, 32, 64, 14, 14, 3, 1, 1),
    // More than one tile of output channels, then of input channels.
    conv(3, 5, 70, 6, 5, 3, 2, 1),
    conv(2, 70, 3, 5, 5, 1, 1, 0),
    conv(1, 2, 3, 8, 7, 5, 2, 2),
    // The network's two layers, whole: long sums over the batch, which the weight gradient
    // splits across blocks.
    conv(64, 1, 32, 28, 28, 3, 1, 1),
    conv(64, 32, 64, 14, 14, 3, 1, 1),
];

/// The inputs of a GEMM-shaped op's three passes (forward, input and weight gradients).
struct GemmInputs {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

impl GemmInputs {
    fn random(rng: &mut StdRng, x: usize, w: usize, b: usize, dy: usize) -> GemmInputs {
        GemmInputs {
            x: random(rng, x),
            w: random(rng, w),
            b: random(rng, b),
            dy: random(rng, dy),
        }
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

/// Each pass's outputs, named.
type Outputs<T> = Vec<(&'static str, Vec<T>)>;

/// x rounded to TF32 as cvt.rna.tf32.f32 does it (to nearest, ties away from zero).
fn tf32(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = if bits & 0x7f80_0000 != 0x7f80_0000 {
        bits + 0x1000
    } else {
        bits
    };
    f32::from_bits(rounded & 0xffff_e000)
}

/// A GEMM-shaped op's passes, on the device and in the reference.
trait GemmOp: std::fmt::Debug {
    fn inputs(&self, rng: &mut StdRng) -> GemmInputs;
    fn run(&self, dev: &Device, precision: Precision, inputs: &GemmInputs) -> Outputs<f32>;
    fn reference(&self, inputs: [Vec<f64>; 4]) -> Outputs<f64>;
    /// The outputs no tensor core computes, which stay exact fp32 in either precision.
    fn fp32_outputs(&self) -> &'static [&'static str] {
        &[]
    }
}

impl GemmOp for Conv2dShape {
    fn inputs(&self, rng: &mut StdRng) -> GemmInputs {
        let s = self;
        GemmInputs::random(
            rng,
            s.input_len(),
            s.weight_len(),
            s.out_channels,
            s.output_len(),
        )
    }

    fn run(&self, dev: &Device, precision: Precision, i: &GemmInputs) -> Outputs<f32> {
        let s = self;
        let (x, w, dy) = (upload(dev, &i.x), upload(dev, &i.w), upload(dev, &i.dy));
        let mut y = output(dev, s.output_len());
        let mut dx = output(dev, s.input_len());
        let mut dw = output(dev, s.weight_len());
        let mut db = output(dev, s.out_channels);
        let b = upload(dev, &i.b);
        dev.conv2d_forward(s, precision, &x, &w, &b, &mut y)
            .unwrap();
        dev.conv2d_backward_input(s, precision, &w, &dy, &mut dx)
            .unwrap();
        dev.conv2d_backward_weight(s, precision, &x, &dy, &mut dw, &mut db)
            .unwrap();
        let download = |buf| download(dev, buf);
        vec![
            ("y", download(&y)),
            ("dx", download(&dx)),
            ("dweight", download(&dw)),
            ("dbias", download(&db)),
        ]
    }

    fn reference(&self, [x, w, b, dy]: [Vec<f64>; 4]) -> Outputs<f64> {
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
    fn inputs(&self, rng: &mut StdRng) -> GemmInputs {
        let s = self;
        let (x, w) = (s.batch * s.in_features, s.out_features * s.in_features);
        GemmInputs::random(rng, x, w, s.out_features, s.batch * s.out_features)
    }

    fn run(&self, dev: &Device, precision: Precision, i: &GemmInputs) -> Outputs<f32> {
        let s = self;
        let (x, w, dy) = (upload(dev, &i.x), upload(dev, &i.w), upload(dev, &i.dy));
        let b = upload(dev, &i.b);
        let mut y = output(dev, s.batch * s.out_features);
        let mut y_relu = output(dev, s.batch * s.out_features);
        let mut dx = output(dev, s.batch * s.in_features);
        let mut dw = output(dev, s.out_features * s.in_features);
        let mut db = output(dev, s.out_features);
        dev.linear_forward(s, precision, Activation::None, &x, &w, &b, &mut y)
            .unwrap();
        dev.linear_forward(s, precision, Activation::Relu, &x, &w, &b, &mut y_relu)
            .unwrap();
        dev.linear_backward_input(s, precision, &w, &dy, &mut dx)
            .unwrap();
        dev.linear_backward_weight(s, precision, &x, &dy, &mut dw, &mut db)
            .unwrap();
        let download = |buf| download(dev, buf);
        vec![
            ("y", download(&y)),
            ("relu(y)", download(&y_relu)),
            ("dx", download(&dx)),
            ("dweight", download(&dw)),
            ("dbias", download(&db)),
        ]
    }

    fn reference(&self, [x, w, b, dy]: [Vec<f64>; 4]) -> Outputs<f64> {
        let s = self;
        let mut y = vec![0.0; s.batch * s.out_features];
        let mut dx = vec![0.0; s.batch * s.in_features];
        let mut dw = vec![0.0; s.out_features * s.in_features];
        let mut db = vec![0.0; s.out_features];
        r::linear_forward(s, &x, &w, &b, &mut y);
        r::linear_backward_input(s, &w, &dy, &mut dx);
        r::linear_backward_weight(s, &x, &dy, &mut dw, &mut db);
        let y_relu = y.iter().map(|&v| v.max(0.0)).collect();
        vec![
            ("y", y),
            ("relu(y)", y_relu),
            ("dx", dx),
            ("dweight", dw),
            ("dbias", db),
        ]
    }

    /// linear_backward_bias sums dy in fp32 (a conv's bias gradient is a column of its product).
    fn fp32_outputs(&self) -> &'static [&'static str] {
        &["dbias"]
    }
}

/// The fp32 kernels against the reference.
fn check_fp32(op: &impl GemmOp, rng: &mut StdRng) {
    let dev = device();
    let inputs = op.inputs(rng);
    let got = op.run(&dev, Precision::Fp32, &inputs);
    let want = op.reference(inputs.widen(|x| x));
    for ((name, got), (_, want)) in got.iter().zip(&want) {
        assert_close(&format!("{op:?} fp32: {name}"), got, want);
    }
}

/// The TF32 kernels, held to two references:
/// - the reference fed TF32-rounded operands, within assert_close's 1e-4 of the largest output:
///   the products are then the same exact values, and only the order of the fp32 sums differs;
/// - the plain fp32 reference, within 2^-10·Σ|a·b| of each element, on top of that: rounding each
///   operand moves it by at most 2^-11 of itself, so each product by at most 2^-10 (+ 2^-22).
fn check_tf32(op: &impl GemmOp, rng: &mut StdRng) {
    let dev = device();
    let inputs = op.inputs(rng);
    let got = op.run(&dev, Precision::Tf32, &inputs);
    let rounded = op.reference(inputs.widen(tf32));
    let exact = op.reference(inputs.widen(|x| x));
    // Σ|a·b| per element: the same products of the operands' magnitudes, without a bias.
    let mut magnitudes = inputs.widen(f32::abs);
    magnitudes[2].fill(0.0);
    let magnitudes = op.reference(magnitudes);
    for (((name, got), (_, rounded)), ((_, exact), (_, magnitude))) in
        got.iter().zip(&rounded).zip(exact.iter().zip(&magnitudes))
    {
        let what = format!("{op:?} tf32: {name}");
        if op.fp32_outputs().contains(name) {
            assert_close(&what, got, exact);
            continue;
        }
        assert_close(&format!("{what} against TF32-rounded inputs"), got, rounded);
        let scale = exact.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        for (i, ((&g, &w), &m)) in got.iter().zip(exact).zip(magnitude).enumerate() {
            let bound = m / 1024.0 + 1e-4 * scale;
            assert!(
                (g as f64 - w).abs() <= bound,
                "{what}[{i}] against fp32: got {g}, want {w} (Σ|a·b| = {m:.3e})"
            );
        }
    }
}

#[test]
fn conv2d_matches_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for s in &CONV_SHAPES {
        check_fp32(s, &mut rng);
    }
}

/// CONV_SHAPES with the network's layers at batch 8, not 64: the weight gradients still split
/// their sums, and the emulated tensor cores cost a few times the SIMT engine.
const CONV_SHAPES_TF32: [Conv2dShape; 9] = [
    CONV_SHAPES[0],
    CONV_SHAPES[1],
    CONV_SHAPES[2],
    CONV_SHAPES[3],
    CONV_SHAPES[4],
    CONV_SHAPES[5],
    CONV_SHAPES[6],
    conv(8, 1, 32, 28, 28, 3, 1, 1),
    conv(8, 32, 64, 14, 14, 3, 1, 1),
];

#[test]
fn conv2d_tf32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(12);
    for s in &CONV_SHAPES_TF32 {
        check_tf32(s, &mut rng);
    }
}

#[test]
fn relu_backward_matches_reference() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(14);
    for len in [1, 255, 256, 1000] {
        let x = coarse(&mut rng, len);
        let dy = random(&mut rng, len);
        let mut y = vec![0.0; len];
        r::relu_forward(&x, &mut y);
        let mut dx = output(&dev, len);
        dev.relu_backward(&upload(&dev, &y), &upload(&dev, &dy), &mut dx)
            .unwrap();

        let mut want_dx = vec![0.0; len];
        r::relu_backward(&y, &dy, &mut want_dx);
        assert_eq!(
            download(&dev, &dx),
            want_dx,
            "relu_backward, {len} elements"
        );
    }
}

const fn linear(batch: usize, in_features: usize, out_features: usize) -> LinearShape {
    LinearShape {
        batch,
        in_features,
        out_features,
    }
}

const LINEAR_SHAPES: [LinearShape; 7] = [
    linear(1, 1, 1),
    linear(5, 37, 13),
    linear(70, 129, 65),
    linear(64, 300, 130),
    linear(64, 512, 10),
    // The network's first fully connected layer, whole: its forward pass and input gradient
    // split their sums across blocks.
    linear(64, 3136, 1024),
    // The last layer at a large batch: the weight gradient splits its sum over the batch.
    linear(1024, 512, 10),
];

#[test]
fn linear_matches_reference() {
    let mut rng = StdRng::seed_from_u64(15);
    for s in &LINEAR_SHAPES {
        check_fp32(s, &mut rng);
    }
}

/// LINEAR_SHAPES with fc2 in place of fc1: its forward pass and input gradient split their sums
/// too, at a third of the cost of three references.
const LINEAR_SHAPES_TF32: [LinearShape; 7] = [
    LINEAR_SHAPES[0],
    LINEAR_SHAPES[1],
    LINEAR_SHAPES[2],
    LINEAR_SHAPES[3],
    LINEAR_SHAPES[4],
    linear(64, 1024, 512),
    LINEAR_SHAPES[6],
];

#[test]
fn linear_tf32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(17);
    for s in &LINEAR_SHAPES_TF32 {
        check_tf32(s, &mut rng);
    }
}

/// TF32 rounds to nearest with ties away from zero before multiplying: 1 + 2^-11 (a tie) becomes
/// 1 + 2^-10, and 1 + 2^-12 becomes 1, so x·w differs from fp32 in a way only rounding explains.
/// (Truncation, or no rounding at all, gives other sums; these are exact in fp32.)
#[test]
fn linear_tf32_rounds_operands_to_nearest_ties_away() {
    let dev = device();
    let s = linear(1, 8, 1);
    let x = [1.0 + 2f32.powi(-11); 8];
    let w = [1.0 + 2f32.powi(-12); 8];
    let (xb, wb, b) = (upload(&dev, &x), upload(&dev, &w), upload(&dev, &[0.0]));
    let mut y = output(&dev, 1);
    for (precision, want) in [
        (Precision::Tf32, 8.0 * (1.0 + 2f32.powi(-10))),
        (
            Precision::Fp32,
            8.0 * (1.0 + 2f32.powi(-11)) * (1.0 + 2f32.powi(-12)),
        ),
    ] {
        dev.linear_forward(&s, precision, Activation::None, &xb, &wb, &b, &mut y)
            .unwrap();
        assert_eq!(download(&dev, &y), [want], "{precision}");
    }
}

/// Split sums are added in a fixed order: two runs give the same bits, on either engine.
#[test]
fn split_sums_are_bit_identical_across_runs() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(18);
    // Both split their weight gradient's sum (over 8·784 pixels, and over the batch).
    let conv = conv(8, 1, 32, 28, 28, 3, 1, 1);
    let fc = linear(1024, 512, 10);
    for precision in [Precision::Fp32, Precision::Tf32] {
        let ops: [&dyn GemmOp; 2] = [&conv, &fc];
        for op in ops {
            let inputs = op.inputs(&mut rng);
            let bits = |outputs: Outputs<f32>| -> Vec<Vec<u32>> {
                outputs
                    .into_iter()
                    .map(|(_, v)| v.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            let first = bits(op.run(&dev, precision, &inputs));
            let second = bits(op.run(&dev, precision, &inputs));
            assert!(first == second, "{op:?} {precision}: runs differ");
        }
    }
}

#[test]
fn adam_matches_reference_over_several_steps() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(17);
    let len = 1000;
    let mut params = upload(&dev, &random(&mut rng, len));
    let mut grads = output(&dev, len);
    let table = dev.tensor_table(&[&params], &[&grads]).unwrap();
    let mut m = dev.zeros(len).unwrap();
    let mut v = dev.zeros(len).unwrap();
    let mut scalars = dev.zeros(2).unwrap();
    for t in 1..=5 {
        let step = AdamStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: t,
        };
        let mut g = random(&mut rng, len);
        g[0] = 0.0;
        // Each step starts the reference from the device's state, so errors cannot pile up.
        let before = widen(&download(&dev, &params));
        let (mut want_p, mut want_m, mut want_v) = (
            before.clone(),
            widen(&download(&dev, &m)),
            widen(&download(&dev, &v)),
        );
        dev.write(&g, &mut grads).unwrap();
        dev.write(&step.scalars(), &mut scalars).unwrap();
        let hyper = step.hyper();
        dev.adam_update_tensors(
            &hyper,
            &scalars,
            &table,
            &mut [&mut params],
            &[&grads],
            &mut m,
            &mut v,
        )
        .unwrap();
        r::adam_update(&step, &mut want_p, &widen(&g), &mut want_m, &mut want_v);

        // The update is ~lr while the parameters are ~1: compare the updates themselves.
        let got_p = download(&dev, &params);
        let got_update: Vec<f32> = got_p
            .iter()
            .zip(&before)
            .map(|(&p, &b)| (p as f64 - b) as f32)
            .collect();
        let want_update: Vec<f64> = want_p.iter().zip(&before).map(|(p, b)| p - b).collect();
        assert_close(&format!("adam step {t}: update"), &got_update, &want_update);
        assert_close(&format!("adam step {t}: m"), &download(&dev, &m), &want_m);
        assert_close(&format!("adam step {t}: v"), &download(&dev, &v), &want_v);
    }
}
