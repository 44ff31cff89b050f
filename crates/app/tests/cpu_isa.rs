//! The cpu device's instruction set chosen by HANDWRITTEN_CPU_ISA: the first line of a run names
//! it, forcing the portable loops still trains, and a value that is unknown or that this CPU
//! cannot run is an error naming the variable and the values allowed here.

mod common;

use std::process::{Command, Output};

use common::{data, scratch, stderr};
use kernels::cpu::gemm::Kernel;

/// `handwritten train --device <device>` on a tiny run, with `HANDWRITTEN_CPU_ISA` set to `isa`.
fn train_on(device: &str, isa: &str, out: &str) -> Output {
    let (dir, data) = (scratch(out), data());
    Command::new(env!("CARGO_BIN_EXE_handwritten"))
        .args(["train", "--device", device, "--epochs", "1"])
        .args(["--train-limit", "256", "--test-limit", "64"])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .env(kernels::CPU_ISA_VARIABLE, isa)
        .output()
        .expect("running handwritten")
}

#[test]
fn each_instruction_set_this_cpu_runs_trains_and_is_named() {
    for kernel in Kernel::available() {
        let trained = train_on("cpu", kernel.name(), &format!("isa-{}", kernel.name()));
        let printed = String::from_utf8_lossy(&trained.stdout);
        assert!(trained.status.success(), "{}", stderr(&trained));
        let first = printed.lines().next().unwrap_or_default();
        assert!(
            first.contains(&format!("device cpu ({})", kernel.name())),
            "{first}"
        );
        assert!(printed.contains("epoch 1, train_loss"), "{printed}");
    }
}

#[test]
fn unknown_or_unrunnable_instruction_sets_are_refused_by_name() {
    let allowed: Vec<_> = Kernel::available().iter().map(|k| k.name()).collect();
    let lacking = [Kernel::Avx512, Kernel::Avx2Fma]
        .into_iter()
        .filter(|k| !Kernel::available().contains(k))
        .map(|k| (k.name(), "this CPU cannot run"));
    // `--device auto` opens the cpu device the same way where there is no GPU to take.
    let devices = if kernels::Gpu::is_available() {
        &["cpu"][..]
    } else {
        &["cpu", "auto"]
    };
    let cases = [("sse9", "unknown instruction set")]
        .into_iter()
        .chain(lacking);
    for (value, expected) in cases {
        for device in devices {
            let refused = train_on(device, value, "isa-refused");
            let message = stderr(&refused);
            assert!(!refused.status.success(), "{device} {value}: {message}");
            assert!(
                message.contains(&format!("HANDWRITTEN_CPU_ISA={value}: {expected}"))
                    && allowed.iter().all(|name| message.contains(name)),
                "{device} {value}: {message}"
            );
            assert!(!message.contains("panicked"), "{message}");
        }
    }
}
