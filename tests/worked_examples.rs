//! The worked examples of docs/*.md, computed with the reference ops: every number a page asks a
//! student to check by hand is checked here too, so a page cannot drift from the code.

mod common;

use common::{conv, pool};
use kernels::reference as r;
use kernels::{AdamStep, XentShape, IGNORE_LABEL};

/// docs/conv2d.md: x = 1..9, a 3x3 kernel, padding 1, stride 1.
const X: [f64; 9] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
#[rustfmt::skip]
const W: [f64; 9] = [
    1.0, 0.0, -1.0,
    2.0, 0.0, -2.0,
    1.0, 0.0, -1.0,
];

#[test]
fn conv2d_3x3_forward_by_hand() {
    let s = conv(1, 1, 1, 3, 3, 3, 1, 1);
    let mut y = [0.0; 9];
    r::conv2d_forward(&s, &X, &W, &[1.0], &mut y);
    #[rustfmt::skip]
    let want = [
         -8.0, -5.0, 10.0,
        -19.0, -7.0, 21.0,
        -20.0, -5.0, 22.0,
    ];
    assert_eq!(y, want);
}

#[test]
fn conv2d_3x3_patch_matrix_by_hand() {
    // Column d of the patch matrix is the forward pass with the one-hot kernel at tap d and no
    // bias: y[q] = patch[q, d].
    let s = conv(1, 1, 1, 3, 3, 3, 1, 1);
    let mut patch = [[0.0; 9]; 9];
    for d in 0..9 {
        let mut unit = [0.0; 9];
        unit[d] = 1.0;
        let mut y = [0.0; 9];
        r::conv2d_forward(&s, &X, &unit, &[0.0], &mut y);
        for q in 0..9 {
            patch[q][d] = y[q];
        }
    }
    #[rustfmt::skip]
    let want = [
        [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0],
        [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 5.0, 6.0, 0.0],
        [0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 0.0, 7.0, 8.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        [2.0, 3.0, 0.0, 5.0, 6.0, 0.0, 8.0, 9.0, 0.0],
        [0.0, 4.0, 5.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.0],
        [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 0.0],
        [5.0, 6.0, 0.0, 8.0, 9.0, 0.0, 0.0, 0.0, 0.0],
    ];
    assert_eq!(patch, want);
    // y = W·patchᵀ + b, row by row.
    let mut y = [0.0; 9];
    r::conv2d_forward(&s, &X, &W, &[1.0], &mut y);
    for q in 0..9 {
        let dot: f64 = (0..9).map(|d| W[d] * patch[q][d]).sum();
        assert_eq!(y[q], dot + 1.0, "pixel {q}");
    }
}

#[test]
fn conv2d_3x3_backward_of_ones_by_hand() {
    let s = conv(1, 1, 1, 3, 3, 3, 1, 1);
    let dy = [1.0; 9];
    let mut dx = [0.0; 9];
    r::conv2d_backward_input(&s, &W, &dy, &mut dx);
    #[rustfmt::skip]
    let want_dx = [
        3.0, 0.0, -3.0,
        4.0, 0.0, -4.0,
        3.0, 0.0, -3.0,
    ];
    assert_eq!(dx, want_dx);
    let (mut dw, mut db) = ([0.0; 9], [0.0; 1]);
    r::conv2d_backward_weight(&s, &X, &dy, &mut dw, &mut db);
    #[rustfmt::skip]
    let want_dw = [
        12.0, 21.0, 16.0,
        27.0, 45.0, 33.0,
        24.0, 39.0, 28.0,
    ];
    assert_eq!(dw, want_dw);
    assert_eq!(db, [9.0]);
}

#[test]
fn maxpool_4x4_with_ties_by_hand() {
    let s = pool(1, 1, 4, 4);
    #[rustfmt::skip]
    let x = [
        1.0, 3.0,  2.0,  2.0,
        4.0, 0.0,  1.0,  0.0,
        5.0, 6.0, -1.0, -3.0,
        6.0, 2.0, -2.0, -4.0,
    ];
    let (mut y, mut argmax) = ([0.0; 4], [0u32; 4]);
    r::maxpool2d_forward(&s, &x, &mut y, &mut argmax);
    assert_eq!(y, [4.0, 2.0, 6.0, -1.0]);
    // Ties: the 2 at index 2 beats the one at 3, the 6 at 9 beats the one at 12.
    assert_eq!(argmax, [4, 2, 9, 10]);
    let mut z = [0.0; 4];
    r::relu_forward(&y, &mut z);
    assert_eq!(z, [4.0, 2.0, 6.0, 0.0]);
    // Backward of the fused pair: ReLU's mask, then the pool's routing to the argmax.
    let mut dy = [0.0; 4];
    r::relu_backward(&z, &[10.0, 20.0, 30.0, 40.0], &mut dy);
    let mut dx = [f64::NAN; 16];
    r::maxpool2d_backward(&s, &argmax, &dy, &mut dx);
    let mut want = [0.0; 16];
    (want[4], want[2], want[9]) = (10.0, 20.0, 30.0);
    assert_eq!(dx, want);
}

#[test]
fn softmax_xent_3_classes_with_a_padding_row_by_hand() {
    let s = XentShape {
        batch: 3,
        classes: 3,
    };
    let logits = [1.0, 2.0, 3.0, 9.0, 9.0, 9.0, 0.0, 0.0, 0.0];
    let labels = [2, IGNORE_LABEL, 0];
    let mut totals = [0.0; 2];
    r::softmax_xent_forward(&s, &logits, &labels, &mut totals);
    let mean = totals[0] / 2.0;
    let close = |what: &str, got: f64, want: f64| {
        assert!((got - want).abs() < 5e-5, "{what}: {got}, want {want}");
    };
    close("loss sum", totals[0], 0.4076 + 1.0986);
    close("mean over the 2 real rows", mean, 0.7531);
    assert_eq!(totals[1], 2.0);
    let mut d = [f64::NAN; 9];
    r::softmax_xent_backward(&s, &logits, &labels, &mut d);
    let want = [
        0.0450, 0.1224, -0.1674, 0.0, 0.0, 0.0, -0.3333, 0.1667, 0.1667,
    ];
    for (k, (&g, w)) in d.iter().zip(want).enumerate() {
        close(&format!("dlogits[{k}]"), g, w);
    }
}

#[test]
fn adam_two_steps_by_hand() {
    let (mut p, mut m, mut v) = ([1.0f64], [0.0], [0.0]);
    let step = |t| AdamStep {
        lr: 0.001,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: t,
    };
    let close = |what: &str, got: f64, want: f64, tol: f64| {
        assert!((got - want).abs() <= tol, "{what}: {got}, want {want}");
    };
    r::adam_update(&step(1), &mut p, &[0.5], &mut m, &mut v);
    // The step holds β in f32 (1 − 0.9f32 is 0.10000002), so the moments are off by about
    // 2.4e-7 of themselves (v, with 1 − 0.999f32, by 1.3e-5); the page gives 7 digits.
    close("m after 1", m[0], 0.05, 1e-6 * 0.05);
    close("v after 1", v[0], 0.00025, 2e-5 * 0.00025);
    close("p after 1", p[0], 0.999, 1e-9);
    r::adam_update(&step(2), &mut p, &[-0.5], &mut m, &mut v);
    close("m after 2", m[0], -0.005, 1e-5 * 0.005);
    close("v after 2", v[0], 0.00049975, 2e-5 * 0.00049975);
    close("p after 2", p[0], 0.9990526, 1e-7);
}
