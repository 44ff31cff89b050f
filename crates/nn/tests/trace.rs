//! The traced forward: the same logits, bit for bit, as the plain forward the trainer runs, and
//! each layer's copy what that layer computes from the one before (recomputed here on the host).

mod common;

use common::{kernel_device, SMALL};
use kernels::Device;
use nn::{normalized_images, Activations, Adam, ConvNet, Dataset, HostTensor, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const IMAGES: usize = 3;

fn pixels() -> Vec<u8> {
    let rng = &mut StdRng::seed_from_u64(21);
    let len = IMAGES * SMALL.image_size * SMALL.image_size;
    (0..len).map(|_| rng.random_range(0..=255)).collect()
}

fn traced(device: &Device, pixels: &[u8]) -> (Activations, HostTensor) {
    let mut net = ConvNet::new(device, SMALL, 4).unwrap();
    let x = normalized_images(device, pixels, SMALL.image_size).unwrap();
    (
        net.forward_traced(&x).unwrap(),
        net.conv1_filters().unwrap(),
    )
}

/// The logits of the trainer's evaluation pass, which `predict` runs.
fn plain_logits(device: &Device, pixels: &[u8]) -> Vec<f32> {
    let net = ConvNet::new(device, SMALL, 4).unwrap();
    let data = Dataset::upload(device, pixels, &[0; IMAGES], pixels.len() / IMAGES).unwrap();
    let mut trainer = Trainer::new(net, Adam::new(1e-3), 1, false).unwrap();
    trainer.logits(&data, IMAGES).unwrap()
}

/// y = relu(maxpool2x2(conv3x3_pad1(x) + b)) for one image, `x` `[c_in, side, side]`.
fn conv_pool_relu(x: &[f32], c_in: usize, side: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
    let c_out = b.len();
    let at = |c: usize, y: isize, x_: isize| {
        let inside = (0..side as isize).contains(&y) && (0..side as isize).contains(&x_);
        if inside {
            f64::from(x[(c * side + y as usize) * side + x_ as usize])
        } else {
            0.0
        }
    };
    let conv = |o: usize, y: usize, x_: usize| {
        let mut sum = f64::from(b[o]);
        for c in 0..c_in {
            for (k, &weight) in w[(o * c_in + c) * 9..][..9].iter().enumerate() {
                let (dy, dx) = ((k / 3) as isize - 1, (k % 3) as isize - 1);
                sum += f64::from(weight) * at(c, y as isize + dy, x_ as isize + dx);
            }
        }
        sum
    };
    let half = side / 2;
    let mut out = Vec::with_capacity(c_out * half * half);
    for o in 0..c_out {
        for y in 0..half {
            for x_ in 0..half {
                let window = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .map(|(dy, dx)| conv(o, 2 * y + dy, 2 * x_ + dx));
                out.push(window.into_iter().fold(0.0, f64::max) as f32);
            }
        }
    }
    out
}

/// y = x·Wᵀ + b for one row, rectified where `relu`.
fn linear(x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
    let rows = w.chunks(x.len()).zip(b);
    rows.map(|(row, &bias)| {
        let sum = row.iter().zip(x).fold(f64::from(bias), |s, (&w, &x)| {
            s + f64::from(w) * f64::from(x)
        });
        (if relu { sum.max(0.0) } else { sum }) as f32
    })
    .collect()
}

fn assert_close(name: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{name}: lengths");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-4 * (1.0 + e.abs()),
            "{name}[{i}]: traced {a}, recomputed {e}"
        );
    }
}

#[test]
fn traced_logits_are_the_plain_forwards_bits() {
    let pixels = pixels();
    let (trace, _) = traced(&Device::Cpu, &pixels);
    assert_eq!(trace.logits.shape, [IMAGES, SMALL.classes]);
    assert_eq!(trace.logits.values, plain_logits(&Device::Cpu, &pixels));
}

#[test]
fn each_layer_is_computed_from_the_one_before() {
    let pixels = pixels();
    let (trace, filters) = traced(&Device::Cpu, &pixels);
    let net = ConvNet::new(&Device::Cpu, SMALL, 4).unwrap();
    let params: Vec<Vec<f32>> = net
        .params()
        .iter()
        .map(|p| p.value.to_vec(&Device::Cpu).unwrap())
        .collect();
    assert_eq!(filters.shape, [SMALL.conv1_channels, 1, 3, 3]);
    assert_eq!(filters.values, params[0]);

    let side = SMALL.image_size;
    let (c1, c2) = (SMALL.conv1_channels, SMALL.conv2_channels);
    assert_eq!(trace.input.shape, [IMAGES, 1, side, side]);
    assert_eq!(trace.conv1_pooled.shape, [IMAGES, c1, side / 2, side / 2]);
    assert_eq!(trace.conv2_pooled.shape, [IMAGES, c2, side / 4, side / 4]);
    assert_eq!(trace.fc1.shape, [IMAGES, SMALL.hidden1]);
    assert_eq!(trace.fc2.shape, [IMAGES, SMALL.hidden2]);
    let normalized: Vec<f32> = pixels
        .iter()
        .map(|&p| (f32::from(p) / 255.0 - 0.5) / 0.5)
        .collect();
    assert_eq!(trace.input.values, normalized);

    let image = |t: &HostTensor, n: usize| {
        let len = t.values.len() / IMAGES;
        t.values[n * len..][..len].to_vec()
    };
    for n in 0..IMAGES {
        let conv1 = conv_pool_relu(&image(&trace.input, n), 1, side, &params[0], &params[1]);
        assert_close("conv1_pooled", &image(&trace.conv1_pooled, n), &conv1);
        let from = image(&trace.conv1_pooled, n);
        let conv2 = conv_pool_relu(&from, c1, side / 2, &params[2], &params[3]);
        assert_close("conv2_pooled", &image(&trace.conv2_pooled, n), &conv2);
        let fc1 = linear(&image(&trace.conv2_pooled, n), &params[4], &params[5], true);
        assert_close("fc1", &image(&trace.fc1, n), &fc1);
        let fc2 = linear(&image(&trace.fc1, n), &params[6], &params[7], true);
        assert_close("fc2", &image(&trace.fc2, n), &fc2);
        let logits = linear(&image(&trace.fc2, n), &params[8], &params[9], false);
        assert_close("logits", &image(&trace.logits, n), &logits);
    }
    // ReLU leaves zeros and positives in the hidden layers, or the checks above were vacuous.
    assert!(trace.fc1.values.iter().any(|&v| v > 0.0));
    assert!(trace.fc1.values.contains(&0.0));
}

#[test]
fn traced_forward_on_the_kernels_matches_their_plain_forward_and_the_cpu() {
    let pixels = pixels();
    let device = kernel_device();
    let (trace, _) = traced(&device, &pixels);
    assert_eq!(trace.logits.values, plain_logits(&device, &pixels));
    let (on_cpu, _) = traced(&Device::Cpu, &pixels);
    assert_close(
        "conv2_pooled",
        &trace.conv2_pooled.values,
        &on_cpu.conv2_pooled.values,
    );
    assert_close("logits", &trace.logits.values, &on_cpu.logits.values);
}
