//! The same training steps on the cpu device and on the CUDA kernels (the emulator, or the GPU
//! named by HANDWRITTEN_TEST_DEVICE) give the same losses: the whole stack, layer wiring and
//! launch configurations included, agrees across devices.

use kernels::Device;
use nn::{Adam, ConvNet, ConvNetConfig, SoftmaxCrossEntropy, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SMALL: ConvNetConfig = ConvNetConfig {
    conv1_channels: 4,
    conv2_channels: 8,
    hidden1: 32,
    hidden2: 16,
    classes: 10,
    image_size: 28,
};
const BATCH: usize = 16;
const STEPS: usize = 5;

fn kernel_device() -> Device {
    let name = std::env::var("HANDWRITTEN_TEST_DEVICE").unwrap_or_else(|_| "emulated".into());
    Device::from_name(&name).unwrap_or_else(|e| panic!("HANDWRITTEN_TEST_DEVICE={name}: {e}"))
}

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
            xent.forward(logits, &labels, &mut totals).unwrap();
            let dlogits = xent.backward(logits, &labels).unwrap();
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
