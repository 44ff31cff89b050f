//! The cpu device's internals, which the op suite (tests/ops) cannot reach through the device
//! API: the GEMM with each micro-kernel, every layer through each fallback micro-kernel (forced
//! for the whole process, hence a test binary of its own), the thread setup, and Adam's chunks
//! across threads; all against the reference.

mod common;

use common::gemm::{
    check_on, random_conv, random_deep_conv, random_linear, CONV_SHAPES, LINEAR_LARGE,
    LINEAR_SHAPES,
};
use common::{assert_close, random, widen};
use kernels::cpu::gemm::{gemm_with, Epilogue, Kernel, Layout, Matrix, PackedA, Panels, A};
use kernels::{cpu, reference as r, AdamStep, Device, Precision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Held by the tests that force a micro-kernel for the whole process, so that none of them sees
/// another's choice midway.
static FORCING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Every layer through each fallback micro-kernel and its packing, as a CPU without AVX-512
/// (or without AVX2) would run them, on the op suite's shapes.
#[test]
fn fallback_kernels_match_reference() {
    let _forcing = FORCING.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = StdRng::seed_from_u64(18);
    let fallbacks = Kernel::available()
        .into_iter()
        .filter(|&k| k != Kernel::Avx512);
    let cpu = [Device::Cpu];
    for kernel in fallbacks {
        Kernel::force(Some(kernel)).expect("an available kernel");
        assert_eq!(Kernel::detect(), kernel);
        let mut random_convs: Vec<_> = (0..20).map(|_| random_conv(&mut rng)).collect();
        random_convs.extend((0..5).map(|_| random_deep_conv(&mut rng)));
        for s in CONV_SHAPES.iter().chain(&random_convs) {
            check_on(&cpu, s, Precision::Fp32, &mut rng);
        }
        let random_linears: Vec<_> = (0..10).map(|_| random_linear(&mut rng)).collect();
        for s in LINEAR_SHAPES
            .iter()
            .chain(&LINEAR_LARGE[1..])
            .chain(&random_linears)
        {
            check_on(&cpu, s, Precision::Fp32, &mut rng);
        }
        check_adam(&mut rng, &format!("{kernel:?}"));
    }
    Kernel::force(None).expect("none forced");
}

/// fc1's weight gradient with Adam's step fused into it is, bit for bit, the weight gradient and
/// then Adam (each checked against the reference elsewhere), on every micro-kernel: a batch of
/// one, an empty batch (a zero gradient, after a shape that leaves its scratch dirty), odd
/// sizes, shapes under the threshold for threads and over it, a depth over several blocks (batch
/// 300), columns in several chunks (4000), and fc1 itself.
#[test]
fn fused_weight_step_is_the_gradient_then_adam_on_every_kernel() {
    let _forcing = FORCING.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = StdRng::seed_from_u64(19);
    let shapes = [
        (1, 7, 3),
        (0, 5, 3),
        (5, 37, 13),
        (13, 100, 70),
        (300, 40, 50),
        (64, 4000, 20),
        (64, 3136, 1024),
    ];
    let step = AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 3,
    };
    let (hyper, scalars) = (step.hyper(), step.scalars());
    for kernel in Kernel::available() {
        Kernel::force(Some(kernel)).expect("an available kernel");
        for &(batch, in_features, out_features) in &shapes {
            let s = kernels::LinearShape {
                batch,
                in_features,
                out_features,
            };
            let name = format!("{kernel:?} {s:?}");
            let (x, dy) = (
                random(&mut rng, s.input_len()),
                random(&mut rng, s.output_len()),
            );
            let w = random(&mut rng, s.weight_len());
            let m: Vec<f32> = random(&mut rng, w.len()).iter().map(|v| 0.1 * v).collect();
            let v: Vec<f32> = random(&mut rng, w.len())
                .iter()
                .map(|v| 0.01 * v * v)
                .collect();

            let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; out_features]);
            let (mut w_apart, mut m_apart, mut v_apart) = (w.clone(), m.clone(), v.clone());
            cpu::linear_backward_weight(&s, &x, &dy, &mut dw, &mut db);
            cpu::adam_update(
                &hyper,
                scalars,
                &mut w_apart,
                &dw,
                &mut m_apart,
                &mut v_apart,
            );

            let (mut w_fused, mut m_fused, mut v_fused) = (w.clone(), m.clone(), v.clone());
            let mut db_fused = vec![f32::NAN; out_features];
            cpu::linear_backward_weight_adam(
                &s,
                &x,
                &dy,
                (&hyper, scalars),
                (&mut w_fused, &mut m_fused, &mut v_fused),
                &mut db_fused,
            );
            let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(w_apart != w, "{name}: the step moved no weight");
            assert_eq!(bits(&w_fused), bits(&w_apart), "{name}: weights");
            assert_eq!(bits(&m_fused), bits(&m_apart), "{name}: first moments");
            assert_eq!(bits(&v_fused), bits(&v_apart), "{name}: second moments");
            assert_eq!(bits(&db_fused), bits(&db), "{name}: bias gradient");
        }
    }
    Kernel::force(None).expect("none forced");
}

/// Instruction sets by name, as `HANDWRITTEN_CPU_ISA` gives them: every one this CPU runs is
/// taken, one it cannot run or an unknown name is refused naming the variable, the value and
/// what this CPU allows, and forcing checks the same way.
#[test]
fn instruction_sets_are_chosen_by_name() {
    let available = Kernel::available();
    let allowed = available.iter().map(|k| k.name()).collect::<Vec<_>>();
    let names_allowed = |e: &str| allowed.iter().all(|name| e.contains(name));
    for kernel in [Kernel::Avx512, Kernel::Avx2Fma, Kernel::Portable] {
        let chosen = Kernel::from_name(kernel.name());
        if available.contains(&kernel) {
            assert_eq!(chosen, Ok(kernel));
            continue;
        }
        let e = chosen.expect_err("a kernel this CPU lacks");
        let named = format!("HANDWRITTEN_CPU_ISA={}: this CPU cannot run", kernel.name());
        assert!(e.contains(&named) && names_allowed(&e), "{e}");
        let forced = Kernel::force(Some(kernel)).expect_err("forcing a kernel this CPU lacks");
        assert_eq!(forced, e);
    }
    for bad in ["avx1024", "AVX2", ""] {
        let e = Kernel::from_name(bad).expect_err("an unknown name");
        let named = format!("HANDWRITTEN_CPU_ISA={bad}: unknown instruction set");
        assert!(e.contains(&named) && names_allowed(&e), "{e}");
    }
}

#[test]
fn init_threads_is_idempotent() {
    cpu::init_threads();
    cpu::init_threads();
    // Flush-to-zero is on: a subnormal product comes out as zero on this thread and the pool's.
    let tiny = std::hint::black_box(1e-30f32);
    assert_eq!(tiny * 1e-10 * 1e10, 0.0);
    let on_workers = rayon::broadcast(|_| std::hint::black_box(1e-30f32) * 1e-10 * 1e10);
    assert!(on_workers.iter().all(|&v| v == 0.0), "{on_workers:?}");
}

/// Adam over one slice, long enough to be split in chunks across threads, against the
/// reference (the fallbacks' Adam is checked with their layers, above).
#[test]
fn adam_matches_reference() {
    check_adam(&mut StdRng::seed_from_u64(14), "fastest");
}

/// Adam on the kernel [`Kernel::detect`] picks, on slices of one element, of a vector and a
/// tail, and of several chunks.
fn check_adam(rng: &mut StdRng, kernel: &str) {
    for (len, step) in [(1, 1), (1000, 2), (3 * 16384 + 5, 37)] {
        let step = AdamStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
        };
        // Parameters of about the update's size (lr): p + update then rounds by a few ulps of
        // the update, which is compared, not of a weight near 1.
        let params: Vec<f32> = random(rng, len).iter().map(|v| 0.01 * v).collect();
        let grads = random(rng, len);
        let m: Vec<f32> = random(rng, len).iter().map(|v| 0.1 * v).collect();
        let v: Vec<f32> = random(rng, len).iter().map(|v| 0.01 * v * v).collect();
        let (mut p, mut got_m, mut got_v) = (params.clone(), m.clone(), v.clone());
        cpu::adam_update(
            &step.hyper(),
            step.scalars(),
            &mut p,
            &grads,
            &mut got_m,
            &mut got_v,
        );
        let (mut want_p, mut want_m, mut want_v) = (widen(&params), widen(&m), widen(&v));
        r::adam_update(&step, &mut want_p, &widen(&grads), &mut want_m, &mut want_v);
        // Compare the update p_new − p_old, which is ~lr, not the parameters, which hide it.
        let update: Vec<f32> = p
            .iter()
            .zip(&params)
            .map(|(&n, &o)| (n as f64 - o as f64) as f32)
            .collect();
        let want_update: Vec<f64> = want_p
            .iter()
            .zip(&params)
            .map(|(n, &o)| n - o as f64)
            .collect();
        let what = |name| format!("{kernel} Adam: {name}, {len} elements");
        assert_close(&what("update"), &update, &want_update);
        assert_close(&what("m"), &got_m, &want_m);
        assert_close(&what("v"), &got_v, &want_v);
    }
}

/// A `rows x cols` matrix in a slice, row-major or transposed, its rows or columns `pad` apart
/// beyond what they need.
fn random_layout(rng: &mut StdRng, rows: usize, cols: usize) -> Layout {
    let pad = rng.random_range(0..=3);
    if rng.random_bool(0.5) {
        Layout {
            rows,
            cols,
            row_stride: cols + pad,
            col_stride: 1,
        }
    } else {
        Layout {
            rows,
            cols,
            row_stride: 1,
            col_stride: rows + pad,
        }
    }
}

fn at(data: &[f32], l: &Layout, i: usize, j: usize) -> f64 {
    data[i * l.row_stride + j * l.col_stride] as f64
}

/// The GEMM with every micro-kernel this CPU runs (the AVX-512 one and its fallbacks, forced),
/// on odd sizes, both layouts of each operand, depths over several blocks, A packed beforehand
/// or not, and every epilogue, against the same sum in f64.
#[test]
fn gemm_every_kernel_matches_reference() {
    let mut rng = StdRng::seed_from_u64(17);
    let kernels = Kernel::available();
    assert!(
        kernels.contains(&Kernel::Portable),
        "the fallback is always there"
    );
    let fixed = [
        (64, 1024, 3136),
        (1024, 3136, 64),
        (64, 196, 288),
        (9, 33, 17),
        (1, 1, 1),
    ];
    let random_shapes = (0..12).map(|_| {
        (
            rng.random_range(1..=70),
            rng.random_range(1..=150),
            rng.random_range(0..=600),
        )
    });
    let shapes: Vec<_> = fixed
        .into_iter()
        .chain(random_shapes.collect::<Vec<_>>())
        .collect();
    for (case, &(m, n, k)) in shapes.iter().enumerate() {
        let (a_layout, b_layout) = (random_layout(&mut rng, m, k), random_layout(&mut rng, k, n));
        let a = random(&mut rng, a_layout.rows * a_layout.cols * 4 + 3);
        let b = random(&mut rng, b_layout.rows * b_layout.cols * 4 + 3);
        let ldc = n + rng.random_range(0..=2);
        let c_layout = Layout {
            rows: m,
            cols: n,
            row_stride: ldc,
            col_stride: 1,
        };
        let c0 = random(&mut rng, m * ldc);
        let (row_bias, col_bias) = (random(&mut rng, m), random(&mut rng, n));
        let epilogue = Epilogue {
            accumulate: rng.random_bool(0.5),
            row_bias: rng.random_bool(0.5).then_some(&row_bias[..]),
            col_bias: rng.random_bool(0.5).then_some(&col_bias[..]),
            relu: rng.random_bool(0.5),
        };
        let mut exact = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut sum: f64 = (0..k)
                    .map(|p| at(&a, &a_layout, i, p) * at(&b, &b_layout, p, j))
                    .sum();
                if epilogue.accumulate {
                    sum += c0[i * ldc + j] as f64;
                }
                sum += epilogue.row_bias.map_or(0.0, |bias| bias[i] as f64);
                sum += epilogue.col_bias.map_or(0.0, |bias| bias[j] as f64);
                exact[i * n + j] = if epilogue.relu { sum.max(0.0) } else { sum };
            }
        }
        let (a_matrix, b_matrix) = (Matrix::new(&a, a_layout), Matrix::new(&b, b_layout));
        // B packed beforehand, as a Winograd filter is.
        let mut b_packed = vec![0.0; Panels::len(k, n)];
        for p in 0..k {
            for j in 0..n {
                b_packed[Panels::offset(k, n, p, j)] = at(&b, &b_layout, p, j) as f32;
            }
        }
        let b_panels = Panels::new(&b_packed, k, n);
        for &kernel in &kernels {
            let packed = PackedA::for_kernel(kernel, a_matrix);
            let operands = [
                (A::Matrix(a_matrix), false),
                (A::Packed(&packed), false),
                (A::Matrix(a_matrix), true),
            ];
            for (a_operand, b_is_packed) in operands {
                let mut c = c0.clone();
                if b_is_packed {
                    gemm_with(kernel, &mut c, c_layout, a_operand, &b_panels, epilogue);
                } else {
                    gemm_with(kernel, &mut c, c_layout, a_operand, &b_matrix, epilogue);
                }
                let name = format!(
                    "case {case} {kernel:?} {m}x{n}x{k} a {a_layout:?} b {b_layout:?} \
                     (packed: {b_is_packed}) {epilogue:?}"
                );
                let inside: Vec<f32> = c.chunks(ldc).flat_map(|row| &row[..n]).copied().collect();
                assert_close(&name, &inside, &exact);
                // The padding between C's rows is never written.
                for (i, row) in c.chunks(ldc).enumerate() {
                    assert_eq!(
                        &row[n..],
                        &c0[i * ldc + n..(i + 1) * ldc],
                        "{name}: row {i} pad"
                    );
                }
            }
        }
    }
}
