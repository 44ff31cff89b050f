//! Each step of the CPU GEMM lab (src/cpu_gemm_lab.rs, docs/cpu-gemm.md) on fc1's forward product
//! (64 x 3136 by 3136 x 1024) and a square 1024, as `cpu_gemm_lab/<m>x<n>x<k>/<step>`; the steps
//! on one thread but `avx2_threads` and `device` (every thread of the pool), with `device_1thread`
//! the cpu device's product on one. `fma_peak` times a loop of independent FMAs on one core: the
//! most any step can reach per thread. Throughput is in elements, one per flop, so `Gelem/s`
//! reads as GFLOP/s.
//!
//! `cargo bench --bench cpu_gemm_lab` (`-- 64x1024x3136` for fc1's shape alone).

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use kernels::cpu_gemm_lab::{fma_peak, fma_peak_flops, Step};
use std::hint::black_box;
use std::time::Duration;

/// (m, n, k): fc1's forward at batch 64, then a square.
const SIZES: [(usize, usize, usize); 2] = [(64, 1024, 3136), (1024, 1024, 1024)];
const PEAK_ITERATIONS: u64 = 1 << 20;

/// Deterministic values in [−1, 1): a benchmark needs no better randomness.
fn filled(len: usize) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn configure(group: &mut BenchmarkGroup<WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

fn lab(c: &mut Criterion) {
    kernels::cpu::init_threads();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");

    let mut group = c.benchmark_group("cpu_gemm_lab");
    configure(&mut group);
    group.throughput(Throughput::Elements(fma_peak_flops(PEAK_ITERATIONS)));
    if fma_peak(1).is_some() {
        group.bench_function("fma_peak", |bench| {
            bench.iter(|| fma_peak(black_box(PEAK_ITERATIONS)))
        });
    }
    group.finish();

    for (m, n, k) in SIZES {
        let (a, b) = (filled(m * k), filled(k * n));
        let mut out = vec![0.0; m * n];
        let mut group = c.benchmark_group(format!("cpu_gemm_lab/{m}x{n}x{k}"));
        configure(&mut group);
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        for step in Step::ALL.into_iter().filter(|s| s.available()) {
            // The triple loop reads B down its columns: on the square it would take minutes.
            if step == Step::Naive && m > 64 {
                continue;
            }
            group.bench_function(step.name(), |bench| {
                bench.iter(|| step.run(m, n, k, &a, &b, &mut out))
            });
        }
        group.bench_function("device_1thread", |bench| {
            bench.iter(|| one_thread.install(|| Step::Device.run(m, n, k, &a, &b, &mut out)))
        });
        group.finish();
    }
}

criterion_group!(benches, lab);
criterion_main!(benches);
