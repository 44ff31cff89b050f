//! The ConvNet, the loss and Adam: whole-network gradients against finite differences, PyTorch's
//! initialisation, batch independence, and the loss and optimizer against their formulas.

mod common;

use common::{assert_close, host, random, tensor, tiny, widen, DEVICE};
use kernels::Buffer;
use nn::{Adam, ConvNet, ConvNetConfig, Error, Param, SoftmaxCrossEntropy, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TINY: ConvNetConfig = tiny(8);

fn labels(rng: &mut StdRng, batch: usize, classes: usize) -> Buffer<u32> {
    let values: Vec<u32> = (0..batch)
        .map(|_| rng.random_range(0..classes as u32))
        .collect();
    DEVICE.upload(&values).unwrap()
}

fn images(rng: &mut StdRng, batch: usize, side: usize) -> Tensor {
    tensor(&[batch, 1, side, side], &random(rng, batch * side * side))
}

/// The batch's mean cross-entropy, as nn.CrossEntropyLoss.
fn mean_loss(net: &mut ConvNet, x: &Tensor, labels: &Buffer<u32>) -> f64 {
    let mut totals = DEVICE.zeros(2).unwrap();
    let logits = net.forward(x).unwrap();
    let mut xent = SoftmaxCrossEntropy::new(&DEVICE);
    xent.forward_backward(logits, labels, &mut totals).unwrap();
    host(&totals)[0] as f64 / x.shape[0] as f64
}

/// The batch's mean cross-entropy computed on the host in f64, so that the differences below
/// carry only the rounding of the network's f32 logits.
fn mean_loss_f64(net: &mut ConvNet, x: &Tensor, labels: &[u32]) -> f64 {
    let logits = host(&net.forward(x).unwrap().data);
    let rows = logits.chunks(logits.len() / labels.len()).zip(labels);
    let losses = rows.map(|(row, &label)| xent_by_hand(row, label as usize).0);
    losses.sum::<f64>() / labels.len() as f64
}

#[test]
fn network_gradients_match_finite_differences() {
    let rng = &mut StdRng::seed_from_u64(10);
    let mut net = ConvNet::new(&DEVICE, TINY, 3).unwrap();
    let x = images(rng, 3, TINY.image_size);
    let label_values: Vec<u32> = (0..3).map(|_| rng.random_range(0..4)).collect();
    let labels = DEVICE.upload(&label_values).unwrap();

    let mut xent = SoftmaxCrossEntropy::new(&DEVICE);
    let mut totals = DEVICE.zeros(2).unwrap();
    let logits = net.forward(&x).unwrap();
    let dlogits = xent.forward_backward(logits, &labels, &mut totals).unwrap();
    net.backward(&x, dlogits).unwrap();
    let grads: Vec<Vec<f32>> = net.params().iter().map(|p| host(&p.grad.data)).collect();

    // The logits' f32 rounding leaves ~1e-5 of noise in a difference over a step of 1e-3. A ReLU
    // or a pool window that switches within the step bends the loss there; the one-sided
    // difference on the other side of the switch still sees a smooth loss, and a shorter step
    // crosses fewer switches. So a coordinate passes when the central or either one-sided
    // difference agrees, over a step of 1e-3 or of 3e-4.
    for (index, grad) in grads.iter().enumerate() {
        let name = net.params()[index].name.clone();
        let at = host(&net.params()[index].value.data);
        let mut values = at.clone();
        for k in 0..at.len() {
            let mut loss_at = |v: f32| {
                values[k] = v;
                let param = &mut net.params_mut()[index];
                DEVICE.write(&values, &mut param.value.data).unwrap();
                mean_loss_f64(&mut net, &x, &label_values)
            };
            let centre = loss_at(at[k]);
            let mut differences = Vec::new();
            for h in [1e-3, 3e-4] {
                let (up, down) = (loss_at(at[k] + h), loss_at(at[k] - h));
                let h = h as f64;
                differences.extend([
                    (up - down) / (2.0 * h),
                    (up - centre) / h,
                    (centre - down) / h,
                ]);
            }
            loss_at(at[k]);
            let analytic = grad[k] as f64;
            assert!(
                differences
                    .iter()
                    .any(|d| (d - analytic).abs() <= 1e-4 + 1e-2 * d.abs()),
                "{name}[{k}]: analytic {analytic} vs differences {differences:?}"
            );
        }
    }
}

#[test]
fn params_are_in_state_dict_order_with_pytorch_shapes() {
    let net = ConvNet::new(&DEVICE, ConvNetConfig::reference(), 0).unwrap();
    let params: Vec<(&str, &[usize])> = net
        .params()
        .into_iter()
        .map(|p| (p.name.as_str(), &p.value.shape[..]))
        .collect();
    let expected: [(&str, &[usize]); 10] = [
        ("conv2d.0.weight", &[32, 1, 3, 3]),
        ("conv2d.0.bias", &[32]),
        ("conv2d.3.weight", &[64, 32, 3, 3]),
        ("conv2d.3.bias", &[64]),
        ("fc1.weight", &[1024, 3136]),
        ("fc1.bias", &[1024]),
        ("fc2.weight", &[512, 1024]),
        ("fc2.bias", &[512]),
        ("fc3.weight", &[10, 512]),
        ("fc3.bias", &[10]),
    ];
    assert_eq!(params, expected);
}

#[test]
fn init_is_uniform_within_one_over_root_fan_in_and_reproducible() {
    let net = ConvNet::new(&DEVICE, ConvNetConfig::reference(), 7).unwrap();
    let fan_ins = [9, 9, 288, 288, 3136, 3136, 1024, 1024, 512, 512];
    for (param, fan_in) in net.params().into_iter().zip(fan_ins) {
        let values = host(&param.value.data);
        let bound = 1.0 / (fan_in as f64).sqrt();
        let n = values.len() as f64;
        assert!(
            values.iter().all(|&v| (v as f64).abs() <= bound),
            "{}: a value beyond ±{bound}",
            param.name
        );
        // Uniform on ±bound: mean 0, variance bound²/3; allow five standard errors.
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let variance = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let var_expected = bound * bound / 3.0;
        assert!(
            mean.abs() <= 5.0 * (var_expected / n).sqrt(),
            "{}: mean {mean}",
            param.name
        );
        // The variance of u² for u uniform on ±b is 4b⁴/45.
        let var_error = 5.0 * (4.0 * bound.powi(4) / 45.0 / n).sqrt();
        assert!(
            (variance - var_expected).abs() <= var_error,
            "{}: variance {variance}, expected {var_expected}",
            param.name
        );
    }

    let values = |net: &ConvNet| -> Vec<Vec<f32>> {
        net.params().iter().map(|p| host(&p.value.data)).collect()
    };
    let same_seed = ConvNet::new(&DEVICE, ConvNetConfig::reference(), 7).unwrap();
    let other_seed = ConvNet::new(&DEVICE, ConvNetConfig::reference(), 8).unwrap();
    assert_eq!(values(&net), values(&same_seed));
    assert_ne!(values(&net)[0], values(&other_seed)[0]);
}

#[test]
fn each_sample_s_logits_do_not_depend_on_the_batch() {
    let rng = &mut StdRng::seed_from_u64(11);
    let config = ConvNetConfig {
        image_size: 12,
        ..TINY
    };
    let mut net = ConvNet::new(&DEVICE, config, 1).unwrap();
    let pixels = random(rng, 5 * 144);
    let batch = host(&net.forward(&tensor(&[5, 1, 12, 12], &pixels)).unwrap().data);
    // One sample at a time: the layers' buffers shrink, then grow back below.
    for (n, image) in pixels.chunks(144).enumerate() {
        let logits = net.forward(&tensor(&[1, 1, 12, 12], image)).unwrap();
        assert_eq!(logits.shape, [1, TINY.classes]);
        let expected = widen(&batch[n * TINY.classes..][..TINY.classes]);
        assert_close("logits", &host(&logits.data), &expected, 1e-5);
    }
    let again = host(&net.forward(&tensor(&[5, 1, 12, 12], &pixels)).unwrap().data);
    assert_eq!(again, batch);
}

#[test]
fn fifty_adam_steps_memorise_one_batch() {
    let rng = &mut StdRng::seed_from_u64(12);
    // Wider than TINY: with two channels, dead units can stall a net on noise.
    let config = ConvNetConfig {
        conv1_channels: 4,
        conv2_channels: 6,
        hidden1: 16,
        hidden2: 12,
        ..TINY
    };
    let mut net = ConvNet::new(&DEVICE, config, 5).unwrap();
    let x = images(rng, 8, TINY.image_size);
    let labels = labels(rng, 8, TINY.classes);
    let mut xent = SoftmaxCrossEntropy::new(&DEVICE);
    let mut adam = Adam::new(0.02);
    let mut totals = DEVICE.zeros(2).unwrap();
    let before = mean_loss(&mut net, &x, &labels);
    for _ in 0..50 {
        let logits = net.forward(&x).unwrap();
        let dlogits = xent.forward_backward(logits, &labels, &mut totals).unwrap();
        net.backward(&x, dlogits).unwrap();
        adam.step(&DEVICE, net.params_mut()).unwrap();
    }
    let after = mean_loss(&mut net, &x, &labels);
    assert_eq!(adam.steps(), 50);
    assert!(after < 0.01 * before, "loss {before} → {after}");
}

#[test]
fn bad_configs_and_inputs_are_errors() {
    let no_hidden = ConvNetConfig { hidden1: 0, ..TINY };
    assert!(matches!(
        ConvNet::new(&DEVICE, no_hidden, 0),
        Err(Error::Shape { .. })
    ));
    let mut net = ConvNet::new(&DEVICE, TINY, 0).unwrap();
    for shape in [[2, 1, 8, 9], [2, 3, 8, 8], [0, 1, 8, 8]] {
        let len = shape.iter().product::<usize>();
        match net.forward(&tensor(&shape, &vec![0.0; len])) {
            Err(Error::Shape { name, what }) => {
                assert_eq!(name, "ConvNet");
                assert!(what.contains("[N, 1, 8, 8]"), "{what}");
            }
            other => panic!("{shape:?}: expected a shape error, got {other:?}"),
        }
    }
}

/// log Σ exp(row) − row[label], and softmax(row) − onehot(label), in f64.
fn xent_by_hand(row: &[f32], label: usize) -> (f64, Vec<f64>) {
    let sum: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
    let loss = sum.ln() - row[label] as f64;
    let grad = row
        .iter()
        .enumerate()
        .map(|(c, &l)| (l as f64).exp() / sum - if c == label { 1.0 } else { 0.0 })
        .collect();
    (loss, grad)
}

#[test]
fn softmax_cross_entropy_sums_the_loss_counts_hits_and_gives_the_mean_s_gradient() {
    let rng = &mut StdRng::seed_from_u64(13);
    let (batch, classes) = (5, 7);
    let values: Vec<f32> = random(rng, batch * classes)
        .iter()
        .map(|v| 3.0 * v)
        .collect();
    let logits = tensor(&[batch, classes], &values);
    let label_values: Vec<u32> = (0..batch).map(|_| rng.random_range(0..7)).collect();
    let labels = DEVICE.upload(&label_values).unwrap();

    let (mut loss, mut hits, mut grad) = (0.0, 0.0, Vec::new());
    for (row, &label) in values.chunks(classes).zip(&label_values) {
        let (l, g) = xent_by_hand(row, label as usize);
        loss += l;
        grad.extend(g.iter().map(|g| g / batch as f64));
        let best = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        hits += (best == label as usize) as u32 as f64;
    }

    let mut xent = SoftmaxCrossEntropy::new(&DEVICE);
    let mut totals = DEVICE.upload(&[1.0f32, 2.0]).unwrap();
    xent.forward_backward(&logits, &labels, &mut totals)
        .unwrap();
    let dlogits = xent
        .forward_backward(&logits, &labels, &mut totals)
        .unwrap();
    assert_eq!(dlogits.shape, [batch, classes]);
    assert_close("dlogits", &host(&dlogits.data), &grad, 1e-5);
    assert_close(
        "totals",
        &host(&totals),
        &[1.0 + 2.0 * loss, 2.0 + 2.0 * hits],
        1e-6,
    );

    let flat = tensor(&[batch * classes], &values);
    assert!(matches!(
        xent.forward_backward(&flat, &labels, &mut totals),
        Err(Error::Shape { .. })
    ));
}

/// torch.optim.Adam's update, written out in f64.
fn adam_by_hand(p: &mut [f64], grads: &[&[f32]], (lr, beta1, beta2, eps): (f64, f64, f64, f64)) {
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        for k in 0..p.len() {
            let g = g[k] as f64;
            m[k] = beta1 * m[k] + (1.0 - beta1) * g;
            v[k] = beta2 * v[k] + (1.0 - beta2) * g * g;
            let m_hat = m[k] / (1.0 - beta1.powi(t));
            let v_hat = v[k] / (1.0 - beta2.powi(t));
            p[k] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
}

#[test]
fn adam_follows_torch_over_two_steps() {
    let rng = &mut StdRng::seed_from_u64(14);
    let start = random(rng, 12);
    let grads = [random(rng, 12), random(rng, 12)];
    let hyper = [(1e-3, 0.9, 0.999, 1e-8), (0.05, 0.8, 0.99, 1e-3)];
    for (lr, beta1, beta2, eps) in hyper {
        let mut adam = if (beta1, beta2, eps) == (0.9, 0.999, 1e-8) {
            Adam::new(lr as f32)
        } else {
            Adam::with_hyperparameters(lr as f32, beta1 as f32, beta2 as f32, eps as f32)
        };
        let mut param = Param::new(&DEVICE, "p".to_string(), &[3, 4], &start).unwrap();
        for g in &grads {
            DEVICE.write(g, &mut param.grad.data).unwrap();
            adam.step(&DEVICE, vec![&mut param]).unwrap();
        }
        assert_eq!(adam.steps(), 2);
        let mut expected = widen(&start);
        let hyper = (lr, beta1, beta2, eps);
        adam_by_hand(&mut expected, &[&grads[0], &grads[1]], hyper);
        assert_close("adam", &host(&param.value.data), &expected, 1e-5);

        let mut other = Param::new(&DEVICE, "q".to_string(), &[1], &[0.0]).unwrap();
        assert!(matches!(
            adam.step(&DEVICE, vec![&mut param, &mut other]),
            Err(Error::Shape { .. })
        ));
        assert_eq!(adam.steps(), 2, "a refused step is not counted");
    }
}

/// A parameter its layer steps keeps its moments apart from the flat ones: `apply` leaves it
/// alone, Adam's state still lists every parameter's moments in order, a state loaded before or
/// after preparing lands in both places, and other flags for the same Adam are refused.
#[test]
fn moments_of_a_parameter_stepped_in_its_layer_keep_their_place_in_the_state() {
    let rng = &mut StdRng::seed_from_u64(15);
    let mut applied = Param::new(&DEVICE, "a".to_string(), &[3], &random(rng, 3)).unwrap();
    let mut in_layer = Param::new(&DEVICE, "b".to_string(), &[2], &random(rng, 2)).unwrap();
    let before = host(&in_layer.value.data);
    DEVICE
        .write(&random(rng, 3), &mut applied.grad.data)
        .unwrap();
    DEVICE
        .write(&random(rng, 2), &mut in_layer.grad.data)
        .unwrap();
    let flags = [false, true];

    let mut adam = Adam::new(1e-2);
    adam.prepare_stepping(&DEVICE, &[&mut applied, &mut in_layer], &flags)
        .unwrap();
    adam.begin_step(&DEVICE).unwrap();
    assert!(
        adam.weight_step(0).is_err(),
        "parameter 0 is Adam's to step"
    );
    let own = ([0.25f32, -0.5], [0.125f32, 0.0625]);
    let step = adam.weight_step(1).unwrap();
    DEVICE.write(&own.0, step.m).unwrap();
    DEVICE.write(&own.1, step.v).unwrap();
    adam.apply(&DEVICE, &mut [&mut applied, &mut in_layer])
        .unwrap();
    assert_eq!(
        host(&in_layer.value.data),
        before,
        "apply stepped the layer's parameter"
    );

    let state = adam.state(&DEVICE).unwrap();
    assert_eq!(state.moments.len(), 2);
    assert_eq!(state.moments[1], (own.0.to_vec(), own.1.to_vec()));
    assert!(state.moments[0].0.iter().all(|&m| m != 0.0), "{state:?}");

    // Loaded before the first step (pending), and into an Adam already prepared.
    for prepare_first in [false, true] {
        let mut resumed = Adam::new(1e-2);
        let params = [&mut applied, &mut in_layer];
        if prepare_first {
            resumed.prepare_stepping(&DEVICE, &params, &flags).unwrap();
        }
        let shared: Vec<&Param> = params.iter().map(|p| &**p).collect();
        resumed.load_state(&DEVICE, &state, &shared).unwrap();
        resumed.prepare_stepping(&DEVICE, &params, &flags).unwrap();
        assert_eq!(
            resumed.state(&DEVICE).unwrap(),
            state,
            "prepared first: {prepare_first}"
        );
        let refused = resumed.prepare_stepping(&DEVICE, &params, &[false, false]);
        assert!(matches!(refused, Err(Error::Shape { .. })), "{refused:?}");
    }
}
