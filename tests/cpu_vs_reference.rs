//! The cpu device's internals, which the op suite (tests/ops) cannot reach through the device
//! API: its thread setup, and the unfused cpu ops that no device op calls, against the reference.

mod common;

use common::{assert_close, assert_exact, coarse, pool, random, widen};
use kernels::{cpu, reference as r, AdamStep, XentShape};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

/// Max-pool without ReLU, and ReLU alone: exactly, with ties in the windows.
#[test]
fn unfused_maxpool2d_and_relu_match_reference_exactly() {
    let mut rng = StdRng::seed_from_u64(12);
    for s in [
        pool(64, 32, 28, 28),
        pool(1, 1, 5, 7),
        pool(2, 3, 1, 3),
        pool(7, 5, 9, 4),
    ] {
        let x = coarse(&mut rng, s.input_len());
        let dy = random(&mut rng, s.output_len());
        let (mut y, mut argmax) = (
            vec![f32::NAN; s.output_len()],
            vec![u32::MAX; s.output_len()],
        );
        cpu::maxpool2d_forward(&s, &x, &mut y, &mut argmax);
        let (mut want_y, mut want_argmax) = (vec![0.0; s.output_len()], vec![0; s.output_len()]);
        r::maxpool2d_forward(&s, &x, &mut want_y, &mut want_argmax);
        assert_exact(&format!("y {s:?}"), &y, &want_y);
        assert_exact(&format!("argmax {s:?}"), &argmax, &want_argmax);
        let (mut dx, mut want_dx) = (vec![f32::NAN; s.input_len()], vec![0.0; s.input_len()]);
        cpu::maxpool2d_backward(&s, &argmax, &dy, &mut dx);
        r::maxpool2d_backward(&s, &argmax, &dy, &mut want_dx);
        assert_exact(&format!("dx {s:?}"), &dx, &want_dx);
    }
    for len in [0, 1, 17, 100_003] {
        let x = coarse(&mut rng, len);
        let (mut y, mut want) = (vec![f32::NAN; len], vec![0.0; len]);
        cpu::relu_forward(&x, &mut y);
        r::relu_forward(&x, &mut want);
        assert_exact(&format!("relu_forward, {len} elements"), &y, &want);
    }
}

/// The loss's forward and backward apart, and Adam on one tensor.
#[test]
fn unfused_softmax_xent_and_adam_match_reference() {
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
        let logits: Vec<f32> = random(&mut rng, s.logits_len())
            .iter()
            .map(|v| 8.0 * v)
            .collect();
        let labels: Vec<u32> = (0..s.batch)
            .map(|_| rng.random_range(0..s.classes as u32))
            .collect();
        let mut totals = [0.5f32, 2.0];
        cpu::softmax_xent_forward(&s, &logits, &labels, &mut totals);
        let mut want = [0.5, 2.0];
        r::softmax_xent_forward(&s, &widen(&logits), &labels, &mut want);
        assert_close(&format!("loss {s:?}"), &totals[..1], &want[..1]);
        assert_eq!(totals[1] as f64, want[1], "correct count {s:?}");
        let mut dlogits = vec![f32::NAN; s.logits_len()];
        cpu::softmax_xent_backward(&s, &logits, &labels, &mut dlogits);
        let mut want = vec![0.0; s.logits_len()];
        r::softmax_xent_backward(&s, &widen(&logits), &labels, &mut want);
        assert_close(&format!("dlogits {s:?}"), &dlogits, &want);
    }
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
        let params: Vec<f32> = random(&mut rng, len).iter().map(|v| 0.01 * v).collect();
        let grads = random(&mut rng, len);
        let m: Vec<f32> = random(&mut rng, len).iter().map(|v| 0.1 * v).collect();
        let v: Vec<f32> = random(&mut rng, len).iter().map(|v| 0.01 * v * v).collect();
        let (mut p, mut got_m, mut got_v) = (params.clone(), m.clone(), v.clone());
        cpu::adam_update(&step, &mut p, &grads, &mut got_m, &mut got_v);
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
        assert_close(&format!("update, {len} elements"), &update, &want_update);
        assert_close(&format!("m, {len} elements"), &got_m, &want_m);
        assert_close(&format!("v, {len} elements"), &got_v, &want_v);
    }
}
