//! The fused ops against the unfused reference ops they replace, on the cpu device and on the
//! kernels (the emulator, or the device HANDWRITTEN_TEST_DEVICE names): max-pool with ReLU, the
//! loss forward with its backward (padding rows included), and Adam over many tensors at once.
//! Also the graph capture's contract: replay runs what was recorded, and what is not a launch
//! cannot be recorded.

use kernels::reference as r;
use kernels::{AdamStep, Buffer, Device, Pool2dShape, XentShape, IGNORE_LABEL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn kernel_device() -> Device {
    let name = std::env::var("HANDWRITTEN_TEST_DEVICE").unwrap_or_else(|_| "emulated".to_string());
    Device::from_name(&name).unwrap_or_else(|e| panic!("HANDWRITTEN_TEST_DEVICE={name}: {e}"))
}

fn devices() -> [Device; 2] {
    [Device::Cpu, kernel_device()]
}

/// Values from a handful of levels, so that maxima tie and ReLU sees exact zeros.
fn coarse(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| rng.random_range(-2..=2) as f32 * 0.5)
        .collect()
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-3.0..3.0)).collect()
}

fn nan_buffer(dev: &Device, len: usize) -> Buffer<f32> {
    dev.upload(&vec![f32::NAN; len]).unwrap()
}

/// |got − want| ≤ tolerance · max(1, |want|), elementwise.
fn assert_close(what: &str, got: &[f32], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = (g as f64 - w).abs() / w.abs().max(1.0);
        assert!(
            error <= tolerance,
            "{what}[{i}]: got {g}, want {w} (error {error:.2e})"
        );
    }
}

#[test]
fn maxpool_relu_equals_maxpool_then_relu() {
    let rng = &mut StdRng::seed_from_u64(1);
    for s in [
        Pool2dShape {
            batch: 2,
            channels: 3,
            height: 6,
            width: 8,
        },
        Pool2dShape {
            batch: 3,
            channels: 5,
            height: 7,
            width: 9,
        },
        Pool2dShape {
            batch: 2,
            channels: 32,
            height: 28,
            width: 28,
        },
        // One row: no window, every dx is 0.
        Pool2dShape {
            batch: 2,
            channels: 4,
            height: 1,
            width: 5,
        },
    ] {
        let x = coarse(rng, s.input_len());
        let dy = coarse(rng, s.output_len());
        // The unfused reference: pool, ReLU; backward through ReLU, then the pool.
        let (mut pooled, mut want_argmax) = (vec![0.0; s.output_len()], vec![0; s.output_len()]);
        r::maxpool2d_forward(&s, &x, &mut pooled, &mut want_argmax);
        let mut want_y = vec![0.0; s.output_len()];
        r::relu_forward(&pooled, &mut want_y);
        let mut masked = vec![0.0; s.output_len()];
        r::relu_backward(&want_y, &dy, &mut masked);
        let mut want_dx = vec![0.0; s.input_len()];
        r::maxpool2d_backward(&s, &want_argmax, &masked, &mut want_dx);

        for dev in devices() {
            let what = format!("{} {s:?}", dev.name());
            let x_buf = dev.upload(&x).unwrap();
            let mut y = nan_buffer(&dev, s.output_len());
            let mut argmax = dev.upload(&vec![u32::MAX; s.output_len()]).unwrap();
            dev.maxpool2d_relu_forward(&s, &x_buf, &mut y, &mut argmax)
                .unwrap();
            assert_eq!(dev.download(&y).unwrap(), want_y, "{what}: y");
            assert_eq!(
                dev.download(&argmax).unwrap(),
                want_argmax,
                "{what}: argmax"
            );
            let mut dx = nan_buffer(&dev, s.input_len());
            let dy_buf = dev.upload(&dy).unwrap();
            dev.maxpool2d_relu_backward(&s, &argmax, &y, &dy_buf, &mut dx)
                .unwrap();
            assert_eq!(dev.download(&dx).unwrap(), want_dx, "{what}: dx");
        }
    }
}

#[test]
fn fused_loss_equals_the_reference_over_the_rows_that_are_not_padding() {
    let rng = &mut StdRng::seed_from_u64(2);
    // Batches beyond 32 rows make warps take several rows; the last shape has over 1024 rows.
    for (batch, classes, padding) in [
        (1, 1, 0),
        (1, 10, 0),
        (7, 10, 3),
        (64, 10, 32),
        (45, 37, 0),
        (1100, 10, 60),
    ] {
        let s = XentShape { batch, classes };
        // Every other row coarse, so that the argmax has ties to break.
        let logits: Vec<f32> = random(rng, batch * classes)
            .iter()
            .enumerate()
            .map(|(i, v)| if i / classes % 2 == 0 { v.round() } else { *v })
            .collect();
        let mut labels: Vec<u32> = (0..batch)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        // Padding rows at the end, as an epoch's last batch has them.
        labels[batch - padding..].fill(IGNORE_LABEL);
        let real = batch - padding;

        let real_shape = XentShape {
            batch: real,
            classes,
        };
        let wide: Vec<f64> = logits.iter().map(|&l| l as f64).collect();
        let mut want_totals = [0.5f64, 2.0];
        r::softmax_xent_forward(&real_shape, &wide, &labels, &mut want_totals);
        let mut want_dlogits = vec![0.0f64; batch * classes];
        r::softmax_xent_backward(&real_shape, &wide, &labels, &mut want_dlogits);

        for dev in devices() {
            let what = format!(
                "{} batch {batch}, classes {classes}, padding {padding}",
                dev.name()
            );
            let mut totals = dev.upload(&[0.5f32, 2.0]).unwrap();
            let mut dlogits = nan_buffer(&dev, batch * classes);
            let logits = dev.upload(&logits).unwrap();
            let labels = dev.upload(&labels).unwrap();
            dev.softmax_xent_fused(&s, &logits, &labels, &mut totals, &mut dlogits)
                .unwrap();
            let totals = dev.download(&totals).unwrap();
            assert_close(
                &format!("{what}: loss"),
                &totals[..1],
                &want_totals[..1],
                1e-5,
            );
            assert_eq!(totals[1] as f64, want_totals[1], "{what}: correct");
            assert_close(
                &format!("{what}: dlogits"),
                &dev.download(&dlogits).unwrap(),
                &want_dlogits,
                1e-6,
            );
        }
    }
}

#[test]
fn adam_over_all_tensors_equals_adam_per_tensor() {
    let rng = &mut StdRng::seed_from_u64(3);
    let lens = [37, 1, 300, 0, 1025, 10];
    let total: usize = lens.iter().sum();
    for dev in devices() {
        let values: Vec<Vec<f32>> = lens.iter().map(|&n| random(rng, n)).collect();
        let mut params: Vec<Buffer<f32>> = values.iter().map(|v| dev.upload(v).unwrap()).collect();
        let mut grads: Vec<Buffer<f32>> = lens.iter().map(|&n| dev.zeros(n).unwrap()).collect();
        let table = {
            let params: Vec<&Buffer<f32>> = params.iter().collect();
            let grads: Vec<&Buffer<f32>> = grads.iter().collect();
            dev.tensor_table(&params, &grads).unwrap()
        };
        assert_eq!(table.total_len(), total);
        let (mut m, mut v) = (dev.zeros(total).unwrap(), dev.zeros(total).unwrap());
        let mut scalars = dev.zeros(2).unwrap();
        let mut want: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = values
            .iter()
            .map(|p| {
                (
                    p.iter().map(|&x| x as f64).collect(),
                    vec![0.0; p.len()],
                    vec![0.0; p.len()],
                )
            })
            .collect();
        for t in 1..=3 {
            let step = AdamStep {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                step: t,
            };
            let gradients: Vec<Vec<f32>> = lens.iter().map(|&n| random(rng, n)).collect();
            for (grad, g) in grads.iter_mut().zip(&gradients) {
                dev.write(g, grad).unwrap();
            }
            dev.write(&step.scalars(), &mut scalars).unwrap();
            let mut param_refs: Vec<&mut Buffer<f32>> = params.iter_mut().collect();
            let grad_refs: Vec<&Buffer<f32>> = grads.iter().collect();
            dev.adam_update_tensors(
                &step.hyper(),
                &scalars,
                &table,
                &mut param_refs,
                &grad_refs,
                &mut m,
                &mut v,
            )
            .unwrap();
            for ((p, m, v), g) in want.iter_mut().zip(&gradients) {
                let g: Vec<f64> = g.iter().map(|&x| x as f64).collect();
                r::adam_update(&step, p, &g, m, v);
            }
        }
        let (got_m, got_v) = (dev.download(&m).unwrap(), dev.download(&v).unwrap());
        let mut start = 0;
        for (t, (param, (p, m, v))) in params.iter().zip(&want).enumerate() {
            let what = format!("{} tensor {t}", dev.name());
            let range = start..start + p.len();
            start = range.end;
            assert_close(
                &format!("{what}: params"),
                &dev.download(param).unwrap(),
                p,
                1e-5,
            );
            assert_close(&format!("{what}: m"), &got_m[range.clone()], m, 1e-5);
            assert_close(&format!("{what}: v"), &got_v[range], v, 1e-5);
        }
    }
}

#[test]
fn adam_over_tensors_refuses_a_tensor_its_table_was_not_made_for() {
    let dev = kernel_device();
    let (a, b) = (dev.zeros::<f32>(4).unwrap(), dev.zeros::<f32>(4).unwrap());
    let table = dev.tensor_table(&[&a], &[&b]).unwrap();
    let mut other = dev.zeros::<f32>(4).unwrap();
    let (mut m, mut v, scalars) = (
        dev.zeros(4).unwrap(),
        dev.zeros(4).unwrap(),
        dev.zeros(2).unwrap(),
    );
    let hyper = AdamStep {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 1,
    }
    .hyper();
    let err = dev
        .adam_update_tensors(
            &hyper,
            &scalars,
            &table,
            &mut [&mut other],
            &[&b],
            &mut m,
            &mut v,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not the one its table was made for"),
        "{err}"
    );
}

#[test]
fn a_replayed_graph_runs_what_was_recorded_and_only_launches_can_be_recorded() {
    let dev = kernel_device();
    let s = Pool2dShape {
        batch: 1,
        channels: 2,
        height: 4,
        width: 4,
    };
    let x: Vec<f32> = (0..s.input_len()).map(|i| i as f32 - 10.0).collect();
    let mut x_buf = dev.upload(&x).unwrap();
    let mut y = nan_buffer(&dev, s.output_len());
    let mut argmax = dev.zeros(s.output_len()).unwrap();
    let graph = dev
        .capture(|| dev.maxpool2d_relu_forward(&s, &x_buf, &mut y, &mut argmax))
        .unwrap();
    // Nothing ran yet; then each replay reads x as it is at that moment.
    assert!(dev.download(&y).unwrap().iter().all(|v| v.is_nan()));
    for shift in [0.0, 20.0] {
        let shifted: Vec<f32> = x.iter().map(|v| v + shift).collect();
        dev.write(&shifted, &mut x_buf).unwrap();
        unsafe { dev.launch_graph(&graph).unwrap() };
        let mut want = (vec![0.0; s.output_len()], vec![0; s.output_len()]);
        kernels::cpu::maxpool2d_relu_forward(&s, &shifted, &mut want.0, &mut want.1);
        assert_eq!(dev.download(&y).unwrap(), want.0, "shift {shift}");
    }
    let err = dev.capture(|| dev.write(&x, &mut x_buf)).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot be part of a graph capture"),
        "{err}"
    );
    // The failed capture ended: the device works as before.
    dev.write(&x, &mut x_buf).unwrap();
    let err = Device::Cpu
        .capture(|| Ok::<(), kernels::Error>(()))
        .unwrap_err();
    assert!(err.to_string().contains("no kernels to capture"), "{err}");
}
