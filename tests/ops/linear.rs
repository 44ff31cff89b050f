//! Linear forward (plain and with the fused ReLU), input and weight gradients, in fp32 and TF32,
//! and the TF32 rounding itself.

use kernels::{Activation, Device, Precision};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::gemm::{check, random_linear, LINEAR_LARGE, LINEAR_SHAPES};
use crate::common::{devices, download, linear, nan_buffer, upload};

#[test]
fn linear_fp32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for s in LINEAR_SHAPES.into_iter().chain(LINEAR_LARGE) {
        check(&s, Precision::Fp32, &mut rng);
    }
    for _ in 0..10 {
        let s = random_linear(&mut rng);
        check(&s, Precision::Fp32, &mut rng);
    }
}

#[test]
fn linear_tf32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(15);
    // fc2 in place of fc1: its forward pass and input gradient split their sums too, at a third
    // of the cost of three references.
    for s in LINEAR_SHAPES.into_iter().chain([linear(64, 1024, 512)]) {
        check(&s, Precision::Tf32, &mut rng);
    }
}

/// No images, no input features: empty outputs, or sums of nothing (the bias alone, and 0).
#[test]
fn linear_of_empty_shapes_matches_reference() {
    let mut rng = StdRng::seed_from_u64(16);
    for s in [linear(0, 5, 3), linear(2, 0, 3)] {
        check(&s, Precision::Fp32, &mut rng);
    }
}

/// TF32 rounds to nearest with ties away from zero before multiplying: 1 + 2^-11 (a tie) becomes
/// 1 + 2^-10, and 1 + 2^-12 becomes 1, so x·w differs from fp32 in a way only rounding explains.
/// (Truncation, or no rounding at all, gives other sums; these are exact in fp32.)
#[test]
fn linear_tf32_rounds_operands_to_nearest_ties_away() {
    let s = linear(1, 8, 1);
    let x = [1.0 + 2f32.powi(-11); 8];
    let w = [1.0 + 2f32.powi(-12); 8];
    let with_tf32 = |dev: &&Device| dev.check_precision(Precision::Tf32).is_ok();
    for dev in devices().iter().filter(with_tf32) {
        let (xb, wb, b) = (upload(dev, &x), upload(dev, &w), upload(dev, &[0.0]));
        let mut y = nan_buffer(dev, 1);
        for (precision, want) in [
            (Precision::Tf32, 8.0 * (1.0 + 2f32.powi(-10))),
            (
                Precision::Fp32,
                8.0 * (1.0 + 2f32.powi(-11)) * (1.0 + 2f32.powi(-12)),
            ),
        ] {
            dev.linear_forward(&s, precision, Activation::None, &xb, &wb, &b, &mut y)
                .unwrap();
            assert_eq!(download(dev, &y), [want], "{} {precision}", dev.name());
        }
    }
}

/// fc1's weight step inside its gradient's product, through the device API: where the device
/// fuses weight updates, the same bits as the gradient and then Adam over the weight's tensor;
/// elsewhere refused, naming the op; moments of the wrong length refused, naming them.
#[test]
fn linear_weight_step_in_the_gradient_is_the_gradient_then_adam_or_refused() {
    let mut rng = StdRng::seed_from_u64(17);
    let s = linear(13, 70, 33);
    let step = kernels::AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 2,
    };
    let hyper = step.hyper();
    let values = |rng: &mut StdRng, len| crate::common::random(rng, len);
    let (x, dy, w) = (
        values(&mut rng, s.input_len()),
        values(&mut rng, s.output_len()),
        values(&mut rng, s.weight_len()),
    );
    let moment: Vec<f32> = values(&mut rng, w.len()).iter().map(|v| v * v).collect();
    for dev in devices() {
        let (x, dy, scalars) = (
            upload(dev, &x),
            upload(dev, &dy),
            upload(dev, &step.scalars()),
        );
        let (mut weight, mut m, mut v) =
            (upload(dev, &w), upload(dev, &moment), upload(dev, &moment));
        let mut db = upload(dev, &vec![0.0; s.out_features]);
        let fused = dev.linear_backward_weight_adam(
            &s,
            Precision::Fp32,
            &x,
            &dy,
            (&hyper, &scalars),
            (&mut weight, &mut m, &mut v),
            &mut db,
        );
        if !dev.fuses_weight_updates() {
            let e = fused.expect_err("a device that does not fuse").to_string();
            assert!(
                e.contains("linear_backward_weight_adam") && e.contains("cpu"),
                "{e}"
            );
            continue;
        }
        fused.unwrap();

        let (mut apart, mut m_apart, mut v_apart) =
            (upload(dev, &w), upload(dev, &moment), upload(dev, &moment));
        let (mut dw, mut db_apart) = (upload(dev, &w), upload(dev, &vec![0.0; s.out_features]));
        dev.linear_backward_weight(&s, Precision::Fp32, &x, &dy, &mut dw, &mut db_apart)
            .unwrap();
        let table = dev.tensor_table(&[&apart], &[&dw]).unwrap();
        let params = &mut [&mut apart];
        dev.adam_update_tensors(
            &hyper,
            &scalars,
            &table,
            params,
            &[&dw],
            &mut m_apart,
            &mut v_apart,
        )
        .unwrap();
        let bits = |b| {
            download(dev, b)
                .iter()
                .map(|v: &f32| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&weight), bits(&apart), "{}: weight", dev.name());
        assert_eq!(bits(&m), bits(&m_apart), "{}: m", dev.name());
        assert_eq!(bits(&v), bits(&v_apart), "{}: v", dev.name());
        assert_eq!(bits(&db), bits(&db_apart), "{}: bias gradient", dev.name());

        let mut short = upload(dev, &moment[1..]);
        let e = dev
            .linear_backward_weight_adam(
                &s,
                Precision::Fp32,
                &x,
                &dy,
                (&hyper, &scalars),
                (&mut weight, &mut short, &mut v),
                &mut db,
            )
            .expect_err("a short m")
            .to_string();
        assert!(
            e.contains("linear_backward_weight_adam") && e.contains("m"),
            "{e}"
        );
    }
}
