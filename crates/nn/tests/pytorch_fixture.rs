//! The nn crate against PyTorch itself: tools/make_fixtures.py trained the reference ConvNet at
//! small widths for two Adam steps and recorded every intermediate; the same steps here must
//! agree to 1e-5.

mod common;

use std::path::Path;

use common::{assert_close, host, tensor, widen, DEVICE, SMALL};
use nn::{Adam, ConvNet, SoftmaxCrossEntropy};
use safetensors::{Dtype, SafeTensors};

fn fixture_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn f32s(file: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let tensor = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture lacks {name}"));
    assert_eq!(tensor.dtype(), Dtype::F32, "{name}");
    let values = tensor.data().chunks_exact(4);
    let values = values.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    (tensor.shape().to_vec(), values.collect())
}

fn labels(file: &SafeTensors, name: &str) -> Vec<u32> {
    let tensor = file.tensor(name).unwrap();
    assert_eq!(tensor.dtype(), Dtype::I64, "{name}");
    let values = tensor.data().chunks_exact(8);
    let values = values.map(|b| i64::from_le_bytes(b.try_into().unwrap()));
    values.map(|label| u32::try_from(label).unwrap()).collect()
}

/// Within 1e-5 of each value, plus 1e-5 of the tensor's largest (see `assert_close`).
fn assert_matches(name: &str, actual: &[f32], expected: &[f32]) {
    assert_close(name, actual, &widen(expected), 1e-5);
}

#[test]
fn forward_backward_and_two_adam_steps_match_pytorch() {
    let bytes = std::fs::read(fixture_path("convnet_small.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut net = ConvNet::new(&DEVICE, SMALL, 0).unwrap();
    for param in net.params_mut() {
        let (shape, values) = f32s(&file, &format!("initial.{}", param.name));
        assert_eq!(shape, param.value.shape, "{}", param.name);
        DEVICE.write(&values, &mut param.value.data).unwrap();
    }
    let mut xent = SoftmaxCrossEntropy::new(&DEVICE);
    let mut adam = Adam::new(0.001);

    for step in 0..2 {
        let (shape, images) = f32s(&file, &format!("input.{step}"));
        let x = tensor(&shape, &images);
        let labels = DEVICE
            .upload(&labels(&file, &format!("labels.{step}")))
            .unwrap();

        let logits = net.forward(&x).unwrap();
        let expected = f32s(&file, &format!("logits.{step}"));
        assert_eq!(logits.shape, expected.0);
        assert_matches(&format!("logits.{step}"), &host(&logits.data), &expected.1);

        let mut totals = DEVICE.zeros(2).unwrap();
        let dlogits = xent.forward_backward(logits, &labels, &mut totals).unwrap();
        let loss = host(&totals)[0] / shape[0] as f32;
        assert_matches(
            &format!("loss.{step}"),
            &[loss],
            &f32s(&file, &format!("loss.{step}")).1,
        );

        net.backward(&x, dlogits).unwrap();
        for param in net.params() {
            let name = format!("grad.{step}.{}", param.name);
            assert_matches(&name, &host(&param.grad.data), &f32s(&file, &name).1);
        }
        adam.step(&DEVICE, net.params_mut()).unwrap();
    }

    for param in net.params() {
        let name = format!("final.{}", param.name);
        assert_matches(&name, &host(&param.value.data), &f32s(&file, &name).1);
    }
}

#[test]
fn a_checkpoint_written_by_pytorch_loads_with_its_widths() {
    let bytes = std::fs::read(fixture_path("convnet_small.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let net = ConvNet::load(&DEVICE, &fixture_path("pytorch_checkpoint.safetensors")).unwrap();
    assert_eq!(net.config(), &SMALL);
    for param in net.params() {
        let (shape, values) = f32s(&file, &format!("final.{}", param.name));
        assert_eq!(param.value.shape, shape);
        assert_eq!(host(&param.value.data), values, "{}", param.name);
    }
}
