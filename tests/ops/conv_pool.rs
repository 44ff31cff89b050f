//! A convolution and the max-pool + ReLU after it as one op, each way: the same results as the
//! two ops run one after the other on the same device, bit for bit (the cpu device fuses them
//! image by image, the kernels run the two), with and without the input gradient.

use kernels::{Buffer, Conv2dShape, Device, Precision};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::gemm::CONV_SHAPES;
use crate::common::{
    assert_exact, coarse, conv, devices, download, nan_buffer, precisions, random, upload,
};

/// Both ways on `dev`, fused and as two ops, compared exactly.
fn check(dev: &Device, s: &Conv2dShape, precision: Precision, rng: &mut StdRng) {
    let p = s.pool2x2();
    let what = format!("{} {s:?} {precision}", dev.name());
    // Coarse inputs: pooling windows with ties, ReLU with exact zeros.
    let x = upload(dev, &coarse(rng, s.input_len()));
    let w = upload(dev, &coarse(rng, s.weight_len()));
    let b = upload(dev, &coarse(rng, s.out_channels));
    let dy = upload(dev, &random(rng, p.output_len()));

    let mut conv_out = nan_buffer(dev, s.output_len());
    let (mut want_y, mut want_argmax) = (nan_buffer(dev, p.output_len()), argmax_buffer(dev, s));
    dev.conv2d_forward(s, precision, &x, &w, &b, &mut conv_out)
        .unwrap();
    dev.maxpool2d_relu_forward(&p, &conv_out, &mut want_y, &mut want_argmax)
        .unwrap();
    let (mut y, mut argmax) = (nan_buffer(dev, p.output_len()), argmax_buffer(dev, s));
    let mut scratch = nan_buffer(dev, s.output_len());
    dev.conv2d_maxpool2d_relu_forward(s, precision, &x, &w, &b, &mut scratch, &mut y, &mut argmax)
        .unwrap();
    assert_exact(
        &format!("{what}: y"),
        &download(dev, &y),
        &download(dev, &want_y),
    );
    let (got, want) = (download(dev, &argmax), download(dev, &want_argmax));
    assert_exact(&format!("{what}: argmax"), &got, &want);

    let mut dconv = nan_buffer(dev, s.output_len());
    dev.maxpool2d_relu_backward(&p, &argmax, &y, &dy, &mut dconv)
        .unwrap();
    let grads = || {
        (
            nan_buffer(dev, s.weight_len()),
            nan_buffer(dev, s.out_channels),
        )
    };
    let (mut want_dw, mut want_db) = grads();
    dev.conv2d_backward_weight(s, precision, &x, &dconv, &mut want_dw, &mut want_db)
        .unwrap();
    let mut want_dx = nan_buffer(dev, s.input_len());
    dev.conv2d_backward_input(s, precision, &w, &dconv, &mut want_dx)
        .unwrap();
    for with_input_grad in [false, true] {
        let (mut dw, mut db) = grads();
        let mut dx = nan_buffer(dev, s.input_len());
        let mut scratch = nan_buffer(dev, s.output_len());
        dev.maxpool2d_relu_conv2d_backward(
            s,
            precision,
            &x,
            &w,
            &argmax,
            &y,
            &dy,
            &mut scratch,
            with_input_grad.then_some(&mut dx),
            &mut dw,
            &mut db,
        )
        .unwrap();
        let what = format!("{what}, input gradient {with_input_grad}");
        assert_exact(
            &format!("{what}: dw"),
            &download(dev, &dw),
            &download(dev, &want_dw),
        );
        assert_exact(
            &format!("{what}: db"),
            &download(dev, &db),
            &download(dev, &want_db),
        );
        if with_input_grad {
            let (got, want) = (download(dev, &dx), download(dev, &want_dx));
            assert_exact(&format!("{what}: dx"), &got, &want);
        }
    }
}

fn argmax_buffer(dev: &Device, s: &Conv2dShape) -> Buffer<u32> {
    upload(dev, &vec![u32::MAX; s.pool2x2().output_len()])
}

#[test]
fn conv_pool_equals_conv_then_pool() {
    let mut rng = StdRng::seed_from_u64(21);
    // The network's two layers whole, the op suite's convolutions (odd sides, strides, shallow
    // ones, and outputs too small for a pooling window), and empty batches.
    let network = [
        conv(64, 1, 32, 28, 28, 3, 1, 1),
        conv(4, 32, 64, 14, 14, 3, 1, 1),
    ];
    let empty = [conv(0, 1, 4, 6, 6, 3, 1, 1), conv(2, 3, 0, 6, 6, 3, 1, 1)];
    for s in network.iter().chain(&CONV_SHAPES).chain(&empty) {
        for dev in devices() {
            for precision in precisions(dev) {
                check(dev, s, precision, &mut rng);
            }
        }
    }
}
