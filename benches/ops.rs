//! Every op at the reference network's shapes, batch 64 and 1024, on every device present: the
//! cpu device always, the cuda device where a GPU is found and the build has its kernels. Group
//! names start with the device, so `cargo bench -p kernels --bench ops -- cuda/` benches the GPU
//! alone. The whole training step is benched in crates/nn/benches/step.rs.
//!
//! Throughput: GEMM-bound ops count one element per flop, so `Gelem/s` reads as GFLOP/s (each
//! backward does as many multiply-adds as its forward); memory-bound ops count the bytes they
//! must read and write, in GB/s. The GEMM-shaped ops run in each precision the device has (the
//! cuda device: `_fp32` on the SIMT cores and `_tf32` on the tensor cores; the cpu device: fp32),
//! and each also prints one line with its median time per call and the TFLOP/s that makes.
//!
//! On the cuda device, `gemm_lab` benches each step of the GEMM kernel's history
//! (kernels/gemm_lab.cu, docs/gemm.md) on the same products: `cargo bench --bench ops -- gemm_lab`.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use criterion::{Throughput, Throughput::BytesDecimal as Bytes, Throughput::Elements as Flops};
use kernels::gemm_lab::GemmStep;
use kernels::{cpu, reference, AdamStep, Buffer, Device, Element, Gpu, Result};
use kernels::{Activation, Conv2dShape, LinearShape, Pool2dShape, Precision, XentShape};
use std::sync::Once;
use std::time::{Duration, Instant};

const BATCHES: [usize; 2] = [64, 1024];
/// MNIST's training images, which the data kernels gather from.
const TRAIN_IMAGES: usize = 60_000;
const IMAGE_LEN: usize = 28 * 28;

fn conv1(batch: usize) -> Conv2dShape {
    Conv2dShape {
        batch,
        in_channels: 1,
        out_channels: 32,
        height: 28,
        width: 28,
        kernel: 3,
        stride: 1,
        padding: 1,
    }
}
fn conv2(batch: usize) -> Conv2dShape {
    Conv2dShape {
        batch,
        in_channels: 32,
        out_channels: 64,
        height: 14,
        width: 14,
        kernel: 3,
        stride: 1,
        padding: 1,
    }
}
fn pool1(batch: usize) -> Pool2dShape {
    Pool2dShape {
        batch,
        channels: 32,
        height: 28,
        width: 28,
    }
}
fn pool2(batch: usize) -> Pool2dShape {
    Pool2dShape {
        batch,
        channels: 64,
        height: 14,
        width: 14,
    }
}
fn fc1(batch: usize) -> LinearShape {
    LinearShape {
        batch,
        in_features: 3136,
        out_features: 1024,
    }
}
fn fc2(batch: usize) -> LinearShape {
    LinearShape {
        batch,
        in_features: 1024,
        out_features: 512,
    }
}
fn fc3(batch: usize) -> LinearShape {
    LinearShape {
        batch,
        in_features: 512,
        out_features: 10,
    }
}

/// Deterministic values in [−scale, scale): a benchmark needs no better randomness.
fn filled(len: usize, scale: f32) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
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

fn upload<T: Element>(device: &Device, data: &[T]) -> Buffer<T> {
    device.upload(data).expect("uploading a bench input")
}

fn zeros<T: Element>(device: &Device, len: usize) -> Buffer<T> {
    device.zeros(len).expect("allocating a bench output")
}

/// Short runs: the whole suite has to fit in a few minutes on two cores.
fn configure(group: &mut BenchmarkGroup<WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
}

/// A bench's id, and the same as text for the lines it prints.
struct Id {
    id: BenchmarkId,
    name: String,
}

/// `conv1_forward/b64`: the op and the batch.
fn id(op: impl Into<String>, batch: usize) -> Id {
    let op = op.into();
    Id {
        name: format!("{op}/b{batch}"),
        id: BenchmarkId::new(op, format!("b{batch}")),
    }
}

/// The benches of one kernel family on one device, grouped as `device/family`.
struct Family<'a> {
    group: BenchmarkGroup<'a, WallTime>,
    device: &'a Device,
}

impl<'a> Family<'a> {
    fn new(c: &'a mut Criterion, device: &'a Device, family: &str) -> Self {
        let mut group = c.benchmark_group(format!("{}/{family}", device.name()));
        configure(&mut group);
        Family { group, device }
    }

    /// Benches `op`, counting `throughput` per call. A sample issues its calls back to back and
    /// stops the clock when the device has finished them all: on the GPU that times the kernels,
    /// not a launch-and-wait round trip per call. A GEMM-bound op (counted in flops) also prints
    /// its median time per call over the samples (warm-up included) and the TFLOP/s it achieves.
    fn bench(&mut self, id: Id, throughput: &Throughput, mut op: impl FnMut() -> Result<()>) {
        let device = self.device;
        let name = format!("{}/{}", device.name(), id.name);
        let mut per_call = Vec::new();
        self.group.throughput(throughput.clone());
        self.group.bench_function(id.id, |bench| {
            bench.iter_custom(|calls| {
                let start = Instant::now();
                for _ in 0..calls {
                    op().unwrap_or_else(|e| panic!("{e}"));
                }
                device.synchronize().unwrap_or_else(|e| panic!("{e}"));
                let elapsed = start.elapsed();
                per_call.push(elapsed / calls.max(1) as u32);
                elapsed
            })
        });
        // (A bench the command line filters out never runs.)
        per_call.sort();
        if let (Flops(flops), Some(&median)) = (throughput, per_call.get(per_call.len() / 2)) {
            let tflops = *flops as f64 / median.as_secs_f64() / 1e12;
            println!("kernel time {name}: {median:.2?} per call, {tflops:.3} TFLOP/s");
        }
    }

    fn finish(self) {
        self.group.finish();
    }
}

/// The precisions `device` multiplies in, with the suffix its bench ids take.
fn precisions(device: &Device) -> Vec<(Precision, &'static str)> {
    match device {
        Device::Cpu => vec![(Precision::Fp32, "")],
        _ => [(Precision::Fp32, "_fp32"), (Precision::Tf32, "_tf32")]
            .into_iter()
            .filter(|(precision, _)| device.check_precision(*precision).is_ok())
            .collect(),
    }
}

fn conv_benches(c: &mut Criterion, device: &Device) {
    let mut family = Family::new(c, device, "conv2d");
    for batch in BATCHES {
        for (precision, suffix) in precisions(device) {
            for (name, s) in [("conv1", conv1(batch)), ("conv2", conv2(batch))] {
                let x = upload(device, &filled(s.input_len(), 1.0));
                let w = upload(device, &filled(s.weight_len(), 0.1));
                let b = upload(device, &filled(s.out_channels, 0.1));
                let dy = upload(device, &filled(s.output_len(), 0.01));
                let mut y = zeros(device, s.output_len());
                let mut dx = zeros(device, s.input_len());
                let (mut dw, mut db) =
                    (zeros(device, s.weight_len()), zeros(device, s.out_channels));
                let flops = Flops(s.forward_flops());
                let p = precision;
                family.bench(id(format!("{name}_forward{suffix}"), batch), &flops, || {
                    device.conv2d_forward(&s, p, &x, &w, &b, &mut y)
                });
                family.bench(
                    id(format!("{name}_backward_input{suffix}"), batch),
                    &flops,
                    || device.conv2d_backward_input(&s, p, &w, &dy, &mut dx),
                );
                family.bench(
                    id(format!("{name}_backward_weight{suffix}"), batch),
                    &flops,
                    || device.conv2d_backward_weight(&s, p, &x, &dy, &mut dw, &mut db),
                );
            }
        }
    }
    family.finish();
}

/// Each convolution with the pool after it, one op each way, as the network runs them: conv1's
/// backward without the gradient to its input (the data), conv2's with it.
fn conv_pool_benches(c: &mut Criterion, device: &Device) {
    let mut family = Family::new(c, device, "conv2d_pool");
    for batch in BATCHES {
        for (precision, suffix) in precisions(device) {
            for (name, s, input_grad) in [
                ("conv1", conv1(batch), false),
                ("conv2", conv2(batch), true),
            ] {
                let p = s.pool2x2();
                let x = upload(device, &filled(s.input_len(), 1.0));
                let w = upload(device, &filled(s.weight_len(), 0.1));
                let b = upload(device, &filled(s.out_channels, 0.1));
                let dy = upload(device, &filled(p.output_len(), 0.01));
                let mut scratch = zeros(device, s.output_len());
                let (mut y, mut argmax) =
                    (zeros(device, p.output_len()), zeros(device, p.output_len()));
                let mut dx = zeros(device, s.input_len());
                let (mut dw, mut db) =
                    (zeros(device, s.weight_len()), zeros(device, s.out_channels));
                let flops = s.forward_flops();
                let pr = precision;
                let forward = |scratch: &mut _, y: &mut _, argmax: &mut _| {
                    device.conv2d_maxpool2d_relu_forward(&s, pr, &x, &w, &b, scratch, y, argmax)
                };
                // The backward pass reads the argmax the forward one writes: run it once, so that
                // the backward bench also runs alone (`cargo bench ... conv2_backward`).
                forward(&mut scratch, &mut y, &mut argmax).unwrap_or_else(|e| panic!("{e}"));
                family.bench(
                    id(format!("{name}_forward{suffix}"), batch),
                    &Flops(flops),
                    || forward(&mut scratch, &mut y, &mut argmax),
                );
                let passes = if input_grad { 2 } else { 1 };
                let backward = Flops(passes * flops);
                family.bench(
                    id(format!("{name}_backward{suffix}"), batch),
                    &backward,
                    || {
                        let dx = input_grad.then_some(&mut dx);
                        device.maxpool2d_relu_conv2d_backward(
                            &s,
                            pr,
                            &x,
                            &w,
                            &argmax,
                            &y,
                            &dy,
                            &mut scratch,
                            dx,
                            &mut dw,
                            &mut db,
                        )
                    },
                );
            }
        }
    }
    family.finish();
}

/// Max-pool with the ReLU after it, fused, as the network runs them.
fn maxpool_relu_benches(c: &mut Criterion, device: &Device) {
    let mut family = Family::new(c, device, "maxpool2d_relu");
    for batch in BATCHES {
        for (name, s) in [("pool1", pool1(batch)), ("pool2", pool2(batch))] {
            let x = upload(device, &filled(s.input_len(), 1.0));
            let dy = upload(device, &filled(s.output_len(), 1.0));
            let (mut y, mut argmax) =
                (zeros(device, s.output_len()), zeros(device, s.output_len()));
            let mut dx = zeros(device, s.input_len());
            // Forward reads x and writes y and argmax; backward reads argmax, y and dy and writes
            // dx.
            let forward = Bytes(4 * (s.input_len() + 2 * s.output_len()) as u64);
            let backward = Bytes(4 * (s.input_len() + 3 * s.output_len()) as u64);
            family.bench(id(format!("{name}_forward"), batch), &forward, || {
                device.maxpool2d_relu_forward(&s, &x, &mut y, &mut argmax)
            });
            family.bench(id(format!("{name}_backward"), batch), &backward, || {
                device.maxpool2d_relu_backward(&s, &argmax, &y, &dy, &mut dx)
            });
        }
    }
    family.finish();
}

/// The network's largest unfused ReLU pass: the backward of fc1's.
fn relu_benches(c: &mut Criterion, device: &Device) {
    let mut family = Family::new(c, device, "relu");
    for batch in BATCHES {
        let len = batch * fc1(batch).out_features;
        let y = upload(device, &filled(len, 1.0));
        let dy = upload(device, &filled(len, 1.0));
        let mut dx = zeros(device, len);
        family.bench(id("fc1_backward", batch), &Bytes(12 * len as u64), || {
            device.relu_backward(&y, &dy, &mut dx)
        });
    }
    family.finish();
}

fn linear_benches(c: &mut Criterion, device: &Device) {
    let mut family = Family::new(c, device, "linear");
    for batch in BATCHES {
        for (precision, suffix) in precisions(device) {
            for (name, s) in [
                ("fc1", fc1(batch)),
                ("fc2", fc2(batch)),
                ("fc3", fc3(batch)),
            ] {
                let x = upload(device, &filled(s.batch * s.in_features, 1.0));
                let w = upload(device, &filled(s.out_features * s.in_features, 0.02));
                let b = upload(device, &filled(s.out_features, 0.02));
                let dy = upload(device, &filled(s.batch * s.out_features, 0.01));
                let mut y = zeros(device, s.batch * s.out_features);
                let mut dx = zeros(device, s.batch * s.in_features);
                let (mut dw, mut db) = (zeros(device, w.len()), zeros(device, b.len()));
                let flops = Flops(s.forward_flops());
                let (p, none) = (precision, Activation::None);
                family.bench(id(format!("{name}_forward{suffix}"), batch), &flops, || {
                    device.linear_forward(&s, p, none, &x, &w, &b, &mut y)
                });
                family.bench(
                    id(format!("{name}_backward_input{suffix}"), batch),
                    &flops,
                    || device.linear_backward_input(&s, p, &w, &dy, &mut dx),
                );
                family.bench(
                    id(format!("{name}_backward_weight{suffix}"), batch),
                    &flops,
                    || device.linear_backward_weight(&s, p, &x, &dy, &mut dw, &mut db),
                );
                if !device.fuses_weight_updates() {
                    continue;
                }
                // The weight gradient with Adam's step on the weight in it: against the two
                // benches above it, `adam/fc1_weight` is what it saves.
                let mut weight = upload(device, &filled(w.len(), 0.02));
                let (mut m, mut v) = (zeros(device, w.len()), zeros(device, w.len()));
                let step = AdamStep {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    step: 1,
                };
                let (scalars, hyper) = (upload(device, &step.scalars()), step.hyper());
                family.bench(
                    id(format!("{name}_backward_weight_adam{suffix}"), batch),
                    &flops,
                    || {
                        let moments = (&mut weight, &mut m, &mut v);
                        let adam = (&hyper, &scalars);
                        device.linear_backward_weight_adam(&s, p, &x, &dy, adam, moments, &mut db)
                    },
                );
            }
        }
    }
    family.finish();
}

fn softmax_xent_benches(c: &mut Criterion, device: &Device) {
    let mut family = Family::new(c, device, "softmax_xent");
    for batch in BATCHES {
        let s = XentShape { batch, classes: 10 };
        let logits = upload(device, &filled(batch * s.classes, 5.0));
        let labels: Vec<u32> = (0..batch as u32).map(|n| n % 10).collect();
        let labels = upload(device, &labels);
        let mut totals = zeros(device, 2);
        let mut dlogits = zeros(device, logits.len());
        // Reads logits and labels, writes a gradient the size of logits.
        let bytes = Bytes(4 * (2 * logits.len() + batch) as u64);
        family.bench(id("fused", batch), &bytes, || {
            device.softmax_xent_fused(&s, &logits, &labels, &mut totals, &mut dlogits)
        });
    }
    family.finish();
}

/// fc1's weight, the largest tensor, as a one-tensor table. The update's cost does not depend on
/// the batch, nor on the step's values.
fn adam_benches(c: &mut Criterion, device: &Device) {
    let mut family = Family::new(c, device, "adam");
    let len = 1024 * 3136;
    let grads = upload(device, &filled(len, 0.01));
    let mut params = upload(device, &filled(len, 0.02));
    let table = device
        .tensor_table(&[&params], &[&grads])
        .expect("a table of fc1's weight");
    let (mut m, mut v) = (zeros(device, len), zeros(device, len));
    let step = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 1,
    };
    let scalars = upload(device, &step.scalars());
    let hyper = step.hyper();
    // Reads params, grads, m and v; writes params, m and v.
    let bytes = Bytes(28 * len as u64);
    let fc1_weight = Id {
        id: BenchmarkId::from_parameter("fc1_weight"),
        name: "fc1_weight".to_string(),
    };
    family.bench(fc1_weight, &bytes, || {
        let params = &mut [&mut params];
        device.adam_update_tensors(&hyper, &scalars, &table, params, &[&grads], &mut m, &mut v)
    });
    family.finish();
}

/// A batch of training images gathered and normalised from the whole set, as the trainer does.
fn gather_benches(c: &mut Criterion, device: &Device) {
    let mut family = Family::new(c, device, "data");
    let images: Vec<u8> = filled(TRAIN_IMAGES * IMAGE_LEN, 1.0)
        .iter()
        .map(|v| (v.abs() * 255.0) as u8)
        .collect();
    let images = upload(device, &images);
    for batch in BATCHES {
        let indices: Vec<u32> = (0..batch)
            .map(|n| (n * 937 % TRAIN_IMAGES) as u32)
            .collect();
        let indices = upload(device, &indices);
        let mut out = zeros(device, batch * IMAGE_LEN);
        // A byte read and a float written per pixel.
        let bytes = Bytes(5 * out.len() as u64);
        family.bench(id("gather_images", batch), &bytes, || {
            device.gather_images(&images, IMAGE_LEN, &indices, &mut out)
        });
    }
    family.finish();
}

fn every_op_on_every_device(c: &mut Criterion) {
    for device in devices() {
        conv_benches(c, &device);
        conv_pool_benches(c, &device);
        maxpool_relu_benches(c, &device);
        relu_benches(c, &device);
        linear_benches(c, &device);
        softmax_xent_benches(c, &device);
        adam_benches(c, &device);
        gather_benches(c, &device);
        gemm_lab_benches(c, &device);
    }
}

/// (m, n, k) of the lab's products: square ones, and fc1's forward pass at batch 1024.
const LAB_SIZES: [(usize, usize, usize); 3] =
    [(1024, 1024, 1024), (4096, 4096, 4096), (1024, 1024, 3136)];

/// Each step of kernels/gemm_lab.cu on the same products, as `cuda/gemm_lab/<step>/<m>x<n>x<k>`.
/// The cuda device only: the cpu device runs no kernels, and the emulator's times say nothing of
/// a GPU's.
fn gemm_lab_benches(c: &mut Criterion, device: &Device) {
    if !matches!(device, Device::Cuda(_)) {
        return;
    }
    let mut family = Family::new(c, device, "gemm_lab");
    for (m, n, k) in LAB_SIZES {
        let a = upload(device, &filled(m * k, 1.0));
        let b = upload(device, &filled(n * k, 1.0));
        let mut out = zeros::<f32>(device, m * n);
        for step in GemmStep::ALL {
            let launch = step
                .launch(a.arg(), b.arg(), out.arg_mut(), m, n, k)
                .unwrap_or_else(|e| panic!("{e}"));
            let size = format!("{m}x{n}x{k}");
            let id = Id {
                name: format!("{}/{size}", step.name()),
                id: BenchmarkId::new(step.name(), size),
            };
            let flops = Flops(2 * (m * n * k) as u64);
            // SAFETY: a, b and out hold m·k, n·k and m·n floats on this device, all the kernel
            // reads and writes.
            family.bench(id, &flops, || unsafe { device.launch(&launch) });
        }
    }
    family.finish();
}

/// fc1's forward product (64 x 1024 x 3136) on each GEMM micro-kernel this CPU runs, the
/// fallbacks forced, as `cpu/gemm_kernel/<kernel>`.
fn gemm_kernel_benches(c: &mut Criterion) {
    use kernels::cpu::gemm::{gemm_with, Epilogue, Kernel, Layout, Matrix, A};
    let s = fc1(64);
    let x = filled(s.batch * s.in_features, 1.0);
    let w = filled(s.out_features * s.in_features, 0.02);
    let mut y = vec![0.0; s.batch * s.out_features];
    let x = Matrix::new(&x, Layout::row_major(s.batch, s.in_features));
    let w_t = Matrix::new(&w, Layout::row_major(s.out_features, s.in_features).t());
    let y_layout = Layout::row_major(s.batch, s.out_features);
    let mut group = c.benchmark_group("cpu/gemm_kernel");
    configure(&mut group);
    group.throughput(Flops(s.forward_flops()));
    for kernel in Kernel::available() {
        group.bench_function(format!("{kernel:?}"), |bench| {
            bench.iter(|| {
                gemm_with(
                    kernel,
                    &mut y,
                    y_layout,
                    A::Matrix(x),
                    &w_t,
                    Epilogue::default(),
                )
            })
        });
    }
    group.finish();
}

/// The fast conv against the reference loops on a small conv2-shaped batch. Criterion times each
/// alone; the speed-up printed first is timed alternately (20 fast calls, then one reference
/// call, seven times), so the machine's noise falls on both.
fn versus_reference(c: &mut Criterion) {
    let s = conv2(2);
    let x = filled(s.input_len(), 1.0);
    let w = filled(s.weight_len(), 0.1);
    let b = filled(s.out_channels, 0.1);
    let mut y = vec![0.0; s.output_len()];
    let mut group = c.benchmark_group("cpu/versus_reference");
    configure(&mut group);
    group.throughput(Flops(s.forward_flops()));
    let speedup = Once::new();
    group.bench_function("conv2_b2_forward_fast", |bench| {
        speedup.call_once(|| {
            let mut ratios: Vec<f64> = (0..7)
                .map(|_| {
                    let fast = time(|| {
                        for _ in 0..20 {
                            cpu::conv2d_forward(&s, &x, &w, &b, &mut y);
                        }
                    }) / 20.0;
                    let slow = time(|| reference::conv2d_forward(&s, &x, &w, &b, &mut y));
                    slow / fast
                })
                .collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "conv2_b2_forward: fast is {:.0}x the reference loops (median of 7)",
                ratios[3]
            );
        });
        bench.iter(|| cpu::conv2d_forward(&s, &x, &w, &b, &mut y))
    });
    group.bench_function("conv2_b2_forward_reference", |bench| {
        bench.iter(|| reference::conv2d_forward(&s, &x, &w, &b, &mut y))
    });
    group.finish();
}

fn time(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

criterion_group!(
    benches,
    every_op_on_every_device,
    gemm_kernel_benches,
    versus_reference
);
criterion_main!(benches);
