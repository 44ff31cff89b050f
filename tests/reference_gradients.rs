//! The reference ops against finite differences (every backward, in f64) and against small cases
//! worked out by hand.

mod common;

use common::{conv, linear, pool};
use kernels::reference as r;
use kernels::{AdamStep, Conv2dShape, XentShape, IGNORE_LABEL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Compares `analytic` with central differences of `loss` around `at`, element by element.
fn check_gradient(name: &str, at: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(at.len(), analytic.len(), "{name}: gradient length");
    let h = 1e-5;
    let mut x = at.to_vec();
    for k in 0..x.len() {
        x[k] = at[k] + h;
        let up = loss(&x);
        x[k] = at[k] - h;
        let down = loss(&x);
        x[k] = at[k];
        let numeric = (up - down) / (2.0 * h);
        let error = (numeric - analytic[k]).abs();
        assert!(
            error <= 1e-7 + 1e-6 * numeric.abs(),
            "{name}[{k}]: analytic {} vs numeric {numeric}",
            analytic[k]
        );
    }
}

const CONV_SHAPES: [Conv2dShape; 5] = [
    conv(2, 3, 4, 5, 6, 3, 1, 1),
    conv(2, 2, 3, 7, 7, 3, 2, 0),
    conv(1, 2, 2, 6, 5, 3, 2, 2),
    conv(1, 1, 2, 4, 4, 1, 1, 0),
    conv(3, 2, 2, 5, 4, 2, 2, 1),
];

#[test]
fn conv2d_gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(1);
    for s in &CONV_SHAPES {
        let x = random(&mut rng, s.input_len());
        let w = random(&mut rng, s.weight_len());
        let b = random(&mut rng, s.out_channels);
        let dy = random(&mut rng, s.output_len());
        // L = Σ dy·y, so ∂L/∂y = dy.
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; s.output_len()];
            r::conv2d_forward(s, x, w, b, &mut y);
            dot(&y, &dy)
        };
        let mut dx = vec![0.0; s.input_len()];
        let mut dw = vec![0.0; s.weight_len()];
        let mut db = vec![0.0; s.out_channels];
        r::conv2d_backward_input(s, &w, &dy, &mut dx);
        r::conv2d_backward_weight(s, &x, &dy, &mut dw, &mut db);
        let name = format!("{s:?}");
        check_gradient(&format!("dx {name}"), &x, &dx, |x| loss(x, &w, &b));
        check_gradient(&format!("dw {name}"), &w, &dw, |w| loss(&x, w, &b));
        check_gradient(&format!("db {name}"), &b, &db, |b| loss(&x, &w, b));
    }
}

#[test]
fn maxpool2d_gradient_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(2);
    for s in [pool(2, 3, 6, 4), pool(1, 2, 5, 7)] {
        let x = random(&mut rng, s.input_len());
        let dy = random(&mut rng, s.output_len());
        let mut y = vec![0.0; s.output_len()];
        let mut argmax = vec![0; s.output_len()];
        r::maxpool2d_forward(&s, &x, &mut y, &mut argmax);
        let mut dx = vec![0.0; s.input_len()];
        r::maxpool2d_backward(&s, &argmax, &dy, &mut dx);
        check_gradient(&format!("maxpool {s:?}"), &x, &dx, |x| {
            let mut y = vec![0.0; s.output_len()];
            let mut argmax = vec![0; s.output_len()];
            r::maxpool2d_forward(&s, x, &mut y, &mut argmax);
            dot(&y, &dy)
        });
    }
}

#[test]
fn relu_gradient_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(3);
    // Keep inputs away from the kink at zero, where the derivative is undefined.
    let x: Vec<f64> = random(&mut rng, 50)
        .iter()
        .map(|v| v + 0.01f64.copysign(*v))
        .collect();
    let dy = random(&mut rng, x.len());
    let mut y = vec![0.0; x.len()];
    r::relu_forward(&x, &mut y);
    let mut dx = vec![0.0; x.len()];
    r::relu_backward(&y, &dy, &mut dx);
    check_gradient("relu", &x, &dx, |x| {
        let mut y = vec![0.0; x.len()];
        r::relu_forward(x, &mut y);
        dot(&y, &dy)
    });
}

#[test]
fn linear_gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(4);
    for s in [linear(3, 7, 5), linear(1, 4, 9)] {
        let x = random(&mut rng, s.batch * s.in_features);
        let w = random(&mut rng, s.out_features * s.in_features);
        let b = random(&mut rng, s.out_features);
        let dy = random(&mut rng, s.batch * s.out_features);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; s.batch * s.out_features];
            r::linear_forward(&s, x, w, b, &mut y);
            dot(&y, &dy)
        };
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; b.len()];
        r::linear_backward_input(&s, &w, &dy, &mut dx);
        r::linear_backward_weight(&s, &x, &dy, &mut dw, &mut db);
        check_gradient(&format!("dx {s:?}"), &x, &dx, |x| loss(x, &w, &b));
        check_gradient(&format!("dw {s:?}"), &w, &dw, |w| loss(&x, w, &b));
        check_gradient(&format!("db {s:?}"), &b, &db, |b| loss(&x, &w, b));
    }
}

#[test]
fn softmax_xent_gradient_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(5);
    let s = XentShape {
        batch: 4,
        classes: 6,
    };
    let logits: Vec<f64> = random(&mut rng, s.batch * s.classes)
        .iter()
        .map(|v| 4.0 * v)
        .collect();
    let labels = [0, 5, 2, 2];
    let mut dlogits = vec![0.0; logits.len()];
    r::softmax_xent_backward(&s, &logits, &labels, &mut dlogits);
    check_gradient("softmax_xent", &logits, &dlogits, |logits| {
        let mut totals = [0.0; 2];
        r::softmax_xent_forward(&s, logits, &labels, &mut totals);
        totals[0] / s.batch as f64
    });
}

#[test]
fn softmax_xent_skips_padding_rows_and_averages_over_the_real_ones() {
    // Row 1 is padding: no loss, no count, zero gradient; the other rows' gradient divides by 2,
    // the real rows, exactly as for the batch without it.
    let s = XentShape {
        batch: 3,
        classes: 3,
    };
    let logits = [1.0f64, 2.0, 3.0, 9.0, 9.0, 9.0, 0.0, 0.0, 0.0];
    let labels = [2, IGNORE_LABEL, 0];
    let mut totals = [0.0; 2];
    r::softmax_xent_forward(&s, &logits, &labels, &mut totals);
    let mut dlogits = [f64::NAN; 9];
    r::softmax_xent_backward(&s, &logits, &labels, &mut dlogits);

    let real = XentShape {
        batch: 2,
        classes: 3,
    };
    let real_logits = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0];
    let mut want_totals = [0.0; 2];
    r::softmax_xent_forward(&real, &real_logits, &[2, 0], &mut want_totals);
    let mut want = [0.0; 6];
    r::softmax_xent_backward(&real, &real_logits, &[2, 0], &mut want);
    assert_eq!(totals, want_totals);
    assert_eq!(dlogits[..3], want[..3]);
    assert_eq!(dlogits[3..6], [0.0; 3]);
    assert_eq!(dlogits[6..], want[3..]);
}

#[test]
fn conv2d_forward_by_hand() {
    // x = 1..9 in a 3x3 image; a 3x3 kernel of ones sums each pixel's neighbourhood.
    let x: Vec<f64> = (1..=9).map(f64::from).collect();
    let ones = [1.0; 9];
    let same = conv(1, 1, 1, 3, 3, 3, 1, 1);
    let mut y = [0.0; 9];
    r::conv2d_forward(&same, &x, &ones, &[0.5], &mut y);
    let sums = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0];
    assert_eq!(y, sums.map(|v| v + 0.5));

    // Stride 2 keeps the corners.
    let strided = conv(1, 1, 1, 3, 3, 3, 2, 1);
    let mut y = [0.0; 4];
    r::conv2d_forward(&strided, &x, &ones, &[0.0], &mut y);
    assert_eq!(y, [12.0, 16.0, 24.0, 28.0]);

    // A kernel with a single 1 in its top-left corner is cross-correlation, not convolution:
    // y[i, j] = x[i − 1, j − 1].
    let mut corner = [0.0; 9];
    corner[0] = 1.0;
    let mut y = [0.0; 9];
    r::conv2d_forward(&same, &x, &corner, &[0.0], &mut y);
    assert_eq!(y, [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0]);

    // Two input channels add up; two output channels are independent.
    let two = conv(1, 2, 2, 1, 1, 1, 1, 0);
    let mut y = [0.0; 2];
    r::conv2d_forward(
        &two,
        &[3.0, 5.0],
        &[1.0, 2.0, -1.0, 0.5],
        &[0.0, 1.0],
        &mut y,
    );
    assert_eq!(y, [13.0, 0.5]);
}

#[test]
fn maxpool2d_by_hand() {
    // 1x1x3x5: the odd last row and column are dropped; ties keep the first maximum.
    let s = pool(1, 1, 3, 5);
    #[rustfmt::skip]
    let x = [
        1.0, 7.0, 2.0, 2.0, 9.0,
        3.0, 4.0, 2.0, 2.0, 9.0,
        9.0, 9.0, 9.0, 9.0, 9.0,
    ];
    let mut y = [0.0; 2];
    let mut argmax = [0; 2];
    r::maxpool2d_forward(&s, &x, &mut y, &mut argmax);
    assert_eq!(y, [7.0, 2.0]);
    assert_eq!(argmax, [1, 2]);
    let mut dx = [5.0; 15];
    r::maxpool2d_backward(&s, &argmax, &[10.0, 20.0], &mut dx);
    let mut expected = [0.0; 15];
    expected[1] = 10.0;
    expected[2] = 20.0;
    assert_eq!(dx, expected);
}

#[test]
fn relu_by_hand() {
    let mut y = [9.0; 4];
    r::relu_forward(&[-2.0, 0.0, 0.5, 3.0], &mut y);
    assert_eq!(y, [0.0, 0.0, 0.5, 3.0]);
    let mut dx = [9.0; 4];
    r::relu_backward(&y, &[1.0, 2.0, 3.0, 4.0], &mut dx);
    assert_eq!(dx, [0.0, 0.0, 3.0, 4.0]);
}

#[test]
fn linear_by_hand() {
    let s = linear(1, 2, 3);
    let w = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let mut y = [0.0; 3];
    r::linear_forward(&s, &[1.0, 2.0], &w, &[0.0, 0.0, 1.0], &mut y);
    assert_eq!(y, [1.0, 2.0, 4.0]);
    let mut dx = [0.0; 2];
    r::linear_backward_input(&s, &w, &[1.0, 10.0, 100.0], &mut dx);
    assert_eq!(dx, [101.0, 110.0]);
}

#[test]
fn softmax_xent_of_equal_logits_is_log_classes() {
    let s = XentShape {
        batch: 2,
        classes: 10,
    };
    let logits = [3.0f64; 20];
    // Row 0's label is its first maximum (index 0) and counts as correct; row 1's does not.
    let labels = [0, 7];
    let mut totals = [1.0, 1.0];
    r::softmax_xent_forward(&s, &logits, &labels, &mut totals);
    assert!(
        (totals[0] - (1.0 + 2.0 * 10f64.ln())).abs() < 1e-12,
        "{totals:?}"
    );
    assert_eq!(totals[1], 2.0);

    let mut dlogits = [0.0; 20];
    r::softmax_xent_backward(&s, &logits, &labels, &mut dlogits);
    for (k, d) in dlogits.iter().enumerate() {
        let onehot = if k == 0 || k == 17 { 1.0 } else { 0.0 };
        assert!(
            (d - (0.1 - onehot) / 2.0).abs() < 1e-12,
            "dlogits[{k}] = {d}"
        );
    }
}

#[test]
fn softmax_xent_survives_huge_logits() {
    let s = XentShape {
        batch: 1,
        classes: 3,
    };
    let mut totals = [0.0f32; 2];
    r::softmax_xent_forward(&s, &[1000.0, 0.0, -1000.0], &[1], &mut totals);
    assert!((totals[0] - 1000.0).abs() < 1e-3, "{totals:?}");
    assert_eq!(totals[1], 0.0);
}

fn adam(lr: f32, step: u32) -> AdamStep {
    AdamStep {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step,
    }
}

#[test]
fn adam_first_step_moves_each_parameter_by_lr_against_its_gradient() {
    // Within lr·eps/|g| of ±lr: eps only matters for gradients near its size.
    let grads = [0.3, -2.0, 1e-3, -5e-4];
    let mut params = [1.0f64; 4];
    let (mut m, mut v) = ([0.0; 4], [0.0; 4]);
    r::adam_update(&adam(0.01, 1), &mut params, &grads, &mut m, &mut v);
    for (p, g) in params.iter().zip(grads) {
        assert!(
            (p - (1.0 - 0.01 * g.signum())).abs() < 1e-6,
            "{p} for gradient {g}"
        );
    }
}

#[test]
fn adam_steps_by_lr_under_a_constant_gradient() {
    // With a constant gradient the bias corrections exactly undo the moments' warm-up.
    let mut params = [0.0f64; 2];
    let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
    for step in 1..=50 {
        r::adam_update(
            &adam(0.001, step),
            &mut params,
            &[0.5, -0.25],
            &mut m,
            &mut v,
        );
    }
    assert!((params[0] + 0.05).abs() < 1e-7, "{params:?}");
    assert!((params[1] - 0.05).abs() < 1e-7, "{params:?}");
}

#[test]
fn adam_leaves_parameters_alone_without_gradients() {
    let mut params = [0.7f32, -0.2];
    let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
    r::adam_update(&adam(0.1, 1), &mut params, &[0.0, 0.0], &mut m, &mut v);
    assert_eq!(params, [0.7, -0.2]);
}

#[test]
fn gather_picks_rows_and_normalises_to_minus_one_one() {
    // Two images of four pixels; 51 = 0.2·255 and 204 = 0.8·255.
    let images = [0, 255, 51, 204, 255, 0, 0, 0];
    let mut out = [0.0f32; 12];
    r::gather_images(&images, 4, &[1, 0, 1], &mut out);
    let expected = [
        1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -0.6, 0.6, 1.0, -1.0, -1.0, -1.0,
    ];
    for (o, e) in out.iter().zip(expected) {
        assert!((o - e).abs() < 1e-6, "{out:?}");
    }
    let mut labels = [0u32; 3];
    r::gather_labels(&[4, 7, 1], &[2, 0, 2], &mut labels);
    assert_eq!(labels, [1, 4, 1]);
}
