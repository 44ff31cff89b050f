//! The GEMM-shaped ops (convolutions and linear layers: forward, input and weight gradients) on
//! each device in each precision, against the reference. The cpu device computes fp32 only: asked
//! for TF32, each pass must refuse.

use kernels::{Device, Precision};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::{assert_close, assert_tf32_close, conv, devices, linear, random, tf32, widen};

/// The inputs of a GEMM-shaped op's three passes.
pub struct GemmInputs {
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub dy: Vec<f32>,
}

impl GemmInputs {
    fn random(rng: &mut StdRng, [x, w, b, dy]: [usize; 4]) -> GemmInputs {
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
    let inputs = GemmInputs::random(rng, op.lens());
    let exact = op.reference(inputs.widen(|x| x));
    let tf32_references = (precision == Precision::Tf32).then(|| {
        // Σ|a·b| per element: the same products of the operands' magnitudes, without a bias.
        let mut magnitudes = inputs.widen(f32::abs);
        magnitudes[2].fill(0.0);
        (op.reference(inputs.widen(tf32)), op.reference(magnitudes))
    });
    for dev in devices() {
        let outputs = op.run(dev, precision, &inputs);
        for (k, (name, got)) in outputs.iter().enumerate() {
            let what = format!("{} {op:?} {precision}: {name}", dev.name());
            let got = match (dev, precision, got) {
                (Device::Cpu, Precision::Tf32, Err(e)) => {
                    assert!(e.contains("fp32 only"), "{what}: {e}");
                    continue;
                }
                (Device::Cpu, Precision::Tf32, Ok(_)) => panic!("{what}: computed, not refused"),
                (_, _, Err(e)) => panic!("{what}: {e}"),
                (_, _, Ok(got)) => got,
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

/// Split sums are added in a fixed order: two runs give the same bits, on either engine.
#[test]
fn split_sums_are_bit_identical_across_runs() {
    let mut rng = StdRng::seed_from_u64(18);
    // Both split their weight gradient's sum on the kernels (over 8·784 pixels, and over the
    // batch).
    let ops: [&dyn GemmOp; 2] = [&conv(8, 1, 32, 28, 28, 3, 1, 1), &linear(1024, 512, 10)];
    for dev in devices() {
        for precision in [Precision::Fp32, Precision::Tf32] {
            if *dev == Device::Cpu && precision == Precision::Tf32 {
                continue;
            }
            for op in ops {
                let inputs = GemmInputs::random(&mut rng, op.lens());
                let bits = |outputs: Outputs| -> Vec<Vec<u32>> {
                    outputs
                        .into_iter()
                        .map(|(name, v)| {
                            let v = v.unwrap_or_else(|e| panic!("{op:?} {name}: {e}"));
                            v.iter().map(|x| x.to_bits()).collect()
                        })
                        .collect()
                };
                let first = bits(op.run(dev, precision, &inputs));
                let second = bits(op.run(dev, precision, &inputs));
                assert!(
                    first == second,
                    "{} {op:?} {precision}: runs differ",
                    dev.name()
                );
            }
        }
    }
}
