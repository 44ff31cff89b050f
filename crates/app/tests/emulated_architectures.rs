//! The trainer on emulated GPUs of other architectures (HANDWRITTEN_EMULATED_CC): a Turing GPU
//! trains in fp32 and refuses TF32 by name, a Hopper one defaults to TF32, and a capability the
//! kernels do not support, or a value that is none, is an error naming the variable.

mod common;

use std::process::{Command, Output};

use common::{data, scratch, stderr};

/// `handwritten train --device emulated` on a tiny run, as a GPU of capability `cc`.
fn train_as(cc: &str, out: &str, extra: &[&str]) -> Output {
    let dir = scratch(out);
    let data = data();
    let mut args = vec![
        "train",
        "--device",
        "emulated",
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "--test-limit",
        "64",
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend(extra);
    Command::new(env!("CARGO_BIN_EXE_handwritten"))
        .args(&args)
        .env(kernels::EMULATED_CC_VARIABLE, cc)
        .output()
        .expect("running handwritten")
}

#[test]
fn an_emulated_turing_gpu_trains_in_fp32_and_refuses_tf32() {
    let trained = train_as("7.5", "turing", &[]);
    let printed = String::from_utf8_lossy(&trained.stdout);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(
        printed.contains("compute capability 7.5") && printed.contains("precision fp32"),
        "{printed}"
    );
    assert!(printed.contains("epoch 1, train_loss"), "{printed}");

    let refused = train_as("7.5", "turing-tf32", &["--precision", "tf32"]);
    let message = stderr(&refused);
    assert!(!refused.status.success());
    assert!(
        message.contains("--precision tf32") && message.contains("8.0") && message.contains("7.5"),
        "{message}"
    );
}

#[test]
fn an_emulated_hopper_gpu_defaults_to_tf32() {
    let trained = train_as("9.0", "hopper", &[]);
    let printed = String::from_utf8_lossy(&trained.stdout);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(
        printed.contains("compute capability 9.0") && printed.contains("precision tf32"),
        "{printed}"
    );
}

#[test]
fn unsupported_or_unreadable_capabilities_are_refused_by_name() {
    for (value, expected) in [("6.1", "7.5"), ("nine", "expected a compute capability")] {
        let refused = train_as(value, "refused", &[]);
        let message = stderr(&refused);
        assert!(!refused.status.success(), "{value}: {message}");
        assert!(
            message.contains(&format!("HANDWRITTEN_EMULATED_CC={value}"))
                && message.contains(expected),
            "{value}: {message}"
        );
        assert!(!message.contains("panicked"), "{message}");
    }
}
