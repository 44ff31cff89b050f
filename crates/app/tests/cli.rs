//! The command line refuses bad flags and reports runtime errors as `error: ...`, exit code 1.

mod common;

use common::{data, run, scratch, stderr};

#[test]
fn zero_batch_size_is_refused() {
    let output = run(&["train", "--batch-size", "0"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("--batch-size"), "{err}");
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn unknown_device_is_refused() {
    let output = run(&["eval", "--checkpoint", "m.safetensors", "--device", "foo"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("'foo'") && err.contains("--device"), "{err}");
    assert!(err.contains("cpu") && err.contains("emulated"), "{err}");
}

#[test]
fn non_positive_learning_rate_is_refused() {
    for lr in ["--lr=0", "--lr=-0.1", "--lr=fast"] {
        let output = run(&["train", lr]);
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
    let output = run(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data,
        "--out",
        out.to_str().unwrap(),
    ]);
    // The run directory made for it is gone again: nothing was trained.
    let out_left = out.exists();
    std::fs::remove_dir_all(&empty).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
    assert!(!out_left, "{} was left behind", out.display());
}

#[test]
fn tf32_on_the_cpu_device_and_unknown_precisions_are_refused() {
    let output = run(&["train", "--device", "cpu", "--precision", "tf32"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("--precision tf32") && err.contains("fp32 only"),
        "{err}"
    );

    let output = run(&["eval", "--precision", "fp16", "--checkpoint", "x"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("fp16") && err.contains("tf32 or fp32"),
        "{err}"
    );
}

#[test]
fn epochs_near_the_top_of_u64_are_refused_before_anything_is_created() {
    let dir = scratch("epochs");
    let out = dir.join("run");
    let output = run(&[
        "train",
        "--epochs",
        "18446744073709551615",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--epochs") && err.contains("at most 1000000"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A small network of `classes` classes over 28x28 images, saved to `dir/NAME.safetensors`, with
/// `poison` written into fc1's bias.
fn small_checkpoint(
    dir: &std::path::Path,
    name: &str,
    classes: usize,
    poison: Option<f32>,
) -> String {
    let device = kernels::Device::Cpu;
    let config = nn::ConvNetConfig {
        conv1_channels: 2,
        conv2_channels: 3,
        hidden1: 8,
        hidden2: 6,
        classes,
        image_size: 28,
    };
    let mut net = nn::ConvNet::new(&device, config, 0).unwrap();
    if let Some(value) = poison {
        let bias = &mut net.params_mut()[5];
        assert_eq!(bias.name, "fc1.bias");
        device.write(&[value; 8], &mut bias.value.data).unwrap();
    }
    let path = dir.join(format!("{name}.safetensors"));
    net.save(&path).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn checkpoints_that_do_not_fit_the_data_or_hold_nan_are_refused() {
    let dir = scratch("checkpoints");
    let data = data();
    let data = data.to_str().unwrap();
    let eval = |checkpoint: &str| {
        let args = [
            "eval",
            "--device",
            "cpu",
            "--data",
            data,
            "--test-limit",
            "10",
        ];
        let mut args = args.to_vec();
        args.extend(["--checkpoint", checkpoint]);
        run(&args)
    };
    let five = small_checkpoint(&dir, "five", 5, None);
    let output = eval(&five);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&five) && err.contains("into 5 classes"),
        "{err}"
    );

    let nan = small_checkpoint(&dir, "nan", 10, Some(f32::NAN));
    let err = stderr(&eval(&nan));
    assert!(
        err.contains(&nan) && err.contains("fc1.bias holds NaN"),
        "{err}"
    );

    let good = small_checkpoint(&dir, "good", 10, None);
    let output = eval(&good);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let first = stdout.lines().next().unwrap();
    assert!(
        first.starts_with("test_loss ") && first.contains(" test_acc "),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn predict_names_images_it_cannot_read_or_find_no_digit_in() {
    let dir = scratch("predict-errors");
    let checkpoint = small_checkpoint(&dir, "good", 10, None);
    let not_image = dir.join("notes.png");
    std::fs::write(&not_image, "not an image").unwrap();
    let blank = dir.join("blank.png");
    image::GrayImage::from_pixel(40, 30, image::Luma([250]))
        .save(&blank)
        .unwrap();
    for (path, says) in [(&not_image, "not a PNG"), (&blank, "blank")] {
        let output = run(&[
            "predict",
            "--device",
            "cpu",
            "--checkpoint",
            &checkpoint,
            path.to_str().unwrap(),
        ]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains(says),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
