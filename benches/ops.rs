//! The fast CPU ops at the reference network's shapes, and one whole training step built from
//! them. Op throughput is in elements/s where an element is a flop (GEMM-bound ops) or a byte
//! moved (memory-bound ops).
//!
//! `cargo bench -p kernels --bench ops -- step` runs the training step alone.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use kernels::{cpu, reference, AdamStep, Conv2dShape, LinearShape, Pool2dShape, XentShape};
use std::hint::black_box;
use std::sync::Once;
use std::time::{Duration, Instant};

const BATCH: usize = 64;

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

fn configure(group: &mut BenchmarkGroup<WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

fn conv_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d");
    configure(&mut group);
    for (name, s) in [
        ("conv1", conv1(BATCH)),
        ("conv2", conv2(BATCH)),
        ("conv1_b1024", conv1(1024)),
        ("conv2_b1024", conv2(1024)),
    ] {
        let x = filled(s.input_len(), 1.0);
        let w = filled(s.weight_len(), 0.1);
        let b = filled(s.out_channels, 0.1);
        let mut y = vec![0.0; s.output_len()];
        group.throughput(Throughput::Elements(s.forward_flops()));
        group.bench_function(format!("{name}_forward"), |bench| {
            bench.iter(|| cpu::conv2d_forward(&s, &x, &w, &b, &mut y))
        });
        if s.batch != BATCH {
            continue;
        }
        let dy = filled(s.output_len(), 0.01);
        let (mut dx, mut dw, mut db) = (
            vec![0.0; s.input_len()],
            vec![0.0; s.weight_len()],
            vec![0.0; s.out_channels],
        );
        group.bench_function(format!("{name}_backward_input"), |bench| {
            bench.iter(|| cpu::conv2d_backward_input(&s, &w, &dy, &mut dx))
        });
        group.bench_function(format!("{name}_backward_weight"), |bench| {
            bench.iter(|| cpu::conv2d_backward_weight(&s, &x, &dy, &mut dw, &mut db))
        });
    }
    group.finish();
}

fn linear_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    configure(&mut group);
    for (name, s) in [
        ("fc1", fc1(BATCH)),
        ("fc2", fc2(BATCH)),
        ("fc3", fc3(BATCH)),
        ("fc1_b1024", fc1(1024)),
    ] {
        let x = filled(s.batch * s.in_features, 1.0);
        let w = filled(s.out_features * s.in_features, 0.02);
        let b = filled(s.out_features, 0.02);
        let mut y = vec![0.0; s.batch * s.out_features];
        group.throughput(Throughput::Elements(s.forward_flops()));
        group.bench_function(format!("{name}_forward"), |bench| {
            bench.iter(|| cpu::linear_forward(&s, &x, &w, &b, &mut y))
        });
        if s.batch != BATCH {
            continue;
        }
        let dy = filled(s.batch * s.out_features, 0.01);
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; b.len()]);
        group.bench_function(format!("{name}_backward_input"), |bench| {
            bench.iter(|| cpu::linear_backward_input(&s, &w, &dy, &mut dx))
        });
        group.bench_function(format!("{name}_backward_weight"), |bench| {
            bench.iter(|| cpu::linear_backward_weight(&s, &x, &dy, &mut dw, &mut db))
        });
    }
    group.finish();
}

fn memory_bound_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    configure(&mut group);
    for (name, s) in [("pool1", pool1(BATCH)), ("pool2", pool2(BATCH))] {
        let x = filled(s.input_len(), 1.0);
        let (mut y, mut argmax) = (vec![0.0; s.output_len()], vec![0; s.output_len()]);
        // Reads x, writes y and argmax.
        group.throughput(Throughput::Bytes(
            4 * (s.input_len() + 2 * s.output_len()) as u64,
        ));
        group.bench_function(format!("{name}_forward"), |bench| {
            bench.iter(|| cpu::maxpool2d_forward(&s, &x, &mut y, &mut argmax))
        });
        let dy = filled(s.output_len(), 1.0);
        let mut dx = vec![0.0; s.input_len()];
        group.bench_function(format!("{name}_backward"), |bench| {
            bench.iter(|| cpu::maxpool2d_backward(&s, &argmax, &dy, &mut dx))
        });
    }

    let len = BATCH * 1024;
    let x = filled(len, 1.0);
    let (mut y, mut dx) = (vec![0.0; len], vec![0.0; len]);
    group.throughput(Throughput::Bytes(8 * len as u64));
    group.bench_function("relu_forward_fc1", |bench| {
        bench.iter(|| cpu::relu_forward(&x, &mut y))
    });
    group.throughput(Throughput::Bytes(12 * len as u64));
    group.bench_function("relu_backward_fc1", |bench| {
        bench.iter(|| cpu::relu_backward(&y, &x, &mut dx))
    });

    let s = XentShape {
        batch: BATCH,
        classes: 10,
    };
    let logits = filled(BATCH * 10, 5.0);
    let labels: Vec<u32> = (0..BATCH as u32).map(|n| n % 10).collect();
    let mut dlogits = vec![0.0; logits.len()];
    group.throughput(Throughput::Bytes(8 * logits.len() as u64));
    group.bench_function("softmax_xent_forward_backward", |bench| {
        bench.iter(|| {
            let mut totals = [0.0; 2];
            cpu::softmax_xent_forward(&s, &logits, &labels, &mut totals);
            cpu::softmax_xent_backward(&s, &logits, &labels, &mut dlogits);
            black_box(totals)
        })
    });

    // fc1's weight, the largest tensor: reads p, g, m, v and writes p, m, v.
    let len = 1024 * 3136;
    let grads = filled(len, 0.01);
    let (mut params, mut m, mut v) = (filled(len, 0.02), vec![0.0; len], vec![0.0; len]);
    let mut t = 0;
    group.throughput(Throughput::Bytes(28 * len as u64));
    group.bench_function("adam_fc1_weight", |bench| {
        bench.iter(|| {
            t += 1;
            let step = AdamStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                step: t,
            };
            cpu::adam_update(&step, &mut params, &grads, &mut m, &mut v)
        })
    });

    let images: Vec<u8> = filled(60_000 * 784, 1.0)
        .iter()
        .map(|v| (v.abs() * 255.0) as u8)
        .collect();
    let indices: Vec<u32> = (0..BATCH as u32).map(|n| n * 937).collect();
    let mut out = vec![0.0; BATCH * 784];
    group.throughput(Throughput::Bytes(5 * out.len() as u64));
    group.bench_function("gather_images", |bench| {
        bench.iter(|| cpu::gather_images(&images, 784, &indices, &mut out))
    });
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
    let mut group = c.benchmark_group("versus_reference");
    configure(&mut group);
    group.throughput(Throughput::Elements(s.forward_flops()));
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

/// One parameter tensor with its gradient and Adam moments.
struct Param {
    value: Vec<f32>,
    grad: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Param {
    fn new(len: usize, fan_in: usize) -> Self {
        let bound = 1.0 / (fan_in as f32).sqrt();
        Param {
            value: filled(len, bound),
            grad: vec![0.0; len],
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }
}

/// One activation and the loss's gradient with respect to it.
struct Activation {
    value: Vec<f32>,
    grad: Vec<f32>,
}

impl Activation {
    fn new(len: usize) -> Self {
        Activation {
            value: vec![0.0; len],
            grad: vec![0.0; len],
        }
    }
}

/// The reference network at batch 64 as flat buffers, so the step allocates nothing.
struct Net {
    conv1: [Param; 2],
    conv2: [Param; 2],
    fc1: [Param; 2],
    fc2: [Param; 2],
    fc3: [Param; 2],
    x: Vec<f32>,
    labels: Vec<u32>,
    conv1_out: Activation,
    pool1_out: Activation,
    pool1_argmax: Vec<u32>,
    relu1_out: Activation,
    conv2_out: Activation,
    pool2_out: Activation,
    pool2_argmax: Vec<u32>,
    relu2_out: Activation,
    fc1_out: Activation,
    relu3_out: Activation,
    fc2_out: Activation,
    relu4_out: Activation,
    logits: Activation,
    step: u32,
}

impl Net {
    fn new() -> Self {
        let (c1, c2, p1, p2) = (conv1(BATCH), conv2(BATCH), pool1(BATCH), pool2(BATCH));
        let param =
            |out: usize, fan_in: usize| [Param::new(out * fan_in, fan_in), Param::new(out, fan_in)];
        Net {
            conv1: param(32, 9),
            conv2: param(64, 288),
            fc1: param(1024, 3136),
            fc2: param(512, 1024),
            fc3: param(10, 512),
            x: filled(c1.input_len(), 1.0),
            labels: (0..BATCH as u32).map(|n| n % 10).collect(),
            conv1_out: Activation::new(c1.output_len()),
            pool1_out: Activation::new(p1.output_len()),
            pool1_argmax: vec![0; p1.output_len()],
            relu1_out: Activation::new(p1.output_len()),
            conv2_out: Activation::new(c2.output_len()),
            pool2_out: Activation::new(p2.output_len()),
            pool2_argmax: vec![0; p2.output_len()],
            relu2_out: Activation::new(p2.output_len()),
            fc1_out: Activation::new(BATCH * 1024),
            relu3_out: Activation::new(BATCH * 1024),
            fc2_out: Activation::new(BATCH * 512),
            relu4_out: Activation::new(BATCH * 512),
            logits: Activation::new(BATCH * 10),
            step: 0,
        }
    }

    /// Forward, backward (no gradient for the input images) and Adam: one training step.
    fn train_step(&mut self) -> f32 {
        let (c1, c2, p1, p2) = (conv1(BATCH), conv2(BATCH), pool1(BATCH), pool2(BATCH));
        let (f1, f2, f3) = (fc1(BATCH), fc2(BATCH), fc3(BATCH));
        let xent = XentShape {
            batch: BATCH,
            classes: 10,
        };
        let [w1, b1] = &mut self.conv1;
        let [w2, b2] = &mut self.conv2;
        let [w3, b3] = &mut self.fc1;
        let [w4, b4] = &mut self.fc2;
        let [w5, b5] = &mut self.fc3;

        cpu::conv2d_forward(
            &c1,
            &self.x,
            &w1.value,
            &b1.value,
            &mut self.conv1_out.value,
        );
        cpu::maxpool2d_forward(
            &p1,
            &self.conv1_out.value,
            &mut self.pool1_out.value,
            &mut self.pool1_argmax,
        );
        cpu::relu_forward(&self.pool1_out.value, &mut self.relu1_out.value);
        cpu::conv2d_forward(
            &c2,
            &self.relu1_out.value,
            &w2.value,
            &b2.value,
            &mut self.conv2_out.value,
        );
        cpu::maxpool2d_forward(
            &p2,
            &self.conv2_out.value,
            &mut self.pool2_out.value,
            &mut self.pool2_argmax,
        );
        cpu::relu_forward(&self.pool2_out.value, &mut self.relu2_out.value);
        cpu::linear_forward(
            &f1,
            &self.relu2_out.value,
            &w3.value,
            &b3.value,
            &mut self.fc1_out.value,
        );
        cpu::relu_forward(&self.fc1_out.value, &mut self.relu3_out.value);
        cpu::linear_forward(
            &f2,
            &self.relu3_out.value,
            &w4.value,
            &b4.value,
            &mut self.fc2_out.value,
        );
        cpu::relu_forward(&self.fc2_out.value, &mut self.relu4_out.value);
        cpu::linear_forward(
            &f3,
            &self.relu4_out.value,
            &w5.value,
            &b5.value,
            &mut self.logits.value,
        );
        let mut totals = [0.0; 2];
        cpu::softmax_xent_forward(&xent, &self.logits.value, &self.labels, &mut totals);

        cpu::softmax_xent_backward(
            &xent,
            &self.logits.value,
            &self.labels,
            &mut self.logits.grad,
        );
        cpu::linear_backward_weight(
            &f3,
            &self.relu4_out.value,
            &self.logits.grad,
            &mut w5.grad,
            &mut b5.grad,
        );
        cpu::linear_backward_input(&f3, &w5.value, &self.logits.grad, &mut self.relu4_out.grad);
        cpu::relu_backward(
            &self.relu4_out.value,
            &self.relu4_out.grad,
            &mut self.fc2_out.grad,
        );
        cpu::linear_backward_weight(
            &f2,
            &self.relu3_out.value,
            &self.fc2_out.grad,
            &mut w4.grad,
            &mut b4.grad,
        );
        cpu::linear_backward_input(&f2, &w4.value, &self.fc2_out.grad, &mut self.relu3_out.grad);
        cpu::relu_backward(
            &self.relu3_out.value,
            &self.relu3_out.grad,
            &mut self.fc1_out.grad,
        );
        cpu::linear_backward_weight(
            &f1,
            &self.relu2_out.value,
            &self.fc1_out.grad,
            &mut w3.grad,
            &mut b3.grad,
        );
        cpu::linear_backward_input(&f1, &w3.value, &self.fc1_out.grad, &mut self.relu2_out.grad);
        cpu::relu_backward(
            &self.relu2_out.value,
            &self.relu2_out.grad,
            &mut self.pool2_out.grad,
        );
        cpu::maxpool2d_backward(
            &p2,
            &self.pool2_argmax,
            &self.pool2_out.grad,
            &mut self.conv2_out.grad,
        );
        cpu::conv2d_backward_weight(
            &c2,
            &self.relu1_out.value,
            &self.conv2_out.grad,
            &mut w2.grad,
            &mut b2.grad,
        );
        cpu::conv2d_backward_input(
            &c2,
            &w2.value,
            &self.conv2_out.grad,
            &mut self.relu1_out.grad,
        );
        cpu::relu_backward(
            &self.relu1_out.value,
            &self.relu1_out.grad,
            &mut self.pool1_out.grad,
        );
        cpu::maxpool2d_backward(
            &p1,
            &self.pool1_argmax,
            &self.pool1_out.grad,
            &mut self.conv1_out.grad,
        );
        cpu::conv2d_backward_weight(
            &c1,
            &self.x,
            &self.conv1_out.grad,
            &mut w1.grad,
            &mut b1.grad,
        );

        self.step += 1;
        let adam = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: self.step,
        };
        for p in [w1, b1, w2, b2, w3, b3, w4, b4, w5, b5] {
            cpu::adam_update(&adam, &mut p.value, &p.grad, &mut p.m, &mut p.v);
        }
        totals[0]
    }
}

fn step_bench(c: &mut Criterion) {
    let mut net = Net::new();
    let s = [conv1(BATCH), conv2(BATCH)];
    let linear_flops: u64 = [fc1(BATCH), fc2(BATCH), fc3(BATCH)]
        .iter()
        .map(|s| 3 * s.forward_flops())
        .sum();
    // conv1 needs no input gradient.
    let flops = 2 * s[0].forward_flops() + 3 * s[1].forward_flops() + linear_flops;
    let mut group = c.benchmark_group("step");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(flops));
    group.bench_function("train_step_b64", |bench| {
        bench.iter(|| black_box(net.train_step()))
    });
    group.finish();
}

criterion_group!(
    benches,
    conv_benches,
    linear_benches,
    memory_bound_benches,
    versus_reference,
    step_bench
);
criterion_main!(benches);
