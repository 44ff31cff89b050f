//! The same training steps on the cpu device and on the CUDA kernels (the emulator, or the GPU
//! named by HANDWRITTEN_TEST_DEVICE) give the same losses: the whole stack, layer wiring and
//! launch configurations included, agrees across devices. And the Trainer's captured step graph
//! replays exactly what its eager step runs.

mod common;

use common::{kernel_device, SMALL};
use kernels::{Device, Precision};
use nn::{Adam, ConvNet, Dataset, SoftmaxCrossEntropy, Tensor, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCH: usize = 16;
const STEPS: usize = 5;

/// Mean loss and correct count of each step, training from the same seed on the same batch.
fn train(device: &Device, images: &[f32], labels: &[u32]) -> Vec<(f32, f32)> {
    let mut net = ConvNet::new(device, SMALL, 7).unwrap();
    let mut xent = SoftmaxCrossEntropy::new(device);
    let mut adam = Adam::new(0.01);
    let shape = [BATCH, 1, SMALL.image_size, SMALL.image_size];
    let x = Tensor::from_slice(device, &shape, images).unwrap();
    let labels = device.upload(labels).unwrap();
    (0..STEPS)
        .map(|_| {
            let mut totals = device.zeros(2).unwrap();
            let logits = net.forward(&x).unwrap();
            let dlogits = xent.forward_backward(logits, &labels, &mut totals).unwrap();
            net.backward(&x, dlogits).unwrap();
            adam.step(device, net.params_mut()).unwrap();
            let totals = device.download(&totals).unwrap();
            (totals[0] / BATCH as f32, totals[1])
        })
        .collect()
}

#[test]
fn training_steps_agree_with_the_cpu_device() {
    let rng = &mut StdRng::seed_from_u64(5);
    let pixels = BATCH * SMALL.image_size * SMALL.image_size;
    let images: Vec<f32> = (0..pixels).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels: Vec<u32> = (0..BATCH).map(|_| rng.random_range(0..10)).collect();

    let on_cpu = train(&Device::Cpu, &images, &labels);
    let on_kernels = train(&kernel_device(), &images, &labels);
    for (step, (cpu, kernels)) in on_cpu.iter().zip(&on_kernels).enumerate() {
        let relative = (cpu.0 - kernels.0).abs() / cpu.0.abs();
        assert!(
            relative <= 1e-4,
            "step {step}: cpu loss {} vs kernels {} (relative {relative:e})",
            cpu.0,
            kernels.0
        );
        assert_eq!(cpu.1, kernels.1, "step {step}: correct counts differ");
    }
    // Repeating one batch, the loss must fall, or agreement would prove little.
    assert!(
        on_cpu[STEPS - 1].0 < on_cpu[0].0,
        "loss did not fall: {on_cpu:?}"
    );
}

/// A dataset of random images and labels, uploaded to `device`.
fn random_dataset(device: &Device, len: usize) -> Dataset {
    let rng = &mut StdRng::seed_from_u64(11);
    let image_len = SMALL.image_size * SMALL.image_size;
    let images: Vec<u8> = (0..len * image_len).map(|_| rng.random()).collect();
    let labels: Vec<u8> = (0..len).map(|_| rng.random_range(0..10)).collect();
    Dataset::upload(device, &images, &labels, image_len).unwrap()
}

/// Two epochs of 40 images in batches of 16 (the last one padded from 8) through the Trainer,
/// then an evaluation: each epoch's mean loss and accuracy, the test figures, and the
/// parameters after.
fn train_with_trainer(
    device: &Device,
    precision: Precision,
    use_graph: bool,
) -> (Vec<(f64, f64)>, Vec<Vec<f32>>) {
    let mut net = ConvNet::new(device, SMALL, 7).unwrap();
    net.set_precision(precision);
    let data = random_dataset(device, 40);
    let mut trainer = Trainer::new(net, Adam::new(0.01), BATCH, use_graph).unwrap();
    assert_eq!(trainer.uses_graph(), use_graph && *device != Device::Cpu);
    let mut figures = Vec::new();
    for epoch in 0..2u32 {
        let order: Vec<u32> = (0..40).map(|i| (i * 7 + epoch * 3) % 40).collect();
        figures.push(trainer.train_epoch(&data, &order, |_, _| Ok(())).unwrap());
        figures.push(trainer.evaluate(&data, 25).unwrap());
    }
    assert_eq!(trainer.adam().steps(), 6);
    let params = trainer.net().params();
    let params = params
        .iter()
        .map(|p| p.value.to_vec(device).unwrap())
        .collect();
    (figures, params)
}

#[test]
fn a_replayed_step_graph_equals_the_eager_step_bit_for_bit() {
    let device = kernel_device();
    let eager = train_with_trainer(&device, device.default_precision(), false);
    let graph = train_with_trainer(&device, device.default_precision(), true);
    assert_eq!(eager.0, graph.0, "epoch and test figures");
    for (k, (e, g)) in eager.1.iter().zip(&graph.1).enumerate() {
        let same = e.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "parameter {k} differs between graph and eager steps");
    }
}

/// TF32 keeps 10 of fp32's 23 mantissa bits of each product's operands, a relative rounding of
/// up to 2^-11 ≈ 5e-4 per operand; summed over a few hundred terms and six Adam steps of the
/// small network, the losses stay within 1e-2 of the cpu device's fp32 ones.
#[test]
fn training_on_tf32_kernels_agrees_with_the_cpu_device() {
    let (cpu, _) = train_with_trainer(&Device::Cpu, Precision::Fp32, false);
    // Where the GPU has no TF32 (Turing), its default: the exact fp32 engine.
    let device = kernel_device();
    let (tf32, _) = train_with_trainer(&device, device.default_precision(), true);
    for (k, (c, t)) in cpu.iter().zip(&tf32).enumerate() {
        let relative = (c.0 - t.0).abs() / c.0.abs();
        assert!(
            relative <= 1e-2,
            "pass {k}: cpu loss {} vs tf32 {} (relative {relative:e})",
            c.0,
            t.0
        );
    }
    // Repeating the same 40 images, the loss must fall, or agreement would prove little.
    assert!(cpu[2].0 < cpu[0].0, "loss did not fall: {cpu:?}");
}

/// A label the network has no class for is refused by name on every device, before any kernel
/// could turn it into a NaN loss.
#[test]
fn labels_past_the_networks_classes_are_refused_on_every_device() {
    for device in [Device::Cpu, kernel_device()] {
        let image_len = SMALL.image_size * SMALL.image_size;
        let labels = [3u8, SMALL.classes as u8];
        let data = Dataset::upload(&device, &vec![0; 2 * image_len], &labels, image_len).unwrap();
        let net = ConvNet::new(&device, SMALL, 0).unwrap();
        let mut trainer = Trainer::new(net, Adam::new(1e-3), 2, false).unwrap();
        let said = format!("label {}", SMALL.classes);
        let err = trainer.step(&data, &[0, 1]).unwrap_err().to_string();
        assert!(err.contains(&said), "{}: {err}", device.name());
        let err = trainer.evaluate(&data, 2).unwrap_err().to_string();
        assert!(err.contains(&said), "{}: {err}", device.name());
    }
}

/// On the cpu device the Trainer steps fc1's weight inside the op that computes its gradient
/// (`ConvNet::backward_stepping`); its steps are, bit for bit, the plain backward pass and then
/// Adam over every parameter, and so are Adam's moments after them.
#[test]
fn the_cpu_trainer_s_weight_step_in_its_layer_is_backward_then_adam() {
    let device = Device::Cpu;
    let net = ConvNet::new(&device, SMALL, 7).unwrap();
    let stepped = net.stepped_in_layer();
    assert_eq!(stepped.iter().filter(|&&s| s).count(), 1, "{stepped:?}");
    assert!(
        stepped[net
            .params()
            .iter()
            .position(|p| p.name == "fc1.weight")
            .unwrap()],
        "{stepped:?}"
    );
    let data = random_dataset(&device, 2 * BATCH);
    let batches: [Vec<u32>; 3] = [
        (0..BATCH as u32).collect(),
        (BATCH as u32..2 * BATCH as u32).collect(),
        (0..BATCH as u32).rev().collect(),
    ];
    let mut trainer = Trainer::new(net, Adam::new(0.01), BATCH, false).unwrap();
    for batch in &batches {
        trainer.step(&data, batch).unwrap();
    }

    // The same steps by hand: every gradient stored, then Adam over all of them.
    let rng = &mut StdRng::seed_from_u64(11);
    let image_len = SMALL.image_size * SMALL.image_size;
    let pixels: Vec<u8> = (0..2 * BATCH * image_len).map(|_| rng.random()).collect();
    let labels: Vec<u8> = (0..2 * BATCH).map(|_| rng.random_range(0..10)).collect();
    let mut net = ConvNet::new(&device, SMALL, 7).unwrap();
    let (mut xent, mut adam) = (SoftmaxCrossEntropy::new(&device), Adam::new(0.01));
    for batch in &batches {
        let batch_pixels: Vec<u8> = batch
            .iter()
            .flat_map(|&i| &pixels[i as usize * image_len..][..image_len])
            .copied()
            .collect();
        let x = nn::normalized_images(&device, &batch_pixels, SMALL.image_size).unwrap();
        let batch_labels: Vec<u32> = batch.iter().map(|&i| labels[i as usize] as u32).collect();
        let batch_labels = device.upload(&batch_labels).unwrap();
        let mut totals = device.zeros(2).unwrap();
        let logits = net.forward(&x).unwrap();
        let dlogits = xent
            .forward_backward(logits, &batch_labels, &mut totals)
            .unwrap();
        net.backward(&x, dlogits).unwrap();
        adam.step(&device, net.params_mut()).unwrap();
    }

    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (stepped, by_hand) in trainer.net().params().iter().zip(net.params()) {
        let (a, b) = (
            stepped.value.to_vec(&device).unwrap(),
            by_hand.value.to_vec(&device).unwrap(),
        );
        assert_eq!(bits(&a), bits(&b), "{}", by_hand.name);
    }
    let (in_layer, apart) = (
        trainer.adam().state(&device).unwrap(),
        adam.state(&device).unwrap(),
    );
    assert_eq!(in_layer.steps, 3);
    assert_eq!(in_layer, apart, "Adam's moments");
}
