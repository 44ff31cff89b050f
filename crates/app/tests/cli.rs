//! The command line refuses bad flags and reports runtime errors as `error: ...`, exit code 1.

use std::process::{Command, Output};

fn handwritten(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_handwritten"))
        .args(args)
        .output()
        .expect("running handwritten")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn zero_batch_size_is_refused() {
    let output = handwritten(&["train", "--batch-size", "0"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("--batch-size"), "{err}");
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn unknown_device_is_refused() {
    let output = handwritten(&["eval", "--checkpoint", "m.safetensors", "--device", "foo"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("'foo'") && err.contains("--device"), "{err}");
    assert!(err.contains("cpu") && err.contains("emulated"), "{err}");
}

#[test]
fn non_positive_learning_rate_is_refused() {
    for lr in ["--lr=0", "--lr=-0.1", "--lr=fast"] {
        let output = handwritten(&["train", lr]);
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(err.contains("--lr") && err.contains("positive"), "{err}");
    }
}

#[test]
fn missing_data_is_an_error_naming_the_file() {
    let empty = std::env::temp_dir().join(format!("handwritten-nodata-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let data = empty.to_str().unwrap();
    let out = empty.join("run");
    let output = handwritten(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data,
        "--out",
        out.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&empty).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
}

#[test]
fn tf32_on_the_cpu_device_and_unknown_precisions_are_refused() {
    let output = handwritten(&["train", "--device", "cpu", "--precision", "tf32"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("--precision tf32") && err.contains("fp32 only"),
        "{err}"
    );

    let output = handwritten(&["eval", "--precision", "fp16", "--checkpoint", "x"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("fp16") && err.contains("tf32 or fp32"),
        "{err}"
    );
}
