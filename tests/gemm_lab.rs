//! Every step of the GEMM kernel lab (kernels/gemm_lab.cu) against the reference product, on the
//! device HANDWRITTEN_TEST_DEVICE names (default `emulated`). Sizes fill the 16- and 64-wide
//! tiles exactly and leave them ragged; C starts out as NaN, so an element a step forgets to
//! write cannot pass.

mod common;

use common::{assert_close, assert_tf32_close, kernel_device, linear, random, tf32};
use kernels::gemm_lab::GemmStep;
use kernels::{reference, Precision};
use rand::rngs::StdRng;
use rand::SeedableRng;

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
    let shape = linear(m, k, n);
    let mut c = vec![0.0; m * n];
    reference::linear_forward(&shape, &widen(a), &widen(b), &vec![0.0; n], &mut c);
    c
}

/// Runs `step` on random A and B of `size` and checks C by the rule of its precision, as the op
/// suite checks the kernels (tests/common).
fn check(step: GemmStep, size: (usize, usize, usize), rng: &mut StdRng) {
    let dev = kernel_device();
    let (m, n, k) = size;
    let (a, b) = (random(rng, m * k), random(rng, n * k));
    let (a_buf, b_buf) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
    let mut c_buf = dev.upload(&vec![f32::NAN; m * n]).unwrap();
    let launch = step
        .launch(a_buf.arg(), b_buf.arg(), c_buf.arg_mut(), m, n, k)
        .unwrap();
    // SAFETY: a, b and c hold m·k, n·k and m·n floats, which is what the kernel reads and writes.
    let launched = unsafe { dev.launch(&launch) };
    if let Err(why) = dev.check_precision(step.precision()) {
        // A GPU without TF32 tensor cores (Turing) has no such kernel.
        let error = launched
            .expect_err("a TF32 kernel ran where none is built")
            .to_string();
        assert!(
            error.contains("not built for compute capability"),
            "{why}: {error}"
        );
        return;
    }
    launched.unwrap();
    dev.synchronize().unwrap();
    let got = dev.download(&c_buf).unwrap();

    let what = format!("{} {m}x{n}x{k}", step.name());
    let exact = product(&a, &b, size, |x| x);
    match step.precision() {
        Precision::Fp32 => assert_close(&what, &got, &exact),
        Precision::Tf32 => {
            let rounded = product(&a, &b, size, tf32);
            let magnitudes = product(&a, &b, size, f32::abs);
            assert_tf32_close(&what, &got, &rounded, &exact, &magnitudes);
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
