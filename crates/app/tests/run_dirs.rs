//! One process per run directory, through the binary on the cpu device: trainings and resumes
//! started together on one directory leave exactly one running and a directory from that one
//! run; the others are refused at once, naming the holder.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use app::metrics::to_csv;
use app::run_dir::LOCK_FILE;
use app::state::TrainingState;
use kernels::Device;
use nn::ConvNet;

mod common;

use common::{data, scratch, stderr};

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handwritten"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A tiny run into `out` with its own `seed`, so that each run's files can be told apart.
fn new_run(out: &Path, seed: u64, epochs: &str) -> Command {
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
        "64",
        "--test-limit",
        "20",
        "--batch-size",
        "32",
        "--seed",
        &seed.to_string(),
    ])
}

fn resume(dir: &Path, epochs: &str) -> Command {
    command(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--epochs",
        epochs,
    ])
}

/// Starts every command at once, and waits for them all; returns each one's pid and output.
fn race(commands: Vec<Command>) -> Vec<(u32, Output)> {
    let children: Vec<Child> = commands
        .into_iter()
        .map(|mut c| c.spawn().unwrap())
        .collect();
    children
        .into_iter()
        .map(|child| (child.id(), child.wait_with_output().unwrap()))
        .collect()
}

/// Exactly one of `outputs` succeeded; every other names `dir` and the winner's pid. Returns the
/// winner's index.
fn one_winner(dir: &Path, outputs: &[(u32, Output)]) -> usize {
    let winners: Vec<usize> = (0..outputs.len())
        .filter(|&i| outputs[i].1.status.success())
        .collect();
    let all: Vec<String> = outputs.iter().map(|(_, o)| stderr(o)).collect();
    assert_eq!(winners.len(), 1, "{all:#?}");
    let winner = winners[0];
    let holder = format!(
        "{} is in use by process {}",
        dir.display(),
        outputs[winner].0
    );
    for (i, (_, output)) in outputs.iter().enumerate() {
        if i != winner {
            let err = stderr(output);
            assert_eq!(output.status.code(), Some(1), "{err}");
            assert!(err.contains(&holder), "{err}");
        }
    }
    winner
}

/// The state, checkpoint and metrics in `dir` are of one run: the one seeded `seed`, at `epochs`.
fn assert_consistent(dir: &Path, seed: u64, epochs: usize) {
    let state = TrainingState::load(&dir.join("training_state.safetensors")).unwrap();
    assert_eq!((state.options.seed, state.epoch), (seed, epochs));
    let net = ConvNet::load(&Device::Cpu, &dir.join("model.safetensors")).unwrap();
    for (param, stored) in net.params().iter().zip(&state.weights) {
        assert!(
            param.value.to_vec(&Device::Cpu).unwrap() == *stored,
            "{}",
            param.name
        );
    }
    let csv = fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv, to_csv(&state.history));
}

#[test]
fn trainings_started_together_on_one_directory_leave_one_run() {
    for runs in [2, 5] {
        let dir = scratch(&format!("together-{runs}")).join("run");
        let seeds: Vec<u64> = (1..=runs).collect();
        let outputs = race(seeds.iter().map(|&s| new_run(&dir, s, "1")).collect());
        let winner = one_winner(&dir, &outputs);
        assert_consistent(&dir, seeds[winner], 1);
    }
}

#[test]
fn resumes_started_together_leave_one_run() {
    let dir = scratch("resumed-together").join("run");
    let output = new_run(&dir, 3, "1").output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let outputs = race(vec![resume(&dir, "2"), resume(&dir, "2")]);
    one_winner(&dir, &outputs);
    assert_consistent(&dir, 3, 2);
}

#[test]
fn a_killed_run_resumes_at_once_and_its_directory_is_taken_while_it_runs() {
    let dir = scratch("killed").join("run");
    let mut child = new_run(&dir, 4, "3").spawn().unwrap();
    let state = dir.join("training_state.safetensors");
    let start = Instant::now();
    while !state.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(start.elapsed() < Duration::from_secs(120), "no state");
        sleep(Duration::from_millis(5));
    }
    // Running: eval --out and a resume on its directory are refused, naming it.
    let holder = format!("{} is in use by process {}", dir.display(), child.id());
    let checkpoint = dir.join("model.safetensors");
    let eval = command(&[
        "eval",
        "--device",
        "cpu",
        "--data",
        data().to_str().unwrap(),
        "--test-limit",
        "10",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let resumed = resume(&dir, "3").output().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for output in [eval, resumed] {
        let err = stderr(&output);
        assert!(!output.status.success() && err.contains(&holder), "{err}");
    }
    // Killed, its id is still in the lock file, but the lock went with it.
    let id = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
    assert_eq!(id.trim(), child.id().to_string());
    let output = resume(&dir, "3").output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_consistent(&dir, 4, 3);
}

#[test]
fn the_lock_file_is_no_part_of_the_run() {
    // A directory holding only a lock file (a run that stopped before it began) is empty.
    let dir = scratch("lock-only").join("run");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(LOCK_FILE), "12345\n").unwrap();
    let output = new_run(&dir, 6, "1").output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    // A run directory written before runs were locked, without one, resumes.
    fs::remove_file(dir.join(LOCK_FILE)).unwrap();
    let output = resume(&dir, "2").output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_consistent(&dir, 6, 2);
}
