//! Every step of the GEMM kernel lab (kernels/gemm_lab.cu) against the reference product, on the
//! device HANDWRITTEN_TEST_DEVICE names (default `emulated`). Sizes fill the 16- and 64-wide
//! tiles exactly and leave them ragged; C starts out as NaN, so an element a step forgets to
//! write cannot pass.

use kernels::gemm_lab::GemmStep;
use kernels::{reference, Device, LinearShape, Precision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn device() -> Device {
    let name = std::env::var("HANDWRITTEN_TEST_DEVICE").unwrap_or_else(|_| "emulated".to_string());
    Device::from_name(&name).unwrap_or_else(|e| panic!("HANDWRITTEN_TEST_DEVICE={name}: {e}"))
}

/// (m, n, k): one element; whole 16-wide tiles; one whole 64x64 tile over several depth slices;
/// ragged edges in every dimension; several tiles of each kind with a ragged depth.
const SIZES: [(usize, usize, usize); 5] = [
    (1, 1, 1),
    (32, 16, 48),
    (64, 64, 64),
    (70, 50, 33),
    (130, 97, 75),
];

/// C = A·Bᵀ in f64 by the reference linear layer (x = A, W = B, no bias), from `a` and `b`
/// passed through `f` first.
fn product(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize), f: fn(f32) -> f32) -> Vec<f64> {
    let widen = |v: &[f32]| v.iter().map(|&x| f(x) as f64).collect::<Vec<_>>();
    let shape = LinearShape {
        batch: m,
        in_features: k,
        out_features: n,
    };
    let mut c = vec![0.0; m * n];
    reference::linear_forward(&shape, &widen(a), &widen(b), &vec![0.0; n], &mut c);
    c
}

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

/// |got − want| ≤ bound(i) for every element.
fn assert_within(what: &str, got: &[f32], want: &[f64], bound: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= bound(i),
            "{what}[{i}]: got {g}, want {w} (bound {:.3e})",
            bound(i)
        );
    }
}

fn largest(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Runs `step` on random A and B of `size` and checks C:
/// - an fp32 step within 1e-4 of the largest |C| of the exact product (only the order of the
///   fp32 sums differs);
/// - the TF32 step, like the TF32 kernels in tests/kernels_emulated.rs, within that of the
///   product of TF32-rounded operands, and within 2^-10·Σ|a·b| (+ 1e-4 of the largest) of the
///   exact one: rounding moves each operand by at most 2^-11 of itself.
fn check(step: GemmStep, size: (usize, usize, usize), rng: &mut StdRng) {
    let dev = device();
    let (m, n, k) = size;
    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (a_buf, b_buf) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
    let mut c_buf = dev.upload(&vec![f32::NAN; m * n]).unwrap();
    let launch = step
        .launch(a_buf.arg(), b_buf.arg(), c_buf.arg_mut(), m, n, k)
        .unwrap();
    // SAFETY: a, b and c hold m·k, n·k and m·n floats, which is what the kernel reads and writes.
    unsafe { dev.launch(&launch) }.unwrap();
    dev.synchronize().unwrap();
    let got = dev.download(&c_buf).unwrap();

    let what = format!("{} {m}x{n}x{k}", step.name());
    let exact = product(&a, &b, size, |x| x);
    let scale = 1e-4 * largest(&exact);
    match step.precision() {
        Precision::Fp32 => assert_within(&what, &got, &exact, |_| scale),
        Precision::Tf32 => {
            let rounded = product(&a, &b, size, tf32);
            let rounded_scale = 1e-4 * largest(&rounded);
            let what_rounded = format!("{what} against TF32-rounded operands");
            assert_within(&what_rounded, &got, &rounded, |_| rounded_scale);
            let magnitudes = product(&a, &b, size, f32::abs);
            assert_within(&what, &got, &exact, |i| magnitudes[i] / 1024.0 + scale);
        }
    }
}

#[test]
fn every_step_computes_a_times_b_transposed() {
    let mut rng = StdRng::seed_from_u64(8);
    for step in GemmStep::ALL {
        for size in SIZES {
            check(step, size, &mut rng);
        }
    }
}

#[test]
fn sizes_past_32_bit_indices_are_refused_by_name() {
    let p = kernels::launch::KernelArg::Ptr(0);
    let error = GemmStep::Tiled
        .launch(p, p, p, 1 << 16, 1 << 16, 1)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("gemm_lab_tiled") && error.contains("c [65536, 65536]"),
        "{error}"
    );
}
