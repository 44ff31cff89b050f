//! `handwritten inspect`: every picture written, of the right size, showing something, the
//! input as predict prepares it; and `--out` checked before any work.

use std::path::{Path, PathBuf};

use app::inspect::PICTURES;
use app::predict::prepare_file;
use image::{GrayImage, Luma, RgbImage};
use kernels::Device;
use nn::{ConvNet, ConvNetConfig};

mod common;

use common::{run, scratch, stderr};

/// An untrained reference network and an image of a bar, in a fresh directory.
fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let checkpoint = dir.join("model.safetensors");
    ConvNet::new(&Device::Cpu, ConvNetConfig::reference(), 2)
        .unwrap()
        .save(&checkpoint)
        .unwrap();
    let image = dir.join("bar.png");
    GrayImage::from_fn(90, 90, |x, y| {
        let ink = (30..42).contains(&x) && (10..80).contains(&y) || (42..60).contains(&x) && y < 22;
        Luma([if ink { 20 } else { 230 }])
    })
    .save(&image)
    .unwrap();
    (dir, checkpoint, image)
}

fn inspect(checkpoint: &Path, image: &Path, out: &Path) -> std::process::Output {
    run(&[
        "inspect",
        "--device",
        "cpu",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        image.to_str().unwrap(),
    ])
}

fn picture(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

#[test]
fn every_picture_is_written_and_shows_its_layer() {
    let (dir, checkpoint, image) = setup("pictures");
    let out = dir.join("pictures");
    let output = inspect(&checkpoint, &image, &out);
    assert!(output.status.success(), "{}", stderr(&output));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.starts_with(&format!("{}: ", image.display())),
        "{said}"
    );

    // Each map or cell a square of pixels, one pixel apart.
    for (name, size) in [
        ("input.png", (280, 280)),
        ("conv1_filters.png", (8 * 49 - 1, 4 * 49 - 1)),
        ("conv1_pooled.png", (8 * 113 - 1, 4 * 113 - 1)),
        ("conv2_pooled.png", (8 * 57 - 1, 8 * 57 - 1)),
        ("fc1.png", (64 * 8, 16 * 8)),
        ("fc2.png", (64 * 8, 8 * 8)),
        ("logits.png", (10 * 32, 32)),
        ("probabilities.png", (640, 360)),
    ] {
        let picture = picture(&out.join(name));
        assert_eq!(picture.dimensions(), size, "{name}");
        let first = picture.get_pixel(0, 0);
        assert!(picture.pixels().any(|p| p != first), "{name} is uniform");
    }
    assert_eq!(PICTURES.len(), 8);

    // The input picture is predict's 28x28 input, each pixel 10x10.
    let prepared = prepare_file(&image).unwrap();
    let input = picture(&out.join("input.png"));
    for (i, &p) in prepared.iter().enumerate() {
        let (x, y) = ((i % 28) as u32 * 10 + 5, (i / 28) as u32 * 10 + 5);
        let shown = input.get_pixel(x, y).0[0];
        assert!(
            shown.abs_diff(p) <= 1,
            "pixel {i}: shown {shown}, prepared {p}"
        );
    }
}

#[test]
fn out_is_checked_before_any_work() {
    let (dir, checkpoint, image) = setup("out-checked");
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let output = inspect(&checkpoint, &image, &file);
    assert!(!output.status.success());
    let said = stderr(&output);
    assert!(
        said.contains("a-file") && said.contains("directory"),
        "{said}"
    );

    // The directory is checked first: even a missing checkpoint is not reached.
    let output = inspect(&dir.join("missing.safetensors"), &image, &file);
    assert!(stderr(&output).contains("a-file"), "{}", stderr(&output));

    let output = inspect(&checkpoint, &dir.join("missing.png"), &dir.join("out"));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("missing.png"),
        "{}",
        stderr(&output)
    );
}
