//! A short training run on real MNIST images, on the cpu device, through the binary: the loss
//! falls, the run directory fills, and `eval` reads the checkpoint back to the same test figures.

use std::fs;
use std::path::Path;

mod common;

use common::handwritten;

const TRAIN_IMAGES: &str = "512";
const TEST_IMAGES: &str = "500";
const EPOCHS: usize = 3;

/// The number after the word `name` in `line`.
fn field(line: &str, name: &str) -> f64 {
    let words: Vec<&str> = line
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    let at = words.iter().position(|&w| w == name);
    let number = at.and_then(|at| words.get(at + 1)?.parse().ok());
    number.unwrap_or_else(|| panic!("no number after {name} in {line:?}"))
}

#[test]
fn short_run_learns_and_its_checkpoint_evaluates_the_same() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let out = std::env::temp_dir().join(format!("handwritten-run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    let epochs = EPOCHS.to_string();
    let (data, out_str) = (data.to_str().unwrap(), out.to_str().unwrap());
    let stdout = handwritten(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data,
        "--out",
        out_str,
        "--epochs",
        &epochs,
        "--train-limit",
        TRAIN_IMAGES,
        "--test-limit",
        TEST_IMAGES,
        "--seed",
        "7",
    ]);

    let csv = fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_second"
    );
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|row| row.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), EPOCHS);

    // Per epoch, the reference's two lines, six decimals as metrics.csv, and a speed line.
    let lines: Vec<&str> = stdout.lines().collect();
    for (epoch, row) in (1..=EPOCHS).zip(&rows) {
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("epoch {epoch}, train_loss ")))
            .unwrap_or_else(|| panic!("no line for epoch {epoch} in:\n{stdout}"));
        let (train_line, test_line) = (lines[at], lines[at + 1]);
        assert!(train_line.contains(", train_acc "), "{stdout}");
        assert!(test_line.starts_with("test_loss ") && test_line.contains(" , test_acc "));
        assert!(lines[at + 2].starts_with("seconds "), "{stdout}");
        for word in train_line
            .split([' ', ','])
            .chain(test_line.split([' ', ',']))
        {
            if word.contains('.') {
                assert_eq!(word.split('.').nth(1).unwrap().len(), 6, "{stdout}");
            }
        }
        let close = |printed: f64, stored: f64| (printed - stored).abs() < 1e-9;
        assert!(
            close(field(train_line, "train_loss"), row[1]),
            "{stdout}\n{csv}"
        );
        assert!(
            close(field(train_line, "train_acc"), row[2]),
            "{stdout}\n{csv}"
        );
        assert!(
            close(field(test_line, "test_loss"), row[3]),
            "{stdout}\n{csv}"
        );
        assert!(
            close(field(test_line, "test_acc"), row[4]),
            "{stdout}\n{csv}"
        );
    }
    let (first, last) = (&rows[0], &rows[EPOCHS - 1]);
    assert!(last[1] < first[1], "train loss did not fall:\n{csv}");
    assert!(last[3] < first[3], "test loss did not fall:\n{csv}");
    assert!(last[4] > 0.5, "test accuracy after {EPOCHS} epochs:\n{csv}");

    for plot in ["Loss.png", "Acc.png"] {
        let png = fs::read(out.join(plot)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}");
    }
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let checkpoint = out.join("model.safetensors");
    let eval_out = out.join("eval");
    let eval_line = handwritten(&[
        "eval",
        "--device",
        "cpu",
        "--data",
        data,
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--test-limit",
        TEST_IMAGES,
        "--out",
        eval_out.to_str().unwrap(),
    ]);
    // The same model on the same images: the last epoch's test figures.
    assert!(
        (field(&eval_line, "test_loss") - last[3]).abs() < 1e-4,
        "{eval_line} vs\n{csv}"
    );
    assert!(
        (field(&eval_line, "test_acc") - last[4]).abs() < 1e-4,
        "{eval_line} vs\n{csv}"
    );
    // Accuracy per class over the same images, and the confusion matrix drawn.
    let class_rows: Vec<Vec<f64>> = eval_line
        .lines()
        .skip_while(|l| !l.starts_with("class "))
        .skip(1)
        .take(10)
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(class_rows.len(), 10, "{eval_line}");
    let images: f64 = class_rows.iter().map(|r| r[1]).sum();
    let correct: f64 = class_rows.iter().map(|r| r[2]).sum();
    assert_eq!(images, TEST_IMAGES.parse::<f64>().unwrap(), "{eval_line}");
    assert!((correct / images - last[4]).abs() < 1e-9, "{eval_line}");
    assert!(eval_line.contains("confusion matrix"), "{eval_line}");
    let png = fs::read(eval_out.join("confusion.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    fs::remove_dir_all(&out).unwrap();
}

/// metrics.csv without its timing columns (seconds, images_per_second), which no two runs share.
fn metrics_without_timing(dir: &Path) -> Vec<String> {
    let csv = fs::read_to_string(dir.join("metrics.csv")).unwrap();
    csv.lines()
        .map(|row| row.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect()
}

/// Two runs on the kernels with the same seed write the same bytes: no sum depends on the order
/// in which blocks or threads finish. One runs eagerly and one replays graphs, which must not
/// change a bit either.
#[test]
fn two_runs_with_the_same_seed_write_identical_checkpoints_and_metrics() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let dirs: Vec<_> = ["graph", "eager"]
        .iter()
        .map(|run| {
            let out = std::env::temp_dir()
                .join(format!("handwritten-repro-{run}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&out);
            let mut args = vec![
                "train",
                "--device",
                "emulated",
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--epochs",
                "2",
                "--batch-size",
                "32",
                "--train-limit",
                "48",
                "--test-limit",
                "16",
                "--seed",
                "11",
            ];
            if *run == "eager" {
                args.push("--no-graph");
            }
            let stdout = handwritten(&args);
            assert!(stdout.contains("precision tf32"), "{stdout}");
            out
        })
        .collect();
    let checkpoints: Vec<Vec<u8>> = dirs
        .iter()
        .map(|d| fs::read(d.join("model.safetensors")).unwrap())
        .collect();
    assert!(checkpoints[0] == checkpoints[1], "checkpoints differ");
    assert_eq!(
        metrics_without_timing(&dirs[0]),
        metrics_without_timing(&dirs[1])
    );
    // The run's metadata records the precision it computed in.
    let state = app::state::TrainingState::load(&dirs[0].join(app::state::STATE_FILE)).unwrap();
    assert_eq!(state.options.device, "emulated");
    assert_eq!(state.options.precision, Some(kernels::Precision::Tf32));
    for dir in dirs {
        fs::remove_dir_all(dir).unwrap();
    }
}
