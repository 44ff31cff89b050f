//! Each layer through its own API: forward against the reference op in f64, every gradient
//! against central differences of the layer's own forward in f32, and bad shapes as errors.

mod common;

use common::{
    assert_close, check_gradient, host, host_view, random, tensor, weighted_sum, widen, DEVICE,
};
use kernels::reference as r;
use kernels::{Activation, Conv2dShape, LinearShape, Pool2dShape};
use nn::layers::{Conv2d, Flatten, Linear, MaxPool2dRelu};
use nn::Error;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Sets a parameter's values on the device.
fn write(param: &mut nn::Param, values: &[f32]) {
    DEVICE.write(values, &mut param.value.data).unwrap();
}

#[test]
fn conv2d_forward_matches_reference_and_gradients_match_finite_differences() {
    let rng = &mut StdRng::seed_from_u64(1);
    let x_shape = [2, 3, 6, 5];
    let x = random(rng, x_shape.iter().product());
    let mut conv = Conv2d::new(&DEVICE, "conv", 3, 4, 3, 1, rng).unwrap();
    let w = host(&conv.params()[0].value.data);
    let b = host(&conv.params()[1].value.data);

    let (y_shape, y) = host_view(conv.forward(tensor(&x_shape, &x).view()).unwrap());
    assert_eq!(y_shape, [2, 4, 6, 5]);
    let s = Conv2dShape {
        batch: 2,
        in_channels: 3,
        out_channels: 4,
        height: 6,
        width: 5,
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let mut expected = vec![0.0; s.output_len()];
    r::conv2d_forward(&s, &widen(&x), &widen(&w), &widen(&b), &mut expected);
    assert_close("conv y", &y, &expected, 1e-5);

    let dy = random(rng, y.len());
    let x_tensor = tensor(&x_shape, &x);
    let dy_tensor = tensor(&y_shape, &dy);
    let dx = host_view(conv.backward(x_tensor.view(), dy_tensor.view()).unwrap());
    assert_eq!(dx.0, x_shape);
    let dw = host(&conv.params()[0].grad.data);
    let db = host(&conv.params()[1].grad.data);

    let loss = |conv: &mut Conv2d, x: &[f32]| {
        let y = conv.forward(tensor(&x_shape, x).view()).unwrap();
        weighted_sum(&dy, &host(y.data))
    };
    check_gradient("conv dx", &x, &dx.1, 1e-2, |x| loss(&mut conv, x));
    check_gradient("conv dw", &w, &dw, 1e-2, |w_| {
        write(conv.params_mut()[0], w_);
        loss(&mut conv, &x)
    });
    write(conv.params_mut()[0], &w);
    check_gradient("conv db", &b, &db, 1e-2, |b_| {
        write(conv.params_mut()[1], b_);
        loss(&mut conv, &x)
    });
}

#[test]
fn conv2d_backward_params_gives_the_same_gradients_as_backward() {
    let rng = &mut StdRng::seed_from_u64(2);
    let x = tensor(&[3, 2, 5, 5], &random(rng, 150));
    let dy = tensor(&[3, 3, 5, 5], &random(rng, 225));
    let mut conv = Conv2d::new(&DEVICE, "conv", 2, 3, 3, 1, rng).unwrap();
    conv.forward(x.view()).unwrap();
    conv.backward(x.view(), dy.view()).unwrap();
    let full: Vec<Vec<f32>> = conv.params().iter().map(|p| host(&p.grad.data)).collect();
    for p in conv.params_mut() {
        DEVICE.fill_zero(&mut p.grad.data).unwrap();
    }
    conv.backward_params(x.view(), dy.view()).unwrap();
    let only: Vec<Vec<f32>> = conv.params().iter().map(|p| host(&p.grad.data)).collect();
    assert_eq!(full, only);
}

#[test]
fn maxpool2d_relu_routes_gradients_to_the_positive_maxima() {
    let rng = &mut StdRng::seed_from_u64(3);
    // Distinct values 0.01 apart and at least 0.005 from ReLU's kink at zero, most of them
    // negative so that some windows are all negative: a step of h = 1e-3 never changes which
    // input is a maximum, nor the sign of a maximum.
    let x_shape = [2, 3, 5, 4];
    let mut x: Vec<f32> = (0..120).map(|k| k as f32 * 0.01 - 0.905).collect();
    x.shuffle(rng);
    let mut pool = MaxPool2dRelu::new(&DEVICE, "pool").unwrap();

    let (y_shape, y) = host_view(pool.forward(tensor(&x_shape, &x).view()).unwrap());
    assert_eq!(y_shape, [2, 3, 2, 2]);
    let s = Pool2dShape {
        batch: 2,
        channels: 3,
        height: 5,
        width: 4,
    };
    let (mut pooled, mut argmax) = (vec![0.0; s.output_len()], vec![0; s.output_len()]);
    r::maxpool2d_forward(&s, &widen(&x), &mut pooled, &mut argmax);
    let mut expected = vec![0.0; s.output_len()];
    r::relu_forward(&pooled, &mut expected);
    assert!(expected.contains(&0.0) && expected.iter().any(|&v| v > 0.0));
    assert_close("pool y", &y, &expected, 0.0);

    let dy = random(rng, y.len());
    let dx = host_view(pool.backward(tensor(&y_shape, &dy).view()).unwrap());
    assert_eq!(dx.0, x_shape);
    check_gradient("pool dx", &x, &dx.1, 1e-3, |x| {
        let y = pool.forward(tensor(&x_shape, x).view()).unwrap();
        weighted_sum(&dy, &host(y.data))
    });
}

#[test]
fn linear_forward_matches_reference_and_gradients_match_finite_differences() {
    let rng = &mut StdRng::seed_from_u64(5);
    let x = random(rng, 3 * 7);
    let mut fc = Linear::new(&DEVICE, "fc", 7, 5, Activation::None, rng).unwrap();
    let w = host(&fc.params()[0].value.data);
    let b = host(&fc.params()[1].value.data);

    let (y_shape, y) = host_view(fc.forward(tensor(&[3, 7], &x).view()).unwrap());
    assert_eq!(y_shape, [3, 5]);
    let s = LinearShape {
        batch: 3,
        in_features: 7,
        out_features: 5,
    };
    let mut expected = vec![0.0; 15];
    r::linear_forward(&s, &widen(&x), &widen(&w), &widen(&b), &mut expected);
    assert_close("linear y", &y, &expected, 1e-5);
    assert_eq!(host(&fc.output().data), y);

    let dy = random(rng, 15);
    let (x_tensor, dy_tensor) = (tensor(&[3, 7], &x), tensor(&[3, 5], &dy));
    let dx = host_view(fc.backward(x_tensor.view(), dy_tensor.view()).unwrap());
    assert_eq!(dx.0, [3, 7]);
    let dw = host(&fc.params()[0].grad.data);
    let db = host(&fc.params()[1].grad.data);

    let loss = |fc: &mut Linear, x: &[f32]| {
        let y = fc.forward(tensor(&[3, 7], x).view()).unwrap();
        weighted_sum(&dy, &host(y.data))
    };
    check_gradient("linear dx", &x, &dx.1, 1e-2, |x| loss(&mut fc, x));
    check_gradient("linear dw", &w, &dw, 1e-2, |w_| {
        write(fc.params_mut()[0], w_);
        loss(&mut fc, &x)
    });
    write(fc.params_mut()[0], &w);
    check_gradient("linear db", &b, &db, 1e-2, |b_| {
        write(fc.params_mut()[1], b_);
        loss(&mut fc, &x)
    });
}

#[test]
fn flatten_reshapes_without_copying() {
    let x = tensor(
        &[2, 3, 2, 2],
        &(0..24).map(|k| k as f32).collect::<Vec<_>>(),
    );
    let mut flatten = Flatten::new();
    let y = flatten.forward(x.view()).unwrap();
    assert_eq!(y.shape, [2, 12]);
    assert!(std::ptr::eq(y.data, &x.data), "flatten copied its input");

    let dy = tensor(&[2, 12], &[1.0; 24]);
    let dx = flatten.backward(dy.view()).unwrap();
    assert_eq!(dx.shape, [2, 3, 2, 2]);
    assert!(
        std::ptr::eq(dx.data, &dy.data),
        "flatten copied its gradient"
    );
}

#[test]
fn a_layer_follows_changes_of_batch_size() {
    let rng = &mut StdRng::seed_from_u64(6);
    let mut fc = Linear::new(&DEVICE, "fc", 4, 3, Activation::None, rng).unwrap();
    let w = widen(&host(&fc.params()[0].value.data));
    let b = widen(&host(&fc.params()[1].value.data));
    for batch in [2, 5, 2, 1] {
        let x = random(rng, batch * 4);
        let (y_shape, y) = host_view(fc.forward(tensor(&[batch, 4], &x).view()).unwrap());
        assert_eq!(y_shape, [batch, 3]);
        let s = LinearShape {
            batch,
            in_features: 4,
            out_features: 3,
        };
        let mut expected = vec![0.0; batch * 3];
        r::linear_forward(&s, &widen(&x), &w, &b, &mut expected);
        assert_close("linear y", &y, &expected, 1e-5);
        let dy = tensor(&y_shape, &random(rng, batch * 3));
        let x = tensor(&[batch, 4], &x);
        let dx = fc.backward(x.view(), dy.view()).unwrap();
        assert_eq!(dx.shape, [batch, 4]);
    }
}

fn assert_shape_error(result: Result<impl std::fmt::Debug, Error>, layer: &str, mentions: &str) {
    match result {
        Err(Error::Shape { name, what }) => {
            assert_eq!(name, layer);
            assert!(
                what.contains(mentions),
                "{what:?} should mention {mentions}"
            );
        }
        other => panic!("expected a shape error from {layer}, got {other:?}"),
    }
}

#[test]
fn misshapen_inputs_and_gradients_are_errors_naming_the_layer() {
    let rng = &mut StdRng::seed_from_u64(7);
    let mut conv = Conv2d::new(&DEVICE, "conv2d.3", 2, 3, 3, 1, rng).unwrap();
    let one_channel = tensor(&[1, 1, 4, 4], &[0.0; 16]);
    assert_shape_error(
        conv.forward(one_channel.view()).map(|_| ()),
        "conv2d.3",
        "[N, 2, H, W]",
    );
    let x = tensor(&[1, 2, 4, 4], &[0.0; 32]);
    conv.forward(x.view()).unwrap();
    let dy = tensor(&[1, 3, 5, 5], &[0.0; 75]);
    assert_shape_error(
        conv.backward(x.view(), dy.view()).map(|_| ()),
        "conv2d.3",
        "dy",
    );
    let dy = tensor(&[1, 3, 4, 4], &[0.0; 48]);
    let wider = tensor(&[1, 2, 4, 5], &[0.0; 40]);
    assert_shape_error(
        conv.backward(wider.view(), dy.view()).map(|_| ()),
        "conv2d.3",
        "x has shape",
    );

    let mut fc = Linear::new(&DEVICE, "fc2", 6, 2, Activation::None, rng).unwrap();
    let five = tensor(&[1, 5], &[0.0; 5]);
    assert_shape_error(fc.forward(five.view()).map(|_| ()), "fc2", "[N, 6]");

    let mut pool = MaxPool2dRelu::new(&DEVICE, "conv2d.1").unwrap();
    let flat = tensor(&[2, 8], &[0.0; 16]);
    assert_shape_error(
        pool.forward(flat.view()).map(|_| ()),
        "conv2d.1",
        "[N, C, H, W]",
    );
    let image = tensor(&[1, 1, 4, 4], &[0.0; 16]);
    pool.forward(image.view()).unwrap();
    assert_shape_error(
        pool.backward(image.view()).map(|_| ()),
        "conv2d.1",
        "[1, 1, 2, 2]",
    );
}
