//! Max-pool with ReLU, forward and backward, against the unfused reference (pool, then ReLU), and
//! ReLU's backward: exactly, since they compute no sum. Inputs come from a handful of levels, so
//! windows have ties (the first maximum must win) and ReLU sees exact zeros.

use kernels::reference as r;
use kernels::Pool2dShape;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::{assert_exact, coarse, devices, download, nan_buffer, pool, random, upload};

const SHAPES: [Pool2dShape; 11] = [
    // The network's two pools, at a small batch and whole.
    pool(2, 32, 28, 28),
    pool(64, 32, 28, 28),
    pool(3, 64, 14, 14),
    // Odd sides: the last row or column belongs to no window.
    pool(2, 3, 6, 8),
    pool(3, 5, 7, 9),
    pool(1, 1, 5, 7),
    pool(7, 5, 9, 4),
    // Rows of more than 16 windows, even and odd.
    pool(2, 3, 4, 70),
    pool(1, 2, 5, 67),
    // One row: no window, every dx is 0.
    pool(2, 3, 1, 3),
    pool(2, 4, 1, 5),
];

#[test]
fn maxpool2d_relu_matches_maxpool_then_relu() {
    let mut rng = StdRng::seed_from_u64(1);
    for s in &SHAPES {
        let x = coarse(&mut rng, s.input_len());
        let dy = random(&mut rng, s.output_len());
        // The unfused reference: pool, ReLU; backward through ReLU, then the pool.
        let (mut pooled, mut want_argmax) = (vec![0.0; s.output_len()], vec![0; s.output_len()]);
        r::maxpool2d_forward(s, &x, &mut pooled, &mut want_argmax);
        let mut want_y = vec![0.0; s.output_len()];
        r::relu_forward(&pooled, &mut want_y);
        let mut masked = vec![0.0; s.output_len()];
        r::relu_backward(&want_y, &dy, &mut masked);
        let mut want_dx = vec![0.0; s.input_len()];
        r::maxpool2d_backward(s, &want_argmax, &masked, &mut want_dx);

        for dev in devices() {
            let what = format!("{} {s:?}", dev.name());
            let x = upload(dev, &x);
            let mut y = nan_buffer(dev, s.output_len());
            let mut argmax = upload(dev, &vec![u32::MAX; s.output_len()]);
            dev.maxpool2d_relu_forward(s, &x, &mut y, &mut argmax)
                .unwrap();
            assert_exact(&format!("{what}: y"), &download(dev, &y), &want_y);
            assert_exact(
                &format!("{what}: argmax"),
                &download(dev, &argmax),
                &want_argmax,
            );
            let mut dx = nan_buffer(dev, s.input_len());
            dev.maxpool2d_relu_backward(s, &argmax, &y, &upload(dev, &dy), &mut dx)
                .unwrap();
            assert_exact(&format!("{what}: dx"), &download(dev, &dx), &want_dx);
        }
    }
}

#[test]
fn relu_backward_matches_reference() {
    let mut rng = StdRng::seed_from_u64(14);
    // Around the 256-thread block, and long enough for the cpu device to split across threads.
    for len in [0, 1, 17, 255, 256, 1000, 100_003] {
        let mut y = vec![0.0; len];
        r::relu_forward(&coarse(&mut rng, len), &mut y);
        let dy = random(&mut rng, len);
        let mut want = vec![0.0; len];
        r::relu_backward(&y, &dy, &mut want);
        for dev in devices() {
            let mut dx = nan_buffer(dev, len);
            dev.relu_backward(&upload(dev, &y), &upload(dev, &dy), &mut dx)
                .unwrap();
            let what = format!("{} relu_backward, {len} elements", dev.name());
            assert_exact(&what, &download(dev, &dx), &want);
        }
    }
}
