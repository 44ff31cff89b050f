//! Helpers shared by the root package's tests: which devices to run on, random data, buffers in
//! and out, the closeness rules, and shapes in one line. (nn's tests include this file too.)
#![allow(dead_code)] // each test file uses its own subset

use std::fmt::Debug;
use std::io::Write;
use std::sync::OnceLock;

use kernels::{Buffer, Conv2dShape, Device, Element, LinearShape, Pool2dShape, Precision};

pub mod gemm;
use rand::rngs::StdRng;
use rand::Rng;

/// The device that runs the kernels: the one HANDWRITTEN_TEST_DEVICE names (the GPU check sets
/// `cuda`), else `emulated`.
pub fn kernel_device() -> Device {
    let name = std::env::var("HANDWRITTEN_TEST_DEVICE").unwrap_or_else(|_| "emulated".into());
    Device::from_name(&name).unwrap_or_else(|e| panic!("HANDWRITTEN_TEST_DEVICE={name}: {e}"))
}

/// The devices every op is checked on: the one HANDWRITTEN_TEST_DEVICE names, where it is set;
/// else cpu, emulated, and cuda where a GPU opens (where none does, a note on stderr says why and
/// the tests go on without it).
pub fn devices() -> &'static [Device] {
    static DEVICES: OnceLock<Vec<Device>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        if std::env::var_os("HANDWRITTEN_TEST_DEVICE").is_some() {
            return vec![kernel_device()];
        }
        let emulated =
            Device::from_name("emulated").unwrap_or_else(|e| panic!("the emulated device: {e}"));
        let mut devices = vec![Device::Cpu, emulated];
        match Device::from_name("cuda") {
            Ok(gpu) => devices.push(gpu),
            // Straight to stderr: the test harness would hide a printed line of a passing test.
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "cuda skipped: {e}");
            }
        }
        devices
    })
}

/// The precisions `dev` multiplies in: fp32, and TF32 where it has TF32 tensor cores.
pub fn precisions(dev: &Device) -> Vec<Precision> {
    [Precision::Fp32, Precision::Tf32]
        .into_iter()
        .filter(|&p| dev.check_precision(p).is_ok())
        .collect()
}

/// Uniform in [-1, 1).
pub fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Values from a handful of levels (-1 to 1 in halves), so that maxima tie and ReLU sees exact
/// zeros.
pub fn coarse(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| rng.random_range(-2..=2) as f32 * 0.5)
        .collect()
}

/// f32 values as the f64 the reference computes in.
pub fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

/// x rounded to TF32 as cvt.rna.tf32.f32 does it (to nearest, ties away from zero).
pub fn tf32(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = if bits & 0x7f80_0000 != 0x7f80_0000 {
        bits + 0x1000
    } else {
        bits
    };
    f32::from_bits(rounded & 0xffff_e000)
}

pub fn upload<T: Element>(dev: &Device, data: &[T]) -> Buffer<T> {
    dev.upload(data)
        .unwrap_or_else(|e| panic!("{}: upload: {e}", dev.name()))
}

/// An output buffer full of NaN, so that an element an op forgets to write cannot pass.
pub fn nan_buffer(dev: &Device, len: usize) -> Buffer<f32> {
    upload(dev, &vec![f32::NAN; len])
}

pub fn download<T: Element>(dev: &Device, buf: &Buffer<T>) -> Vec<T> {
    dev.download(buf)
        .unwrap_or_else(|e| panic!("{}: download: {e}", dev.name()))
}

/// The fp32 rule: |got − want| ≤ FP32_TOLERANCE · max|want| for every element. A sum of products
/// in fp32 is off by rounding errors that grow with the size of its terms, which the largest
/// exact result stands for; a result whose exact values are all 0 must be exactly 0.
pub const FP32_TOLERANCE: f64 = 1e-4;

pub fn largest(values: &[f64]) -> f64 {
    values.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// The fp32 rule (see [`FP32_TOLERANCE`]) against the exact result `want`.
pub fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    let scale = largest(want);
    assert_within(what, got, want, |_| FP32_TOLERANCE * scale);
}

/// The TF32 rule for a product whose operands the tensor cores round to TF32, against two
/// references:
/// - `rounded`, the reference fed TF32-rounded operands, by the fp32 rule: the products are then
///   the same exact values, and only the order of the fp32 sums differs;
/// - `exact`, the plain reference, within 2^-10·Σ|a·b| of each element (`magnitudes`: the same
///   product of the operands' magnitudes) on top of the fp32 rule: rounding each operand moves it
///   by at most 2^-11 of itself, so each product by at most 2^-10 (+ 2^-22).
pub fn assert_tf32_close(
    what: &str,
    got: &[f32],
    rounded: &[f64],
    exact: &[f64],
    magnitudes: &[f64],
) {
    assert_close(
        &format!("{what} against TF32-rounded operands"),
        got,
        rounded,
    );
    let scale = FP32_TOLERANCE * largest(exact);
    assert_within(what, got, exact, |i| magnitudes[i] / 1024.0 + scale);
}

/// |got − want| ≤ bound(i) for every element i.
pub fn assert_within(what: &str, got: &[f32], want: &[f64], bound: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= bound(i),
            "{what}[{i}]: got {g}, want {w} (bound {:.3e})",
            bound(i)
        );
    }
}

/// Exactly equal, for the ops that compute no sum (pooling, ReLU, gathers, copies); names the
/// first element that differs rather than printing both whole.
pub fn assert_exact<T: PartialEq + Debug>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{what}[{i}]: got {:?}, want {:?}", got[i], want[i]);
    }
}

/// A convolution shape in one line: batch, channels in and out, height, width, kernel, stride,
/// padding.
#[allow(clippy::too_many_arguments)]
pub const fn conv(
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Conv2dShape {
    Conv2dShape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
        kernel,
        stride,
        padding,
    }
}

pub const fn linear(batch: usize, in_features: usize, out_features: usize) -> LinearShape {
    LinearShape {
        batch,
        in_features,
        out_features,
    }
}

pub const fn pool(batch: usize, channels: usize, height: usize, width: usize) -> Pool2dShape {
    Pool2dShape {
        batch,
        channels,
        height,
        width,
    }
}
