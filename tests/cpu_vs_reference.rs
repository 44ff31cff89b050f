//! Every fast CPU op against the reference, on random shapes and values: odd sizes, strides,
//! paddings and batches that are multiples of nothing.

use kernels::cpu::gemm::{gemm_with, Epilogue, Kernel, Layout, Matrix, PackedA, A};
use kernels::{cpu, reference as r, AdamStep, Conv2dShape, LinearShape, Pool2dShape, XentShape};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| v as f64).collect()
}

/// Checks `fast` against the f64 result `exact` to a relative 1e-4, relative to the larger of an
/// element and the tensor's mean magnitude: sums that cancel to near zero keep the rounding error
/// of their terms, which is what f32 accumulation leaves.
fn assert_close(name: &str, fast: &[f32], exact: &[f64]) {
    assert_eq!(fast.len(), exact.len(), "{name}: length");
    let mean = exact.iter().map(|v| v.abs()).sum::<f64>() / exact.len().max(1) as f64;
    for (k, (&f, &e)) in fast.iter().zip(exact).enumerate() {
        let tolerance = 1e-4 * e.abs().max(mean).max(1e-30);
        assert!(
            (f as f64 - e).abs() <= tolerance,
            "{name}[{k}]: fast {f} vs exact {e}"
        );
    }
}

fn random_conv(rng: &mut StdRng) -> Conv2dShape {
    let kernel: usize = rng.random_range(1..=5);
    let padding = rng.random_range(0..=kernel.min(3) - 1);
    Conv2dShape {
        batch: rng.random_range(1..=4),
        in_channels: rng.random_range(1..=6),
        out_channels: rng.random_range(1..=9),
        height: rng.random_range(kernel.saturating_sub(2 * padding).max(1)..=17),
        width: rng.random_range(kernel.saturating_sub(2 * padding).max(1)..=17),
        kernel,
        stride: rng.random_range(1..=3),
        padding,
    }
}

/// The network's convolutions, odd ones, and random ones.
fn conv_shapes(rng: &mut StdRng) -> Vec<Conv2dShape> {
    let fixed = [
        // The reference network's layers, at a small batch.
        Conv2dShape {
            batch: 3,
            in_channels: 1,
            out_channels: 32,
            height: 28,
            width: 28,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        Conv2dShape {
            batch: 2,
            in_channels: 32,
            out_channels: 64,
            height: 14,
            width: 14,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        Conv2dShape {
            batch: 1,
            in_channels: 3,
            out_channels: 5,
            height: 7,
            width: 9,
            kernel: 3,
            stride: 2,
            padding: 0,
        },
        Conv2dShape {
            batch: 2,
            in_channels: 4,
            out_channels: 3,
            height: 11,
            width: 6,
            kernel: 3,
            stride: 2,
            padding: 2,
        },
        Conv2dShape {
            batch: 5,
            in_channels: 2,
            out_channels: 7,
            height: 13,
            width: 13,
            kernel: 5,
            stride: 1,
            padding: 2,
        },
        Conv2dShape {
            batch: 1,
            in_channels: 1,
            out_channels: 1,
            height: 1,
            width: 1,
            kernel: 1,
            stride: 1,
            padding: 0,
        },
        Conv2dShape {
            batch: 3,
            in_channels: 2,
            out_channels: 3,
            height: 7,
            width: 10,
            kernel: 4,
            stride: 3,
            padding: 1,
        },
        Conv2dShape {
            batch: 1,
            in_channels: 2,
            out_channels: 2,
            height: 2,
            width: 3,
            kernel: 3,
            stride: 1,
            padding: 2,
        },
        // Enough input channels for the input gradient to run as a convolution.
        Conv2dShape {
            batch: 3,
            in_channels: 10,
            out_channels: 3,
            height: 8,
            width: 13,
            kernel: 5,
            stride: 1,
            padding: 2,
        },
        Conv2dShape {
            batch: 2,
            in_channels: 8,
            out_channels: 17,
            height: 5,
            width: 6,
            kernel: 3,
            stride: 1,
            padding: 0,
        },
    ];
    fixed
        .into_iter()
        .chain((0..20).map(|_| random_conv(rng)))
        .collect()
}

#[test]
fn conv2d_matches_reference() {
    let mut rng = StdRng::seed_from_u64(10);
    for s in &conv_shapes(&mut rng) {
        check_conv(&mut rng, s);
    }
}

/// Every layer through each fallback micro-kernel and its packing, as a CPU without AVX-512
/// (or without AVX2) would run them.
#[test]
fn fallback_kernels_match_reference() {
    let mut rng = StdRng::seed_from_u64(18);
    let fallbacks = Kernel::available()
        .into_iter()
        .filter(|&k| k != Kernel::Avx512);
    for kernel in fallbacks {
        Kernel::force(Some(kernel));
        assert_eq!(Kernel::detect(), kernel);
        for s in &conv_shapes(&mut rng) {
            check_conv(&mut rng, s);
        }
        for s in &linear_shapes(&mut rng) {
            check_linear(&mut rng, s);
        }
    }
    Kernel::force(None);
}

/// Forward, input and weight gradients of one convolution against the reference.
fn check_conv(rng: &mut StdRng, s: &Conv2dShape) {
    let x = random(rng, s.input_len());
    let w = random(rng, s.weight_len());
    let b = random(rng, s.out_channels);
    let dy = random(rng, s.output_len());
    let name = format!("{s:?}");

    let mut y = vec![f32::NAN; s.output_len()];
    cpu::conv2d_forward(s, &x, &w, &b, &mut y);
    let mut exact = vec![0.0; s.output_len()];
    r::conv2d_forward(s, &wide(&x), &wide(&w), &wide(&b), &mut exact);
    assert_close(&format!("y {name}"), &y, &exact);

    let mut dx = vec![f32::NAN; s.input_len()];
    cpu::conv2d_backward_input(s, &w, &dy, &mut dx);
    let mut exact = vec![0.0; s.input_len()];
    r::conv2d_backward_input(s, &wide(&w), &wide(&dy), &mut exact);
    assert_close(&format!("dx {name}"), &dx, &exact);

    let mut dw = vec![f32::NAN; s.weight_len()];
    let mut db = vec![f32::NAN; s.out_channels];
    cpu::conv2d_backward_weight(s, &x, &dy, &mut dw, &mut db);
    let mut exact_dw = vec![0.0; s.weight_len()];
    let mut exact_db = vec![0.0; s.out_channels];
    r::conv2d_backward_weight(s, &wide(&x), &wide(&dy), &mut exact_dw, &mut exact_db);
    assert_close(&format!("dw {name}"), &dw, &exact_dw);
    assert_close(&format!("db {name}"), &db, &exact_db);
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
        let packed = PackedA::new(a_matrix);
        for &kernel in &kernels {
            for a_operand in [A::Matrix(a_matrix), A::Packed(&packed)] {
                let mut c = c0.clone();
                gemm_with(kernel, &mut c, c_layout, a_operand, &b_matrix, epilogue);
                let name = format!(
                    "case {case} {kernel:?} {m}x{n}x{k} a {a_layout:?} b {b_layout:?} {epilogue:?}"
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

fn linear_shapes(rng: &mut StdRng) -> Vec<LinearShape> {
    let fixed = [
        // Big enough to be split across threads, with odd splits.
        LinearShape {
            batch: 5,
            in_features: 3136,
            out_features: 1024,
        },
        LinearShape {
            batch: 64,
            in_features: 1000,
            out_features: 513,
        },
        LinearShape {
            batch: 1,
            in_features: 7,
            out_features: 3,
        },
        LinearShape {
            batch: 13,
            in_features: 33,
            out_features: 17,
        },
        LinearShape {
            batch: 64,
            in_features: 512,
            out_features: 10,
        },
    ];
    let random_shapes = (0..10).map(|_| LinearShape {
        batch: rng.random_range(1..=70),
        in_features: rng.random_range(1..=300),
        out_features: rng.random_range(1..=300),
    });
    fixed
        .into_iter()
        .chain(random_shapes.collect::<Vec<_>>())
        .collect()
}

#[test]
fn linear_matches_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for s in &linear_shapes(&mut rng) {
        check_linear(&mut rng, s);
    }
}

/// Forward (plain and with ReLU), input and weight gradients of one linear layer against the
/// reference.
fn check_linear(rng: &mut StdRng, s: &LinearShape) {
    let x = random(rng, s.batch * s.in_features);
    let w = random(rng, s.out_features * s.in_features);
    let b = random(rng, s.out_features);
    let dy = random(rng, s.batch * s.out_features);
    let name = format!("{s:?}");

    let mut y = vec![f32::NAN; s.batch * s.out_features];
    cpu::linear_forward(s, &x, &w, &b, &mut y);
    let mut exact = vec![0.0; y.len()];
    r::linear_forward(s, &wide(&x), &wide(&w), &wide(&b), &mut exact);
    assert_close(&format!("y {name}"), &y, &exact);

    let mut y_relu = vec![f32::NAN; y.len()];
    cpu::linear_relu_forward(s, &x, &w, &b, &mut y_relu);
    let (mut relu_exact, exact_y) = (vec![0.0; y.len()], exact.clone());
    r::relu_forward(&exact_y, &mut relu_exact);
    assert_close(&format!("relu(y) {name}"), &y_relu, &relu_exact);

    let mut dx = vec![f32::NAN; x.len()];
    cpu::linear_backward_input(s, &w, &dy, &mut dx);
    let mut exact = vec![0.0; x.len()];
    r::linear_backward_input(s, &wide(&w), &wide(&dy), &mut exact);
    assert_close(&format!("dx {name}"), &dx, &exact);

    let mut dw = vec![f32::NAN; w.len()];
    let mut db = vec![f32::NAN; b.len()];
    cpu::linear_backward_weight(s, &x, &dy, &mut dw, &mut db);
    let mut exact_dw = vec![0.0; w.len()];
    let mut exact_db = vec![0.0; b.len()];
    r::linear_backward_weight(s, &wide(&x), &wide(&dy), &mut exact_dw, &mut exact_db);
    assert_close(&format!("dw {name}"), &dw, &exact_dw);
    assert_close(&format!("db {name}"), &db, &exact_db);
}

#[test]
fn maxpool2d_matches_reference_exactly() {
    let mut rng = StdRng::seed_from_u64(12);
    let shapes = [
        Pool2dShape {
            batch: 64,
            channels: 32,
            height: 28,
            width: 28,
        },
        Pool2dShape {
            batch: 3,
            channels: 64,
            height: 14,
            width: 14,
        },
        Pool2dShape {
            batch: 1,
            channels: 1,
            height: 5,
            width: 7,
        },
        Pool2dShape {
            batch: 2,
            channels: 3,
            height: 1,
            width: 3,
        },
        Pool2dShape {
            batch: 7,
            channels: 5,
            height: 9,
            width: 4,
        },
    ];
    for s in &shapes {
        // Few distinct values, so windows have ties and the first maximum must win.
        let x: Vec<f32> = (0..s.input_len())
            .map(|_| rng.random_range(0..4) as f32)
            .collect();
        let dy = random(&mut rng, s.output_len());
        let (mut y, mut argmax) = (
            vec![f32::NAN; s.output_len()],
            vec![u32::MAX; s.output_len()],
        );
        cpu::maxpool2d_forward(s, &x, &mut y, &mut argmax);
        let (mut ry, mut rargmax) = (vec![0.0; s.output_len()], vec![0; s.output_len()]);
        r::maxpool2d_forward(s, &x, &mut ry, &mut rargmax);
        assert_eq!(y, ry, "y {s:?}");
        assert_eq!(argmax, rargmax, "argmax {s:?}");

        let mut dx = vec![f32::NAN; s.input_len()];
        cpu::maxpool2d_backward(s, &argmax, &dy, &mut dx);
        let mut rdx = vec![0.0; s.input_len()];
        r::maxpool2d_backward(s, &argmax, &dy, &mut rdx);
        assert_eq!(dx, rdx, "dx {s:?}");
    }
}

#[test]
fn relu_matches_reference_exactly() {
    let mut rng = StdRng::seed_from_u64(13);
    for len in [0, 1, 17, 100_003] {
        let x = random(&mut rng, len);
        let dy = random(&mut rng, len);
        let (mut y, mut ry) = (vec![f32::NAN; len], vec![0.0; len]);
        cpu::relu_forward(&x, &mut y);
        r::relu_forward(&x, &mut ry);
        assert_eq!(y, ry, "relu_forward len {len}");
        let (mut dx, mut rdx) = (vec![f32::NAN; len], vec![0.0; len]);
        cpu::relu_backward(&y, &dy, &mut dx);
        r::relu_backward(&y, &dy, &mut rdx);
        assert_eq!(dx, rdx, "relu_backward len {len}");
    }
}

#[test]
fn softmax_xent_matches_reference() {
    let mut rng = StdRng::seed_from_u64(14);
    for s in [
        XentShape {
            batch: 64,
            classes: 10,
        },
        XentShape {
            batch: 3,
            classes: 7,
        },
    ] {
        let logits: Vec<f32> = random(&mut rng, s.batch * s.classes)
            .iter()
            .map(|v| 8.0 * v)
            .collect();
        let labels: Vec<u32> = (0..s.batch)
            .map(|_| rng.random_range(0..s.classes as u32))
            .collect();
        let mut totals = [0.5f32, 2.0];
        cpu::softmax_xent_forward(&s, &logits, &labels, &mut totals);
        let mut exact = [0.5, 2.0];
        r::softmax_xent_forward(&s, &wide(&logits), &labels, &mut exact);
        assert_close(&format!("totals {s:?}"), &totals, &exact);

        let mut dlogits = vec![f32::NAN; logits.len()];
        cpu::softmax_xent_backward(&s, &logits, &labels, &mut dlogits);
        let mut exact = vec![0.0; logits.len()];
        r::softmax_xent_backward(&s, &wide(&logits), &labels, &mut exact);
        assert_close(&format!("dlogits {s:?}"), &dlogits, &exact);
    }
}

#[test]
fn adam_matches_reference() {
    let mut rng = StdRng::seed_from_u64(15);
    for (len, step) in [(1, 1), (1000, 2), (3 * 16384 + 5, 37)] {
        let step = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
        };
        let grads = random(&mut rng, len);
        let params = random(&mut rng, len);
        let m: Vec<f32> = random(&mut rng, len).iter().map(|v| 0.1 * v).collect();
        let v: Vec<f32> = random(&mut rng, len).iter().map(|v| 0.01 * v * v).collect();
        let (mut fp, mut fm, mut fv) = (params.clone(), m.clone(), v.clone());
        cpu::adam_update(&step, &mut fp, &grads, &mut fm, &mut fv);
        let (mut rp, mut rm, mut rv) = (wide(&params), wide(&m), wide(&v));
        r::adam_update(&step, &mut rp, &wide(&grads), &mut rm, &mut rv);
        // Compare the update p_new − p_old, which is ~lr, not the parameters, which hide it.
        let update: Vec<f32> = fp.iter().zip(&params).map(|(n, o)| n - o).collect();
        let exact_update: Vec<f64> = rp.iter().zip(&params).map(|(n, &o)| n - o as f64).collect();
        assert_close(&format!("update len {len}"), &update, &exact_update);
        assert_close(&format!("m len {len}"), &fm, &rm);
        assert_close(&format!("v len {len}"), &fv, &rv);
    }
}

#[test]
fn gather_matches_reference_exactly() {
    let mut rng = StdRng::seed_from_u64(16);
    let image_len = 784;
    let images: Vec<u8> = (0..100 * image_len).map(|_| rng.random()).collect();
    let labels: Vec<u8> = (0..100).map(|_| rng.random_range(0..10)).collect();
    let indices: Vec<u32> = (0..37).map(|_| rng.random_range(0..100)).collect();
    let (mut out, mut rout) = (vec![f32::NAN; 37 * image_len], vec![0.0; 37 * image_len]);
    cpu::gather_images(&images, image_len, &indices, &mut out);
    r::gather_images(&images, image_len, &indices, &mut rout);
    assert_eq!(out, rout);
    let (mut out, mut rout) = (vec![u32::MAX; 37], vec![0; 37]);
    cpu::gather_labels(&labels, &indices, &mut out);
    r::gather_labels(&labels, &indices, &mut rout);
    assert_eq!(out, rout);
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

#[test]
fn degenerate_shapes_match_reference() {
    let mut rng = StdRng::seed_from_u64(17);
    let convs = [
        Conv2dShape {
            batch: 0,
            in_channels: 2,
            out_channels: 3,
            height: 4,
            width: 4,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        Conv2dShape {
            batch: 2,
            in_channels: 0,
            out_channels: 3,
            height: 4,
            width: 4,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        Conv2dShape {
            batch: 2,
            in_channels: 2,
            out_channels: 0,
            height: 4,
            width: 4,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
    ];
    for s in &convs {
        let (x, w, b) = (
            random(&mut rng, s.input_len()),
            random(&mut rng, s.weight_len()),
            random(&mut rng, s.out_channels),
        );
        let dy = random(&mut rng, s.output_len());
        let mut y = vec![f32::NAN; s.output_len()];
        cpu::conv2d_forward(s, &x, &w, &b, &mut y);
        let mut exact = vec![0.0; s.output_len()];
        r::conv2d_forward(s, &wide(&x), &wide(&w), &wide(&b), &mut exact);
        assert_close(&format!("y {s:?}"), &y, &exact);
        let mut dx = vec![f32::NAN; s.input_len()];
        cpu::conv2d_backward_input(s, &w, &dy, &mut dx);
        assert!(dx.iter().all(|&v| v == 0.0), "dx {s:?}");
        let (mut dw, mut db) = (
            vec![f32::NAN; s.weight_len()],
            vec![f32::NAN; s.out_channels],
        );
        cpu::conv2d_backward_weight(s, &x, &dy, &mut dw, &mut db);
        let (mut exact_dw, mut exact_db) = (vec![0.0; s.weight_len()], vec![0.0; s.out_channels]);
        r::conv2d_backward_weight(s, &wide(&x), &wide(&dy), &mut exact_dw, &mut exact_db);
        assert_close(&format!("dw {s:?}"), &dw, &exact_dw);
        assert_close(&format!("db {s:?}"), &db, &exact_db);
    }
    for s in [
        LinearShape {
            batch: 0,
            in_features: 5,
            out_features: 3,
        },
        LinearShape {
            batch: 2,
            in_features: 0,
            out_features: 3,
        },
    ] {
        let (x, w, b) = (
            random(&mut rng, s.batch * s.in_features),
            random(&mut rng, s.out_features * s.in_features),
            random(&mut rng, s.out_features),
        );
        let dy = random(&mut rng, s.batch * s.out_features);
        let mut y = vec![f32::NAN; s.batch * s.out_features];
        cpu::linear_forward(&s, &x, &w, &b, &mut y);
        let mut exact = vec![0.0; y.len()];
        r::linear_forward(&s, &wide(&x), &wide(&w), &wide(&b), &mut exact);
        assert_close(&format!("y {s:?}"), &y, &exact);
        let (mut dw, mut db) = (vec![f32::NAN; w.len()], vec![f32::NAN; b.len()]);
        cpu::linear_backward_weight(&s, &x, &dy, &mut dw, &mut db);
        let (mut exact_dw, mut exact_db) = (vec![0.0; w.len()], vec![0.0; b.len()]);
        r::linear_backward_weight(&s, &wide(&x), &wide(&dy), &mut exact_dw, &mut exact_db);
        assert_close(&format!("dw {s:?}"), &dw, &exact_dw);
        assert_close(&format!("db {s:?}"), &db, &exact_db);
    }
}
