//! Helpers shared by the nn tests: host copies, gradient checks in f32, a small network; the
//! device choice and random data are the root package's (tests/common), included, not copied.
#![allow(dead_code)] // each test file uses its own subset

use kernels::{Buffer, Device};
use nn::{ConvNetConfig, Tensor, TensorView};

#[path = "../../../../tests/common/mod.rs"]
mod root;
#[allow(unused_imports)] // as with dead code: each test file uses its own subset
pub use root::{kernel_device, random, widen};

pub const DEVICE: Device = Device::Cpu;

/// The reference ConvNet at tiny widths, 4 classes, on `image_size`² images: for gradient checks
/// and file round trips, where every parameter counts.
pub const fn tiny(image_size: usize) -> ConvNetConfig {
    ConvNetConfig {
        conv1_channels: 2,
        conv2_channels: 3,
        hidden1: 8,
        hidden2: 6,
        classes: 4,
        image_size,
    }
}

/// The reference ConvNet at small widths, on MNIST's 28x28 images: the network of the PyTorch
/// fixture and of the device comparisons.
pub const SMALL: ConvNetConfig = ConvNetConfig {
    conv1_channels: 4,
    conv2_channels: 8,
    hidden1: 32,
    hidden2: 16,
    classes: 10,
    image_size: 28,
};

pub fn tensor(shape: &[usize], values: &[f32]) -> Tensor {
    Tensor::from_slice(&DEVICE, shape, values).unwrap()
}

pub fn host(data: &Buffer<f32>) -> Vec<f32> {
    DEVICE.download(data).unwrap()
}

pub fn host_view(view: TensorView) -> (Vec<usize>, Vec<f32>) {
    (view.shape.to_vec(), host(view.data))
}

/// Σ r·y in f64: a scalar loss whose gradient to y is r.
pub fn weighted_sum(r: &[f32], y: &[f32]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(&r, &y)| r as f64 * y as f64).sum()
}

/// Compares `analytic` with central differences of `loss` around `at`, element by element.
///
/// In f32 the differences carry rounding noise of about ε·|loss|/h, so the tolerance is loose;
/// exactness of the ops themselves is checked in f64 by the root package's tests.
pub fn check_gradient(
    name: &str,
    at: &[f32],
    analytic: &[f32],
    h: f32,
    mut loss: impl FnMut(&[f32]) -> f64,
) {
    assert_eq!(at.len(), analytic.len(), "{name}: gradient length");
    let mut x = at.to_vec();
    for k in 0..x.len() {
        x[k] = at[k] + h;
        let up = loss(&x);
        x[k] = at[k] - h;
        let down = loss(&x);
        x[k] = at[k];
        let numeric = (up - down) / (2.0 * h as f64);
        let error = (numeric - analytic[k] as f64).abs();
        assert!(
            error <= 1e-3 * (1.0 + numeric.abs()),
            "{name}[{k}]: analytic {} vs numeric {numeric}",
            analytic[k]
        );
    }
}

/// |actual − expected| ≤ tolerance·(|expected| + largest |expected|) for every element: relative
/// for the large values, and for the small ones relative to the tensor's scale, since rounding in
/// a sum of many terms is absolute (numpy's allclose with atol = rtol·max|expected|).
pub fn assert_close(name: &str, actual: &[f32], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{name}: length");
    let scale = expected.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    for (k, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a as f64 - e).abs() <= tolerance * (e.abs() + scale),
            "{name}[{k}]: {a} vs expected {e}"
        );
    }
}
