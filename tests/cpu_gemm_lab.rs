//! Every step of the CPU GEMM lab (src/cpu_gemm_lab.rs) against the reference product, on sizes
//! that fill its register tiles and blocks exactly and leave them ragged. C starts out as NaN,
//! so an element a step forgets to write cannot pass.

mod common;

use common::{assert_close, linear, random};
use kernels::cpu_gemm_lab::{fma_peak, fma_peak_flops, Step, KC, MC, MR, NC, NR};
use kernels::reference;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// (m, n, k): one element; one whole register tile; ragged tiles; several depth blocks (KC),
/// row blocks (MC) and column blocks (NC), each with a ragged last one.
const SIZES: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (MR, NR, 8),
    (7, 17, 5),
    (13, 33, KC + 44),
    (MC + 8, NC + 88, 2 * KC + 1),
    (64, 100, 300),
];

/// C = A·B in f64 by the reference linear layer (x = A, W = Bᵀ, no bias).
fn product(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f64> {
    let mut b_t = vec![0.0; n * k];
    for p in 0..k {
        for j in 0..n {
            b_t[j * k + p] = b[p * n + j] as f64;
        }
    }
    let a: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    let mut c = vec![0.0; m * n];
    reference::linear_forward(&linear(m, k, n), &a, &b_t, &vec![0.0; n], &mut c);
    c
}

#[test]
fn every_step_computes_a_times_b() {
    let mut rng = StdRng::seed_from_u64(16);
    for size @ (m, n, k) in SIZES {
        let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
        let want = product(&a, &b, size);
        for step in Step::ALL.into_iter().filter(|s| s.available()) {
            let mut c = vec![f32::NAN; m * n];
            step.run(m, n, k, &a, &b, &mut c);
            assert_close(&format!("{} {m}x{n}x{k}", step.name()), &c, &want);
        }
    }
}

#[test]
fn a_step_leaves_no_trace_of_what_c_held() {
    // Every step overwrites C: a second run on the first's output gives the same.
    let mut rng = StdRng::seed_from_u64(17);
    let (m, n, k) = (13, 33, 20);
    let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
    for step in Step::ALL.into_iter().filter(|s| s.available()) {
        let mut once = vec![f32::NAN; m * n];
        step.run(m, n, k, &a, &b, &mut once);
        let mut twice = once.clone();
        step.run(m, n, k, &a, &b, &mut twice);
        assert_eq!(once, twice, "{}", step.name());
    }
}

#[test]
fn the_fma_peak_loop_counts_its_flops() {
    assert_eq!(fma_peak_flops(3), 3 * 160);
    if let Some(sum) = fma_peak(1000) {
        assert!(sum.is_finite() && sum > 0.0, "{sum}");
    }
}
