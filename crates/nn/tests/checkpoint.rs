//! Checkpoints: a round trip keeps every parameter and every logit, saving replaces a file in one
//! step, and each kind of bad file is an error naming the file and the tensor at fault.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{host, random, tensor, tiny, DEVICE};
use nn::{ConvNet, ConvNetConfig, Error};
use rand::rngs::StdRng;
use rand::SeedableRng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

const TINY: ConvNetConfig = tiny(12);

/// An empty directory of this test's own.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("checkpoint")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn params(net: &ConvNet) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let params = net.params().into_iter();
    params
        .map(|p| (p.name.clone(), p.value.shape.clone(), host(&p.value.data)))
        .collect()
}

#[test]
fn a_saved_network_loads_with_the_same_params_and_logits() {
    let dir = scratch_dir("round_trip");
    let path = dir.join("net.safetensors");
    let mut net = ConvNet::new(&DEVICE, TINY, 21).unwrap();
    net.save(&path).unwrap();
    let mut loaded = ConvNet::load(&DEVICE, &path).unwrap();
    assert_eq!(loaded.config(), &TINY);
    assert_eq!(params(&loaded), params(&net));

    let x = tensor(
        &[3, 1, 12, 12],
        &random(&mut StdRng::seed_from_u64(22), 3 * 144),
    );
    let logits = host(&net.forward(&x).unwrap().data);
    assert_eq!(host(&loaded.forward(&x).unwrap().data), logits);

    // Saving over a checkpoint replaces it and leaves no temporary file behind.
    let other = ConvNet::new(&DEVICE, TINY, 23).unwrap();
    other.save(&path).unwrap();
    assert_eq!(
        params(&ConvNet::load(&DEVICE, &path).unwrap()),
        params(&other)
    );
    let files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["net.safetensors"]);
}

#[test]
fn a_failed_save_names_the_file() {
    let dir = scratch_dir("failed_save");
    let path = dir.join("missing-dir").join("net.safetensors");
    let net = ConvNet::new(&DEVICE, TINY, 0).unwrap();
    let error = net.save(&path).unwrap_err();
    assert!(matches!(error, Error::Write { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

/// A tensor as safetensors stores it.
struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// The tensors of a good checkpoint of TINY.
fn good_tensors() -> Vec<Stored> {
    let net = ConvNet::new(&DEVICE, TINY, 0).unwrap();
    params(&net)
        .into_iter()
        .map(|(name, shape, values)| Stored {
            name,
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .collect()
}

fn write_tensors(path: &Path, tensors: &[Stored]) {
    let views = tensors.iter().map(|t| {
        let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap();
        (t.name.as_str(), view)
    });
    fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Loading `path` fails with a checkpoint error that names the file and says each of `mentions`.
fn assert_load_fails(path: &Path, mentions: &[&str]) {
    match ConvNet::load(&DEVICE, path) {
        Err(error @ Error::Checkpoint { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            for m in mentions {
                assert!(message.contains(m), "{message:?} should mention {m:?}");
            }
        }
        Err(other) => panic!("expected a checkpoint error, got {other:?}"),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

/// Writes the good tensors changed by `edit` and checks that loading them fails as expected.
fn check_bad(dir: &Path, case: &str, edit: impl FnOnce(&mut Vec<Stored>), mentions: &[&str]) {
    let mut tensors = good_tensors();
    edit(&mut tensors);
    let path = dir.join(format!("{case}.safetensors"));
    write_tensors(&path, &tensors);
    assert_load_fails(&path, mentions);
}

fn find<'a>(tensors: &'a mut [Stored], name: &str) -> &'a mut Stored {
    tensors.iter_mut().find(|t| t.name == name).unwrap()
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = scratch_dir("missing");
    for name in [
        "conv2d.0.weight",
        "conv2d.3.bias",
        "fc1.weight",
        "fc2.bias",
        "fc3.weight",
    ] {
        let remove = |t: &mut Vec<Stored>| t.retain(|t| t.name != name);
        check_bad(&dir, name, remove, &[name, "missing"]);
    }
}

#[test]
fn a_misshapen_tensor_is_named_with_the_shape_expected() {
    let dir = scratch_dir("misshapen");
    // A bias one element short.
    let shorten = |t: &mut Vec<Stored>| {
        let bias = find(t, "fc2.bias");
        bias.shape = vec![5];
        bias.bytes.truncate(20);
    };
    check_bad(
        &dir,
        "short_bias",
        shorten,
        &["fc2.bias", "[5]", "expected [6]"],
    );
    // conv2 reading 3 input channels where conv1 makes 2.
    let widen = |t: &mut Vec<Stored>| {
        let weight = find(t, "conv2d.3.weight");
        weight.shape = vec![3, 3, 3, 3];
        weight.bytes.resize(81 * 4, 0);
    };
    check_bad(
        &dir,
        "conv_in",
        widen,
        &["conv2d.3.weight", "expected [3, 2, 3, 3]"],
    );
    // Weights of rank 2 where a convolution needs 4.
    let flatten = |t: &mut Vec<Stored>| find(t, "conv2d.0.weight").shape = vec![2, 9];
    check_bad(
        &dir,
        "conv_rank",
        flatten,
        &["conv2d.0.weight", "4 positive dimensions"],
    );
    // fc1 reading 26 features, not 3 channels times a square grid.
    let odd = |t: &mut Vec<Stored>| {
        let weight = find(t, "fc1.weight");
        weight.shape = vec![8, 26];
        weight.bytes.truncate(8 * 26 * 4);
    };
    check_bad(&dir, "fc1_in", odd, &["fc1.weight", "26 input features"]);
    // fc2 reading 7 features where fc1 makes 8.
    let narrow = |t: &mut Vec<Stored>| {
        let weight = find(t, "fc2.weight");
        weight.shape = vec![6, 7];
        weight.bytes.truncate(6 * 7 * 4);
    };
    check_bad(&dir, "fc2_in", narrow, &["fc2.weight", "expected [6, 8]"]);
}

#[test]
fn a_tensor_of_another_dtype_is_named() {
    let dir = scratch_dir("dtype");
    let to_f16 = |t: &mut Vec<Stored>| {
        let weight = find(t, "fc3.weight");
        weight.dtype = Dtype::F16;
        weight.bytes.truncate(weight.bytes.len() / 2);
    };
    check_bad(&dir, "f16", to_f16, &["fc3.weight", "F16", "expected F32"]);
    let to_f64 = |t: &mut Vec<Stored>| {
        let bias = find(t, "conv2d.0.bias");
        bias.dtype = Dtype::F64;
        bias.bytes = bias.bytes.repeat(2);
    };
    check_bad(
        &dir,
        "f64",
        to_f64,
        &["conv2d.0.bias", "F64", "expected F32"],
    );
}

#[test]
fn an_unexpected_tensor_is_named() {
    let dir = scratch_dir("unexpected");
    let extra = |t: &mut Vec<Stored>| {
        t.push(Stored {
            name: "conv2d.6.weight".to_string(),
            dtype: Dtype::F32,
            shape: vec![1],
            bytes: vec![0; 4],
        })
    };
    check_bad(&dir, "extra", extra, &["conv2d.6.weight", "unexpected"]);
}

#[test]
fn unreadable_truncated_and_garbage_files_name_the_file() {
    let dir = scratch_dir("unreadable");
    assert_load_fails(&dir.join("absent.safetensors"), &["cannot read"]);

    let good = dir.join("good.safetensors");
    write_tensors(&good, &good_tensors());
    let bytes = fs::read(&good).unwrap();
    let cases: [(&str, &[u8]); 4] = [
        ("empty", &[]),
        ("header_only", &bytes[..bytes.len() / 10]),
        ("truncated", &bytes[..bytes.len() - 1]),
        ("garbage", b"this is not a safetensors file, only words"),
    ];
    for (case, contents) in cases {
        let path = dir.join(format!("{case}.safetensors"));
        fs::write(&path, contents).unwrap();
        assert_load_fails(&path, &["safetensors"]);
    }
}

#[test]
fn a_checkpoint_reads_as_safetensors_with_state_dict_names() {
    let dir = scratch_dir("format");
    let path = dir.join("net.safetensors");
    let net = ConvNet::new(&DEVICE, TINY, 0).unwrap();
    net.save(&path).unwrap();
    let bytes = fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    let mut expected: Vec<_> = net.params().iter().map(|p| p.name.as_str()).collect();
    expected.sort();
    assert_eq!(names, expected);
    for param in net.params() {
        let stored = file.tensor(&param.name).unwrap();
        assert_eq!(stored.dtype(), Dtype::F32);
        assert_eq!(stored.shape(), param.value.shape);
    }
}

#[test]
fn shapes_that_imply_a_larger_network_than_the_file_are_refused_before_building_it() {
    let dir = scratch_dir("huge");
    // fc2 says 1,500,000 outputs over a single input: 6 MB in the file, but a network of
    // 1,500,000 x hidden1 weights. The shape check refuses it before anything is allocated.
    check_bad(
        &dir,
        "wide_fc2",
        |t| {
            let fc2 = find(t, "fc2.weight");
            fc2.shape = vec![1_500_000, 1];
            fc2.bytes = vec![0; 1_500_000 * 4];
        },
        &["fc2.weight", "[1500000, 1]", "expected [1500000, 8]"],
    );
}

#[test]
fn non_finite_weights_are_named() {
    let dir = scratch_dir("nan");
    for (case, value, says) in [("nan", f32::NAN, "NaN"), ("inf", f32::INFINITY, "inf")] {
        check_bad(
            &dir,
            case,
            |t| find(t, "fc1.bias").bytes[4..8].copy_from_slice(&value.to_le_bytes()),
            &["fc1.bias", says, "index 1", "finite"],
        );
    }
}

#[test]
fn a_file_over_the_size_bound_is_refused_unread() {
    let dir = scratch_dir("oversize");
    let path = dir.join("big.safetensors");
    // Sparse: no disk space is used, and the loader must not read it.
    fs::File::create(&path)
        .unwrap()
        .set_len(nn::MAX_CHECKPOINT_BYTES + 1)
        .unwrap();
    assert_load_fails(&path, &["more than the"]);
}

#[test]
fn state_dict_shapes_are_what_the_network_builds() {
    let net = ConvNet::new(&DEVICE, TINY, 0).unwrap();
    let built: Vec<(String, Vec<usize>)> = net
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.value.shape.clone()))
        .collect();
    let listed: Vec<(String, Vec<usize>)> = nn::state_dict_shapes(&TINY)
        .into_iter()
        .map(|(name, shape)| (name.to_string(), shape))
        .collect();
    assert_eq!(built, listed);
}

/// Adam's state read out and loaded into a fresh optimizer continues exactly as the original.
#[test]
fn adam_state_round_trips_and_continues_the_same() {
    use nn::Adam;
    let mut rng = StdRng::seed_from_u64(3);
    let grads: Vec<Vec<f32>> = ConvNet::new(&DEVICE, TINY, 0)
        .unwrap()
        .params()
        .iter()
        .map(|p| random(&mut rng, p.value.data.len()))
        .collect();
    let step = |net: &mut ConvNet, adam: &mut Adam| {
        for (param, g) in net.params_mut().into_iter().zip(&grads) {
            // Into the same buffers: Adam's table holds their addresses.
            DEVICE.write(g, &mut param.grad.data).unwrap();
        }
        adam.step(&DEVICE, net.params_mut()).unwrap();
    };
    let (mut a, mut adam_a) = (ConvNet::new(&DEVICE, TINY, 0).unwrap(), Adam::new(0.01));
    step(&mut a, &mut adam_a);
    step(&mut a, &mut adam_a);
    let state = adam_a.state(&DEVICE).unwrap();
    assert_eq!(state.steps, 2);
    assert_eq!(state.moments.len(), 10);

    let (mut b, mut adam_b) = (ConvNet::new(&DEVICE, TINY, 0).unwrap(), Adam::new(0.01));
    for (pb, pa) in b.params_mut().into_iter().zip(a.params()) {
        DEVICE
            .write(&host(&pa.value.data), &mut pb.value.data)
            .unwrap();
    }
    adam_b.load_state(&DEVICE, &state, &b.params()).unwrap();
    step(&mut a, &mut adam_a);
    step(&mut b, &mut adam_b);
    for (pa, pb) in a.params().iter().zip(b.params()) {
        assert_eq!(host(&pa.value.data), host(&pb.value.data), "{}", pa.name);
    }

    // A state for other parameters is refused by name.
    let mut wrong = state.clone();
    wrong.moments[3].0.pop();
    let err = adam_b.load_state(&DEVICE, &wrong, &b.params()).unwrap_err();
    assert!(err.to_string().contains("conv2d.3.bias"), "{err}");
}
