//! Resume and clean stops, through the binary on the cpu device: a run killed at any moment and
//! resumed ends byte-identical to one never interrupted; Ctrl-C keeps the completed epochs and
//! says how to resume.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use common::{data, scratch};

const EPOCHS: &str = "3";

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handwritten"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A small run's flags, writing to `out`, for `epochs` epochs.
fn new_run(out: &Path, epochs: &str) -> Command {
    let data = data();
    command(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        epochs,
        "--train-limit",
        "320",
        "--test-limit",
        "100",
        "--batch-size",
        "16",
        "--seed",
        "5",
    ])
}

fn succeed(mut command: Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{:?} failed:\n{}",
        command,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn resume(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--resume", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    command(&args).output().unwrap()
}

/// metrics.csv without the timing columns, which no two runs share.
fn figures(dir: &Path) -> Vec<String> {
    let csv = fs::read_to_string(dir.join("metrics.csv")).unwrap();
    csv.lines()
        .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect()
}

fn assert_same_run(dir: &Path, reference: &Path) {
    let model = |d: &Path| fs::read(d.join("model.safetensors")).unwrap();
    assert!(model(dir) == model(reference), "{} differs", dir.display());
    assert_eq!(figures(dir), figures(reference));
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no {}",
            path.display()
        );
        sleep(Duration::from_millis(5));
    }
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_result() {
    let reference = scratch("reference");
    succeed(new_run(&reference, EPOCHS));

    // SIGKILL at moments spread over the run, from just after it committed epoch 0.
    for delay_ms in [0, 120, 450, 900, 1500, 2300] {
        let dir = scratch(&format!("killed-{delay_ms}"));
        let mut child = new_run(&dir, EPOCHS).spawn().unwrap();
        wait_for(&dir.join("training_state.safetensors"), &mut child);
        sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let output = resume(&dir, &[]);
        assert!(
            output.status.success(),
            "resume after {delay_ms} ms: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_same_run(&dir, &reference);
        fs::remove_dir_all(&dir).unwrap();
    }

    // A finished run of fewer epochs, extended by --epochs, is the longer run.
    let extended = scratch("extended");
    succeed(new_run(&extended, "2"));
    let output = resume(&extended, &["--epochs", EPOCHS]);
    assert!(output.status.success());
    assert_same_run(&extended, &reference);

    // Fewer epochs than it has is refused, and so are options a resume cannot change.
    let output = resume(&extended, &["--epochs", "2"]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("already completed 3 epochs"),
        "{err}"
    );
    let output = resume(&extended, &["--lr", "0.1"]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("--lr"), "{err}");
    fs::remove_dir_all(&extended).unwrap();
    fs::remove_dir_all(&reference).unwrap();
}

#[test]
fn ctrl_c_keeps_the_completed_epochs_and_says_how_to_resume() {
    let dir = scratch("interrupted");
    let mut child = new_run(&dir, "40").spawn().unwrap();
    wait_for(&dir.join("training_state.safetensors"), &mut child);
    sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{err}");
    let resume_hint = format!("resume with `handwritten train --resume {}`", dir.display());
    assert!(
        err.contains("interrupted in epoch") && err.contains(&resume_hint),
        "{err}"
    );
    // The directory describes what its state holds: the epochs printed before the stop.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let printed = stdout.lines().filter(|l| l.starts_with("epoch ")).count();
    assert_eq!(figures(&dir).len(), printed + 1, "{stdout}");
    let output = resume(&dir, &["--epochs", &(printed + 1).to_string()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(figures(&dir).len(), printed + 2);

    // A second Ctrl-C does not wait for the step. The handler is in place once the run prints.
    let mut child = resume_command(&dir, "40").spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).unwrap();
    assert!(first_line.starts_with("training on"), "{first_line}");
    // Two signals of one kind sent together may arrive as one: a SIGINT, then a SIGTERM.
    for signal in [libc::SIGINT, libc::SIGTERM] {
        unsafe { libc::kill(child.id() as i32, signal) };
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let err = String::from_utf8_lossy(&output.stderr);
    let says = format!(
        "interrupted again: stopped at once, without finishing the step; {0} keeps the epochs it \
         completed; resume with `handwritten train --resume {0}`\n",
        dir.display()
    );
    assert!(err.ends_with(&says), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

fn resume_command(dir: &Path, epochs: &str) -> Command {
    command(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--epochs",
        epochs,
    ])
}

#[test]
fn a_diverging_run_stops_naming_epoch_and_step_and_keeps_its_last_good_epoch() {
    let dir = scratch("diverging");
    let mut run = new_run(&dir, "2");
    run.args(["--lr", "1e30"]);
    let output = run.output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("in epoch 1, step "), "{err}");
    assert!(err.contains("keeps epoch 0"), "{err}");
    assert_eq!(figures(&dir).len(), 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn out_on_a_run_directory_is_refused_and_says_how_to_resume() {
    let dir = scratch("occupied");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("notes.txt"), "mine").unwrap();
    let output = new_run(&dir, "1").output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("is not empty") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
    assert!(!dir.join(".lock").exists(), "a lock file was left in it");
    let output = resume(&dir, &[]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("no training_state"),
        "{err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}
