//! One whole training step of the reference network (gather, forward, loss, backward and Adam,
//! as the trainer runs it) at batch 64, 256 and 1024 on every device present: the cpu device
//! (fp32, eager) always; the cuda device, where a GPU is found and the build has its kernels, in
//! tf32 and fp32, each replaying the step's graph and eagerly.
//!
//! Throughput counts one element per image, so `Kelem/s` reads as thousands of images per
//! second, to set beside the trainer's `images_per_second`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kernels::{Device, Gpu, Precision};
use nn::{Adam, ConvNet, ConvNetConfig, Dataset, Result, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCHES: [usize; 3] = [64, 256, 1024];
/// Random images to gather batches from.
const DATASET_LEN: usize = 4096;

/// A trainer of the reference network over a random dataset on the device.
fn setup(
    device: &Device,
    precision: Precision,
    batch: usize,
    graph: bool,
) -> Result<(Trainer, Dataset)> {
    let config = ConvNetConfig::reference();
    let rng = &mut StdRng::seed_from_u64(0);
    let image_len = config.image_size * config.image_size;
    let images: Vec<u8> = (0..DATASET_LEN * image_len).map(|_| rng.random()).collect();
    let labels: Vec<u8> = (0..DATASET_LEN).map(|_| rng.random_range(0..10)).collect();
    let data = Dataset::upload(device, &images, &labels, image_len)?;
    let mut net = ConvNet::new(device, config, 0)?;
    net.set_precision(precision);
    Ok((Trainer::new(net, Adam::new(1e-3), batch, graph)?, data))
}

/// (precision, graph) pairs a device runs: the cpu device only fp32, eagerly.
fn variants(device: &Device) -> Vec<(Precision, bool)> {
    match device {
        Device::Cpu => vec![(Precision::Fp32, false)],
        _ => vec![
            (Precision::Tf32, true),
            (Precision::Tf32, false),
            (Precision::Fp32, true),
            (Precision::Fp32, false),
        ],
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
        for batch in BATCHES {
            for (precision, graph) in variants(&device) {
                let (mut trainer, data) =
                    setup(&device, precision, batch, graph).expect("setting up the network");
                let mode = if graph { "graph" } else { "eager" };
                let mut group = c.benchmark_group(format!("{}/step", device.name()));
                group
                    .sample_size(10)
                    .warm_up_time(Duration::from_secs(1))
                    .measurement_time(Duration::from_secs(3))
                    .throughput(Throughput::Elements(batch as u64));
                let batches = DATASET_LEN / batch;
                let mut next = 0;
                // Steps run back to back and the clock stops when the device has finished them.
                group.bench_function(format!("train_b{batch}_{precision}_{mode}"), |bench| {
                    bench.iter_custom(|steps| {
                        let start = Instant::now();
                        for _ in 0..steps {
                            let first = (next % batches * batch) as u32;
                            let indices: Vec<u32> = (first..first + batch as u32).collect();
                            trainer
                                .step(&data, &indices)
                                .unwrap_or_else(|e| panic!("{e}"));
                            next += 1;
                        }
                        device.synchronize().unwrap_or_else(|e| panic!("{e}"));
                        start.elapsed()
                    })
                });
                group.finish();
            }
        }
    }
}

criterion_group!(benches, step_bench);
criterion_main!(benches);
