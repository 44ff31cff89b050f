//! `handwritten predict` on images made from MNIST test digits as people make theirs: larger,
//! dark ink on light paper, off-centre, in every format it reads.

use std::fs;
use std::path::Path;

use app::mnist::{Split, IMAGE_SIDE};
use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};

mod common;

use common::handwritten;

const DIGITS: usize = 40;

#[test]
fn digits_drawn_dark_on_light_off_centre_are_recognised() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("predict");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let run = dir.join("run");
    handwritten(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--train-limit",
        "6000",
        "--test-limit",
        "100",
    ]);

    // Test digits the network never trained on, each 4x larger, inverted onto light-grey paper
    // at a different off-centre place of a 200x150 page, saved as PNG, JPEG, BMP or PGM.
    let test = Split::test(&data, Some(DIGITS)).unwrap();
    let side = IMAGE_SIDE as u32;
    let mut paths = Vec::new();
    for (i, (pixels, &label)) in test
        .images
        .chunks(side as usize * side as usize)
        .zip(&test.labels)
        .enumerate()
    {
        let digit = GrayImage::from_fn(side, side, |x, y| Luma([pixels[(y * side + x) as usize]]));
        let large = imageops::resize(&digit, side * 4, side * 4, FilterType::Triangle);
        let mut page = GrayImage::from_pixel(200, 150, Luma([230]));
        let (left, top) = (5 + (i as i64 * 17) % 80, 3 + (i as i64 * 11) % 35);
        for (x, y, p) in large.enumerate_pixels() {
            let ink = f32::from(p.0[0]) / 255.0;
            let paper = 230.0 * (1.0 - ink) + 20.0 * ink;
            page.put_pixel(x + left as u32, y + top as u32, Luma([paper as u8]));
        }
        let ext = ["png", "jpg", "bmp", "pgm"][i % 4];
        let path = dir.join(format!("digit{i}-label{label}.{ext}"));
        page.save(&path).unwrap();
        paths.push((path.to_str().unwrap().to_string(), label));
    }
    let checkpoint = run.join("model.safetensors");
    let mut args = vec![
        "predict",
        "--device",
        "cpu",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ];
    args.extend(paths.iter().map(|(p, _)| p.as_str()));
    let stdout = handwritten(&args);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), DIGITS, "{stdout}");
    let mut right = 0;
    for (line, (path, label)) in lines.iter().zip(&paths) {
        let rest = line
            .strip_prefix(&format!("{path}: "))
            .unwrap_or_else(|| panic!("{line}"));
        let digit: u8 = rest[..1].parse().unwrap();
        // Three classes with probabilities follow, likeliest first.
        assert_eq!(rest[1..].matches(", ").count(), 2, "{line}");
        right += usize::from(digit == *label);
    }
    assert!(
        right * 100 >= DIGITS * 85,
        "{right} of {DIGITS} right:\n{stdout}"
    );

    args.insert(1, "--json");
    let json = handwritten(&args);
    let first = json.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("{{\"path\": \"{}\", \"digit\": ", paths[0].0)),
        "{first}"
    );
    assert!(first.contains("\"top\": [{\"class\": "), "{first}");
    fs::remove_dir_all(&dir).unwrap();
}
