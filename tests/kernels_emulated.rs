//! Every CUDA kernel against the reference ops, through the device API, on random inputs.
//!
//! The device is `emulated` (the kernels on the CPU emulator, so every CI run executes them), or
//! the one HANDWRITTEN_TEST_DEVICE names: `cuda` on a GPU machine. Shapes straddle the 64-wide
//! GEMM tiles and the 256-thread blocks so that the edges of every launch are exercised, and every
//! output buffer starts out as NaN so that an element a kernel forgets to write cannot pass.

mod common;

use common::conv;
use kernels::reference as r;
use kernels::{
    Activation, AdamStep, Buffer, Conv2dShape, Device, LinearShape, Pool2dShape, Precision,
    XentShape,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn device() -> Device {
    let name = std::env::var("HANDWRITTEN_TEST_DEVICE").unwrap_or_else(|_| "emulated".to_string());
    Device::from_name(&name).unwrap_or_else(|e| panic!("HANDWRITTEN_TEST_DEVICE={name}: {e}"))
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Values from a handful of levels, so that maxima tie and ReLU sees exact zeros.
fn coarse(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| rng.random_range(-2..=2) as f32 * 0.5)
        .collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn upload(dev: &Device, data: &[f32]) -> Buffer<f32> {
    dev.upload(data).unwrap()
}

/// An output buffer full of NaN.
fn output(dev: &Device, len: usize) -> Buffer<f32> {
    dev.upload(&vec![f32::NAN; len]).unwrap()
}

fn download(dev: &Device, buf: &Buffer<f32>) -> Vec<f32> {
    dev.download(buf).unwrap()
}

/// Asserts |got − want| ≤ 1e-4 · max|want| elementwise: the rounding error of a sum of products
/// grows with the size of its terms, which the largest output stands for.
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs())).max(1e-30);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = (g as f64 - w).abs() / scale;
        assert!(
            error <= 1e-4,
            "{what}[{i}]: got {g}, want {w} (error {error:.2e} of max |want| {scale:.3e})"
        );
    }
}

const CONV_SHAPES: [Conv2dShape; 9] = [
    conv(2, 3, 5, 7, 9, 3, 1, 1),
    conv(2, 4, 6, 9, 8, 3, 2, 0),
    // The network's two layers, with small batches.
    conv(1, 1, 32, 28, 28, 3, 1, 1),
    conv(2, 32, 64, 14, 14, 3, 1, 1),
    // More than one tile of output channels, then of input channels.
    conv(3, 5, 70, 6, 5, 3, 2, 1),
    conv(2, 70, 3, 5, 5, 1, 1, 0),
    conv(1, 2, 3, 8, 7, 5, 2, 2),
    // The network's two layers, whole: long sums over the batch, which the weight gradient
    // splits across blocks.
    conv(64, 1, 32, 28, 28, 3, 1, 1),
    conv(64, 32, 64, 14, 14, 3, 1, 1),
];

#[test]
fn conv2d_forward_matches_reference() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(11);
    for s in &CONV_SHAPES {
        let x = random(&mut rng, s.input_len());
        let w = random(&mut rng, s.weight_len());
        let b = random(&mut rng, s.out_channels);
        let mut y = output(&dev, s.output_len());
        dev.conv2d_forward(
            s,
            Precision::Fp32,
            &upload(&dev, &x),
            &upload(&dev, &w),
            &upload(&dev, &b),
            &mut y,
        )
        .unwrap();

        let mut want = vec![0.0; s.output_len()];
        r::conv2d_forward(s, &widen(&x), &widen(&w), &widen(&b), &mut want);
        assert_close(
            &format!("conv2d_forward {s:?}: y"),
            &download(&dev, &y),
            &want,
        );
    }
}

#[test]
fn conv2d_backward_matches_reference() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(12);
    for s in &CONV_SHAPES {
        let x = random(&mut rng, s.input_len());
        let w = random(&mut rng, s.weight_len());
        let dy = random(&mut rng, s.output_len());
        let dy_buf = upload(&dev, &dy);
        let mut dx = output(&dev, s.input_len());
        let mut dw = output(&dev, s.weight_len());
        let mut db = output(&dev, s.out_channels);
        dev.conv2d_backward_input(s, Precision::Fp32, &upload(&dev, &w), &dy_buf, &mut dx)
            .unwrap();
        dev.conv2d_backward_weight(
            s,
            Precision::Fp32,
            &upload(&dev, &x),
            &dy_buf,
            &mut dw,
            &mut db,
        )
        .unwrap();

        let mut want_dx = vec![0.0; s.input_len()];
        let mut want_dw = vec![0.0; s.weight_len()];
        let mut want_db = vec![0.0; s.out_channels];
        r::conv2d_backward_input(s, &widen(&w), &widen(&dy), &mut want_dx);
        r::conv2d_backward_weight(s, &widen(&x), &widen(&dy), &mut want_dw, &mut want_db);
        let what = format!("conv2d_backward {s:?}");
        assert_close(&format!("{what}: dx"), &download(&dev, &dx), &want_dx);
        assert_close(&format!("{what}: dweight"), &download(&dev, &dw), &want_dw);
        assert_close(&format!("{what}: dbias"), &download(&dev, &db), &want_db);
    }
}

#[test]
fn maxpool2d_matches_reference_including_ties() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(13);
    let shapes = [
        Pool2dShape {
            batch: 2,
            channels: 3,
            height: 6,
            width: 8,
        },
        Pool2dShape {
            batch: 1,
            channels: 5,
            height: 7,
            width: 9,
        },
        Pool2dShape {
            batch: 3,
            channels: 32,
            height: 28,
            width: 28,
        },
        Pool2dShape {
            batch: 2,
            channels: 4,
            height: 1,
            width: 5,
        },
    ];
    for s in &shapes {
        let x = coarse(&mut rng, s.input_len());
        let dy = random(&mut rng, s.output_len());
        let mut y = output(&dev, s.output_len());
        let mut argmax = dev.upload(&vec![u32::MAX; s.output_len()]).unwrap();
        let mut dx = output(&dev, s.input_len());
        dev.maxpool2d_forward(s, &upload(&dev, &x), &mut y, &mut argmax)
            .unwrap();
        dev.maxpool2d_backward(s, &argmax, &upload(&dev, &dy), &mut dx)
            .unwrap();

        let mut want_y = vec![0.0; s.output_len()];
        let mut want_argmax = vec![0; s.output_len()];
        let mut want_dx = vec![0.0; s.input_len()];
        r::maxpool2d_forward(s, &x, &mut want_y, &mut want_argmax);
        r::maxpool2d_backward(s, &want_argmax, &dy, &mut want_dx);
        // Nothing is summed: every output is one of the inputs, exactly.
        assert_eq!(download(&dev, &y), want_y, "maxpool2d_forward {s:?}: y");
        assert_eq!(
            dev.download(&argmax).unwrap(),
            want_argmax,
            "maxpool2d_forward {s:?}: argmax"
        );
        assert_eq!(download(&dev, &dx), want_dx, "maxpool2d_backward {s:?}: dx");
    }
}

#[test]
fn relu_matches_reference() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(14);
    for len in [1, 255, 256, 1000] {
        let x = coarse(&mut rng, len);
        let dy = random(&mut rng, len);
        let mut y = output(&dev, len);
        let mut dx = output(&dev, len);
        dev.relu_forward(&upload(&dev, &x), &mut y).unwrap();
        dev.relu_backward(&y, &upload(&dev, &dy), &mut dx).unwrap();

        let mut want_y = vec![0.0; len];
        let mut want_dx = vec![0.0; len];
        r::relu_forward(&x, &mut want_y);
        r::relu_backward(&want_y, &dy, &mut want_dx);
        assert_eq!(download(&dev, &y), want_y, "relu_forward, {len} elements");
        assert_eq!(
            download(&dev, &dx),
            want_dx,
            "relu_backward, {len} elements"
        );
    }
}

#[test]
fn linear_matches_reference() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(15);
    let shapes = [
        LinearShape {
            batch: 1,
            in_features: 1,
            out_features: 1,
        },
        LinearShape {
            batch: 5,
            in_features: 37,
            out_features: 13,
        },
        LinearShape {
            batch: 70,
            in_features: 129,
            out_features: 65,
        },
        LinearShape {
            batch: 64,
            in_features: 300,
            out_features: 130,
        },
        LinearShape {
            batch: 64,
            in_features: 512,
            out_features: 10,
        },
        // The network's first fully connected layer, whole: its forward pass and input
        // gradient split their sums across blocks.
        LinearShape {
            batch: 64,
            in_features: 3136,
            out_features: 1024,
        },
        // The last layer at a large batch: the weight gradient splits its sum over the batch.
        LinearShape {
            batch: 1024,
            in_features: 512,
            out_features: 10,
        },
    ];
    for s in &shapes {
        let x = random(&mut rng, s.batch * s.in_features);
        let w = random(&mut rng, s.out_features * s.in_features);
        let b = random(&mut rng, s.out_features);
        let dy = random(&mut rng, s.batch * s.out_features);
        let (x_buf, w_buf, dy_buf) = (upload(&dev, &x), upload(&dev, &w), upload(&dev, &dy));
        let mut y = output(&dev, s.batch * s.out_features);
        let mut dx = output(&dev, s.batch * s.in_features);
        let mut dw = output(&dev, s.out_features * s.in_features);
        let mut db = output(&dev, s.out_features);
        dev.linear_forward(
            s,
            Precision::Fp32,
            Activation::None,
            &x_buf,
            &w_buf,
            &upload(&dev, &b),
            &mut y,
        )
        .unwrap();
        dev.linear_backward_input(s, Precision::Fp32, &w_buf, &dy_buf, &mut dx)
            .unwrap();
        dev.linear_backward_weight(s, Precision::Fp32, &x_buf, &dy_buf, &mut dw, &mut db)
            .unwrap();

        let (x, w, dy) = (widen(&x), widen(&w), widen(&dy));
        let mut want_y = vec![0.0; s.batch * s.out_features];
        let mut want_dx = vec![0.0; s.batch * s.in_features];
        let mut want_dw = vec![0.0; s.out_features * s.in_features];
        let mut want_db = vec![0.0; s.out_features];
        r::linear_forward(s, &x, &w, &widen(&b), &mut want_y);
        r::linear_backward_input(s, &w, &dy, &mut want_dx);
        r::linear_backward_weight(s, &x, &dy, &mut want_dw, &mut want_db);
        let what = format!("linear {s:?}");
        assert_close(&format!("{what}: y"), &download(&dev, &y), &want_y);
        assert_close(&format!("{what}: dx"), &download(&dev, &dx), &want_dx);
        assert_close(&format!("{what}: dweight"), &download(&dev, &dw), &want_dw);
        assert_close(&format!("{what}: dbias"), &download(&dev, &db), &want_db);
    }
}

#[test]
fn softmax_xent_matches_reference_including_ties() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(16);
    let shapes = [
        XentShape {
            batch: 1,
            classes: 1,
        },
        XentShape {
            batch: 3,
            classes: 10,
        },
        XentShape {
            batch: 64,
            classes: 10,
        },
        XentShape {
            batch: 70,
            classes: 37,
        },
    ];
    for s in &shapes {
        // Half the rows coarse, so that the argmax has ties to break.
        let logits: Vec<f32> = random(&mut rng, s.batch * s.classes)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i / s.classes % 2 == 0 {
                    (v * 2.0).round()
                } else {
                    v * 4.0
                }
            })
            .collect();
        let labels: Vec<u32> = (0..s.batch)
            .map(|_| rng.random_range(0..s.classes as u32))
            .collect();
        // The forward pass adds to totals that already hold something.
        let start = [2.5f32, 7.0];
        let (logits_buf, labels_buf) = (upload(&dev, &logits), dev.upload(&labels).unwrap());
        let mut totals = upload(&dev, &start);
        let mut dlogits = output(&dev, s.batch * s.classes);
        dev.softmax_xent_forward(s, &logits_buf, &labels_buf, &mut totals)
            .unwrap();
        dev.softmax_xent_backward(s, &logits_buf, &labels_buf, &mut dlogits)
            .unwrap();

        let mut want_totals = widen(&start);
        let mut want_dlogits = vec![0.0; s.batch * s.classes];
        r::softmax_xent_forward(s, &widen(&logits), &labels, &mut want_totals);
        r::softmax_xent_backward(s, &widen(&logits), &labels, &mut want_dlogits);
        let totals = download(&dev, &totals);
        assert_close(
            &format!("softmax_xent_forward {s:?}: loss"),
            &totals[..1],
            &want_totals[..1],
        );
        assert_eq!(
            totals[1] as f64, want_totals[1],
            "softmax_xent_forward {s:?}: correct"
        );
        assert_close(
            &format!("softmax_xent_backward {s:?}: dlogits"),
            &download(&dev, &dlogits),
            &want_dlogits,
        );
    }
}

#[test]
fn adam_matches_reference_over_several_steps() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(17);
    let len = 1000;
    let mut params = upload(&dev, &random(&mut rng, len));
    let mut m = dev.zeros(len).unwrap();
    let mut v = dev.zeros(len).unwrap();
    for t in 1..=5 {
        let step = AdamStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: t,
        };
        let mut grads = random(&mut rng, len);
        grads[0] = 0.0;
        // Each step starts the reference from the device's state, so errors cannot pile up.
        let before = widen(&download(&dev, &params));
        let (mut want_p, mut want_m, mut want_v) = (
            before.clone(),
            widen(&download(&dev, &m)),
            widen(&download(&dev, &v)),
        );
        dev.adam_update(&step, &mut params, &upload(&dev, &grads), &mut m, &mut v)
            .unwrap();
        r::adam_update(&step, &mut want_p, &widen(&grads), &mut want_m, &mut want_v);

        // The update is ~lr while the parameters are ~1: compare the updates themselves.
        let got_p = download(&dev, &params);
        let got_update: Vec<f32> = got_p
            .iter()
            .zip(&before)
            .map(|(&p, &b)| (p as f64 - b) as f32)
            .collect();
        let want_update: Vec<f64> = want_p.iter().zip(&before).map(|(p, b)| p - b).collect();
        assert_close(&format!("adam step {t}: update"), &got_update, &want_update);
        assert_close(&format!("adam step {t}: m"), &download(&dev, &m), &want_m);
        assert_close(&format!("adam step {t}: v"), &download(&dev, &v), &want_v);
    }
}
