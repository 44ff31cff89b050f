//! The data is part of the run, through the binary on the cpu device: a resume reads the images
//! and labels the run trained and tested on (as decoded: `.gz` or raw), or is refused naming both
//! data directories; a state from before runs recorded their data resumes.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use app::state::TrainingState;
use flate2::read::GzDecoder;

mod common;

use common::{data, scratch, stderr};

const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];
/// The run trains on the first 64 images: a change past them is no change to the run.
const TRAIN_LIMIT: usize = 64;
const IMAGE_LEN: usize = 784;
const IMAGES_HEADER: usize = 16;

fn handwritten(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_handwritten"))
        .args(args)
        .output()
        .unwrap()
}

/// The repository's MNIST files, decompressed.
fn raw_files() -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|name| {
            let gz = fs::read(data().join(format!("{name}.gz"))).unwrap();
            let mut raw = Vec::new();
            GzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
            raw
        })
        .collect()
}

/// A data directory of the four raw files, after `edit` has changed them.
fn data_dir(name: &str, edit: impl FnOnce(&mut [Vec<u8>])) -> PathBuf {
    let dir = scratch(name);
    let mut files = raw_files();
    edit(&mut files);
    for (name, bytes) in FILES.iter().zip(files) {
        fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

fn train(out: &Path) -> Output {
    train_on(out, &data())
}

fn train_on(out: &Path, data: &Path) -> Output {
    handwritten(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--train-limit",
        &TRAIN_LIMIT.to_string(),
        "--test-limit",
        "20",
        "--batch-size",
        "32",
    ])
}

fn resume(dir: &Path, data: &Path, epochs: &str) -> Output {
    handwritten(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        epochs,
    ])
}

fn succeeds(output: Output) {
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn a_resume_on_other_data_is_refused_naming_both_directories() {
    let run = scratch("refused").join("run");
    succeeds(train(&run));
    let state = run.join("training_state.safetensors");
    let before = fs::read(&state).unwrap();
    let image = |n: usize| IMAGES_HEADER + n * IMAGE_LEN..IMAGES_HEADER + (n + 1) * IMAGE_LEN;
    let other_images = data_dir("other-images", |files| {
        // The same count, the first images moved to the end.
        files[0][IMAGES_HEADER..].rotate_left(TRAIN_LIMIT * IMAGE_LEN);
    });
    let one_pixel = data_dir("one-pixel", |files| files[0][image(5)][400] ^= 0x80);
    let one_label = data_dir("one-label", |files| {
        files[1][8 + 7] = (files[1][8 + 7] + 1) % 10
    });
    let test_image = data_dir("test-image", |files| files[2][image(3)][300] ^= 1);
    for (data, splits) in [
        (&other_images, "its training images and labels"),
        (&one_pixel, "its training images and labels"),
        (&one_label, "its training images and labels"),
        (&test_image, "its test images and labels"),
    ] {
        let output = resume(&run, data, "2");
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        let given = format!(
            "--data {}: {splits} are not those {}",
            data.display(),
            run.display()
        );
        let stored = format!("which were in {}", common::data().display());
        assert!(err.contains(&given) && err.contains(&stored), "{err}");
        assert!(
            fs::read(&state).unwrap() == before,
            "the state was rewritten"
        );
    }
    // Without --data, the run's own data directory changed since: refused, naming it.
    let own = data_dir("own", |_| {});
    let run = scratch("own-changed").join("run");
    succeeds(train_on(&run, &own));
    fs::copy(one_pixel.join(FILES[0]), own.join(FILES[0])).unwrap();
    let output = handwritten(&["train", "--resume", run.to_str().unwrap(), "--epochs", "2"]);
    let err = stderr(&output);
    let says = format!(
        "{} (the run's --data, from {}): its training images and labels have changed since {}",
        own.display(),
        run.join("training_state.safetensors").display(),
        run.display()
    );
    assert!(!output.status.success() && err.contains(&says), "{err}");
}

#[test]
fn gz_and_raw_copies_and_changes_past_the_limit_are_the_same_data() {
    let run = scratch("same").join("run");
    succeeds(train(&run));
    let raw = data_dir("raw", |_| {});
    succeeds(resume(&run, &raw, "2"));
    // Image 100 is not among the 64 the run trains on.
    let past_limit = data_dir("past-limit", |files| {
        files[0][IMAGES_HEADER + 100 * IMAGE_LEN] ^= 0xff;
    });
    succeeds(resume(&run, &past_limit, "3"));
}

#[test]
fn a_state_without_fingerprints_resumes_and_records_them() {
    let run = scratch("old-format").join("run");
    succeeds(train(&run));
    let path = run.join("training_state.safetensors");
    let mut state = TrainingState::load(&path).unwrap();
    let recorded = state
        .fingerprints
        .take()
        .expect("a new state records its data");
    fs::write(&path, state.to_bytes().unwrap()).unwrap();
    let header = fs::read(&path).unwrap();
    assert!(!String::from_utf8_lossy(&header).contains("sha256"));
    succeeds(resume(&run, &data(), "2"));
    let resumed = TrainingState::load(&path).unwrap();
    assert_eq!(resumed.fingerprints, Some(recorded));
}
