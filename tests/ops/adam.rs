//! Adam over many tensors in one op against the reference applied to each tensor, step by step.

use kernels::reference as r;
use kernels::{AdamStep, Buffer};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::{assert_close, devices, download, random, upload, widen};

fn adam_step(step: u32) -> AdamStep {
    AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step,
    }
}

#[test]
fn adam_over_all_tensors_matches_reference_per_tensor() {
    let rng = &mut StdRng::seed_from_u64(3);
    // An empty tensor, a single value, and one long enough for the cpu device to split.
    let lens = [37, 1, 300, 0, 1025, 10, 3 * 16384 + 5];
    let total: usize = lens.iter().sum();
    for dev in devices() {
        // Parameters of about the update's size (lr): p + update then rounds by a few ulps of
        // the update, which is compared, not of a weight near 1.
        let mut params: Vec<Buffer<f32>> = lens
            .iter()
            .map(|&n| {
                upload(
                    dev,
                    &random(rng, n).iter().map(|v| 0.01 * v).collect::<Vec<_>>(),
                )
            })
            .collect();
        let mut grads: Vec<Buffer<f32>> = lens.iter().map(|&n| dev.zeros(n).unwrap()).collect();
        let table = {
            let params: Vec<&Buffer<f32>> = params.iter().collect();
            let grads: Vec<&Buffer<f32>> = grads.iter().collect();
            dev.tensor_table(&params, &grads).unwrap()
        };
        assert_eq!(table.total_len(), total);
        // Moments from earlier steps, as the fourth step on would find them.
        let m: Vec<f32> = random(rng, total).iter().map(|v| 0.1 * v).collect();
        let v: Vec<f32> = random(rng, total).iter().map(|v| 0.01 * v * v).collect();
        let (mut m, mut v) = (upload(dev, &m), upload(dev, &v));
        let mut scalars = dev.zeros(2).unwrap();
        // A late step too, where the bias corrections are near 1.
        for t in [1, 2, 3, 37] {
            let step = adam_step(t);
            // Each step starts the reference from the device's state, so errors cannot pile up.
            let before: Vec<Vec<f32>> = params.iter().map(|p| download(dev, p)).collect();
            let (before_m, before_v) = (download(dev, &m), download(dev, &v));
            let gradients: Vec<Vec<f32>> = lens
                .iter()
                .map(|&n| {
                    let mut g = random(rng, n);
                    // A weight that sees no gradient still moves by its momentum.
                    if let Some(first) = g.first_mut() {
                        *first = 0.0;
                    }
                    g
                })
                .collect();
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

            let (got_m, got_v) = (download(dev, &m), download(dev, &v));
            let mut start = 0;
            for (k, (param, g)) in params.iter().zip(&gradients).enumerate() {
                let what = format!("{} step {t}, tensor {k}", dev.name());
                let range = start..start + g.len();
                start = range.end;
                let old = widen(&before[k]);
                let (mut want_p, mut want_m, mut want_v) = (
                    old.clone(),
                    widen(&before_m[range.clone()]),
                    widen(&before_v[range.clone()]),
                );
                r::adam_update(&step, &mut want_p, &widen(g), &mut want_m, &mut want_v);
                // The update is ~lr while the parameters are ~1: compare the updates themselves.
                let got_update: Vec<f32> = download(dev, param)
                    .iter()
                    .zip(&old)
                    .map(|(&p, &o)| (p as f64 - o) as f32)
                    .collect();
                let want_update: Vec<f64> = want_p.iter().zip(&old).map(|(p, o)| p - o).collect();
                assert_close(&format!("{what}: update"), &got_update, &want_update);
                assert_close(&format!("{what}: m"), &got_m[range.clone()], &want_m);
                assert_close(&format!("{what}: v"), &got_v[range], &want_v);
            }
        }
    }
}

#[test]
fn adam_refuses_a_tensor_its_table_was_not_made_for() {
    for dev in devices() {
        let (a, b) = (dev.zeros::<f32>(4).unwrap(), dev.zeros::<f32>(4).unwrap());
        let table = dev.tensor_table(&[&a], &[&b]).unwrap();
        let mut other = dev.zeros::<f32>(4).unwrap();
        let (mut m, mut v, scalars) = (
            dev.zeros(4).unwrap(),
            dev.zeros(4).unwrap(),
            dev.zeros(2).unwrap(),
        );
        let error = dev
            .adam_update_tensors(
                &adam_step(1).hyper(),
                &scalars,
                &table,
                &mut [&mut other],
                &[&b],
                &mut m,
                &mut v,
            )
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not the one its table was made for"),
            "{}: {error}",
            dev.name()
        );
    }
}
