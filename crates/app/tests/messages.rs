//! What the binary says: errors name only what the user gave or the file an option came from,
//! `--out` is checked before any work, a resumed finished run says what it did, and Ctrl-C says
//! when it stops at once.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use app::state::TrainingState;
use kernels::Precision;

mod common;

use common::{data, run, scratch, stderr};

/// A finished one-epoch run in `dir`.
fn finished_run(dir: &Path) {
    let data = data();
    let output = run(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--epochs",
        "1",
        "--train-limit",
        "32",
        "--test-limit",
        "10",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn resuming_a_finished_run_says_it_had_nothing_to_train() {
    let dir = scratch("finished").join("run");
    finished_run(&dir);
    let output = run(&["train", "--resume", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let says = format!(
        "{} already completed 1 of 1 epochs; nothing to train (pass --epochs N to train further)",
        dir.display()
    );
    assert_eq!(stdout.trim(), says);
}

#[test]
fn options_from_the_state_are_named_by_the_state_not_by_a_flag() {
    let dir = scratch("stored-options").join("run");
    finished_run(&dir);
    let path = dir.join("training_state.safetensors");
    // As if the run had trained on the emulated GPU, in tf32.
    let mut state = TrainingState::load(&path).unwrap();
    state.options.device = "emulated".to_string();
    state.options.precision = Some(Precision::Tf32);
    fs::write(&path, state.to_bytes().unwrap()).unwrap();
    let resume = |extra: &[&str]| {
        let mut args = vec!["train", "--resume", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&args)
    };
    let output = resume(&["--device", "cpu"]);
    let err = stderr(&output);
    let says = format!(
        "the run's precision tf32 (from {}): the cpu device computes in fp32 only; pass \
         --precision fp32",
        path.display()
    );
    assert!(!output.status.success() && err.contains(&says), "{err}");
    assert!(!err.contains("--precision tf32"), "{err}");
    let output = resume(&["--device", "cpu", "--precision", "fp32"]);
    assert!(output.status.success(), "{}", stderr(&output));

    // The stored device, unusable here, is named as the state's.
    let output = Command::new(env!("CARGO_BIN_EXE_handwritten"))
        .args(["train", "--resume", dir.to_str().unwrap()])
        .env("HANDWRITTEN_EMULATED_CC", "1.0")
        .output()
        .unwrap();
    let err = stderr(&output);
    let says = format!("the run's device emulated (from {})", path.display());
    assert!(!output.status.success() && err.contains(&says), "{err}");
    assert!(!err.contains("--device"), "{err}");
}

#[test]
fn eval_checks_its_out_directory_before_any_work() {
    let dir = scratch("eval-out");
    let file = dir.join("a-file");
    fs::write(&file, "mine").unwrap();
    // The checkpoint does not exist: an error about --out comes first.
    let eval = |out: &Path| {
        run(&[
            "eval",
            "--device",
            "cpu",
            "--checkpoint",
            dir.join("missing.safetensors").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let output = eval(&file);
    let err = stderr(&output);
    let says = format!("--out {} is a file, expected a directory", file.display());
    assert!(!output.status.success() && err.contains(&says), "{err}");
    let output = eval(&file.join("confusion"));
    let err = stderr(&output);
    assert!(
        err.contains("cannot be created") && err.contains("is a file"),
        "{err}"
    );

    // A directory that cannot be written: read-only by its mode, or, where that does not stop
    // this process (root), a read-only file system's.
    let read_only = dir.join("read-only");
    fs::create_dir_all(&read_only).unwrap();
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o555)).unwrap();
    let writable = |d: &Path| fs::write(d.join("probe"), "").is_ok();
    let candidates = [
        read_only.as_path(),
        Path::new("/sys/firmware"),
        Path::new("/sys"),
    ];
    let Some(unwritable) = candidates.into_iter().find(|d| d.is_dir() && !writable(d)) else {
        panic!("no unwritable directory to test with");
    };
    for out in [unwritable.to_path_buf(), unwritable.join("new")] {
        let output = eval(&out);
        let err = stderr(&output);
        assert!(!output.status.success(), "{err}");
        assert!(err.contains(&unwritable.display().to_string()), "{err}");
        assert!(
            err.contains("not writable") && !err.contains("missing"),
            "{err}"
        );
        assert!(!err.contains("Os {") && !err.contains("code:"), "{err}");
    }
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn ctrl_c_during_eval_says_it_stopped() {
    let dir = scratch("eval-ctrl-c");
    finished_run(&dir.join("run"));
    let checkpoint = dir.join("run/model.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_handwritten"))
        .args([
            "eval",
            "--device",
            "cpu",
            "--data",
            data().to_str().unwrap(),
        ])
        .args(["--checkpoint", checkpoint.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The handler is in place once eval names its device; then 10,000 images take seconds.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("device cpu"), "{line}");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{rest}");
    assert_eq!(rest, "interrupted: stopped at once\n");
}

#[test]
fn a_diverging_resumed_run_asks_for_a_new_run_not_for_a_flag_it_cannot_take() {
    let dir = scratch("diverging-resumed").join("run");
    finished_run(&dir);
    let path = dir.join("training_state.safetensors");
    let mut state = TrainingState::load(&path).unwrap();
    state.options.lr = 1e30;
    fs::write(&path, state.to_bytes().unwrap()).unwrap();
    let output = run(&["train", "--resume", dir.to_str().unwrap(), "--epochs", "2"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("keeps epoch 1; try a new run with an --lr below the run's 10000"),
        "{err}"
    );
}

#[test]
fn train_checks_its_out_directory_before_any_work() {
    let dir = scratch("train-out");
    let file = dir.join("a-file");
    fs::write(&file, "mine").unwrap();
    // The data does not exist: an error about --out comes first.
    let train = |out: &Path| {
        let missing = dir.join("no-data");
        run(&[
            "train",
            "--device",
            "cpu",
            "--data",
            missing.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let output = train(&file);
    let err = stderr(&output);
    let says = format!("--out {} is a file, expected a directory", file.display());
    assert!(!output.status.success() && err.contains(&says), "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "mine");
    let output = train(&file.join("run"));
    let err = stderr(&output);
    let says = format!(
        "--out {} cannot be created: {} is a file",
        file.join("run").display(),
        file.display()
    );
    assert!(!output.status.success() && err.contains(&says), "{err}");
}
