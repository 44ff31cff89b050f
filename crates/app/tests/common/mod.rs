//! Helpers shared by the app's tests: running the binary, the MNIST files, scratch directories.
#![allow(dead_code)] // each test file uses its own subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod server;

/// Runs the binary with `args` and returns what it did, success or not.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_handwritten"))
        .args(args)
        .output()
        .expect("running handwritten")
}

/// Runs the binary, which must succeed, and returns what it printed.
pub fn handwritten(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "handwritten {args:?} failed:\n{}",
        stderr(&output)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The repository's MNIST files.
pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

/// A fresh, empty directory for one test, named after its test file so that test binaries
/// running at once never share one.
pub fn scratch(name: &str) -> PathBuf {
    let file = module_path!().split("::").next().unwrap_or("app");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{file}-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A network trained for one epoch on 6,000 images (cpu, seed 0) into `run`: the checkpoint
/// the tests of predicting people's digits use. Returns its model file.
pub fn train_small_network(run: &Path) -> PathBuf {
    handwritten(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data().to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--train-limit",
        "6000",
        "--test-limit",
        "100",
    ]);
    run.join("model.safetensors")
}
