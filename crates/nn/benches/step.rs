//! One whole training step of the reference network at batch 64 (forward, loss, backward and
//! Adam, as the trainer runs it) on every device present: the cpu device always, the cuda device
//! where a GPU is found and the build has its kernels.
//!
//! Throughput counts one element per image, so `Kelem/s` reads as thousands of images per
//! second, to set beside the trainer's `images_per_second`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kernels::{Buffer, Device, Gpu};
use nn::{Adam, ConvNet, ConvNetConfig, Result, SoftmaxCrossEntropy, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCH: usize = 64;

/// The network, its loss and optimizer, and one batch already on the device.
struct Training {
    device: Device,
    net: ConvNet,
    xent: SoftmaxCrossEntropy,
    adam: Adam,
    images: Tensor,
    labels: Buffer<u32>,
    /// Loss sum and correct count, added up on the device as in the trainer.
    totals: Buffer<f32>,
}

impl Training {
    fn new(device: &Device) -> Result<Self> {
        let config = ConvNetConfig::reference();
        let rng = &mut StdRng::seed_from_u64(0);
        let side = config.image_size;
        let pixels: Vec<f32> = (0..BATCH * side * side)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let labels: Vec<u32> = (0..BATCH).map(|_| rng.random_range(0..10)).collect();
        Ok(Training {
            device: device.clone(),
            net: ConvNet::new(device, config, 0)?,
            xent: SoftmaxCrossEntropy::new(device),
            adam: Adam::new(1e-3),
            images: Tensor::from_slice(device, &[BATCH, 1, side, side], &pixels)?,
            labels: device.upload(&labels)?,
            totals: device.zeros(2)?,
        })
    }

    fn step(&mut self) -> Result<()> {
        let logits = self.net.forward(&self.images)?;
        self.xent.forward(logits, &self.labels, &mut self.totals)?;
        let dlogits = self.xent.backward(logits, &self.labels)?;
        self.net.backward(&self.images, dlogits)?;
        self.adam.step(&self.device, self.net.params_mut())
    }
}

/// The cpu device, and the cuda device where there is a GPU to open.
fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    match Device::from_name("cuda") {
        Ok(gpu) => devices.push(gpu),
        Err(e) if !Gpu::is_available() => println!("cuda not benched: {e}"),
        Err(e) => panic!("a GPU is present but cannot be opened: {e}"),
    }
    devices
}

fn step_bench(c: &mut Criterion) {
    for device in devices() {
        let mut training = Training::new(&device).expect("setting up the reference network");
        let mut group = c.benchmark_group(format!("{}/step", device.name()));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(BATCH as u64));
        // Steps run back to back and the clock stops when the device has finished them all.
        group.bench_function(format!("train_b{BATCH}"), |bench| {
            bench.iter_custom(|steps| {
                let start = Instant::now();
                for _ in 0..steps {
                    training.step().unwrap_or_else(|e| panic!("{e}"));
                }
                device.synchronize().unwrap_or_else(|e| panic!("{e}"));
                start.elapsed()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, step_bench);
criterion_main!(benches);
