//! `handwritten predict` on MNIST test digits drawn as people's images are: larger, on paper of
//! any grey in any ink, off-centre, under uneven light, blurred or noisy, in every format it
//! reads; and on images that hold no digit or cannot be read.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use app::mnist::{Split, IMAGE_LEN, IMAGE_SIDE};
use app::predict::{prepare_bytes, prepare_file, ImageProblem, Limit, NoDigit};
use app::train::{argmax, classify, load_checkpoint, open_device};
use image::codecs::pnm::{PnmSubtype, SampleEncoding};
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, ImageOutputFormat, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;

use common::{data, run, scratch, stderr, train_small_network};

/// Digits drawn for the accuracy comparison.
const RENDERED: usize = 1000;

/// A network trained here for one epoch on 6,000 images, shared by this file's tests.
fn checkpoint() -> &'static Path {
    static CHECKPOINT: OnceLock<PathBuf> = OnceLock::new();
    CHECKPOINT.get_or_init(|| train_small_network(&scratch("run")))
}

/// The file formats a rendering is saved in, in turn.
const FORMATS: [&str; 5] = ["png-gray", "png-rgb", "pgm", "bmp", "jpeg"];

/// One MNIST digit (28x28, white on black) drawn as a person's image might be, and encoded in
/// `FORMATS[format]`.
fn render(digit: &[u8], format: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let side = IMAGE_SIDE as u32;
    let original = GrayImage::from_fn(side, side, |x, y| Luma([digit[(y * side + x) as usize]]));
    // 2x to 6x larger, smoothed by one of two resampling filters.
    let large_side = (side as f32 * rng.random_range(2.0..6.0)).round() as u32;
    let filter = [FilterType::Triangle, FilterType::CatmullRom][rng.random_range(0..2)];
    let coverage = imageops::resize(&original, large_side, large_side, filter);
    // A page up to 2.5 times the digit's size, the digit anywhere on it.
    let (width, height) = (
        large_side + rng.random_range(large_side / 4..=large_side * 3 / 2),
        large_side + rng.random_range(large_side / 4..=large_side * 3 / 2),
    );
    let (left, top) = (
        rng.random_range(0..=width - large_side),
        rng.random_range(0..=height - large_side),
    );
    // Dark ink on light paper, or one time in five light ink on dark; the ink any colour whose
    // brightness differs from the paper's by 0.4 or more.
    let dark_ink = rng.random_range(0..5) != 0;
    let paper = if dark_ink {
        rng.random_range(0.55..1.0)
    } else {
        rng.random_range(0.0..0.35)
    };
    let luma = |c: [f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    let ink = loop {
        let colour: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..1.0));
        let gap = luma(colour) - paper;
        if (dark_ink && gap <= -0.4) || (!dark_ink && gap >= 0.4) {
            break colour;
        }
    };
    // One page in three under light falling off across it, by 15% to 40%.
    let light = (rng.random_range(0..3) == 0).then(|| {
        let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        (angle.cos(), angle.sin(), rng.random_range(0.15..0.4))
    });
    let mut page = RgbImage::from_fn(width, height, |x, y| {
        let c = if (left..left + large_side).contains(&x) && (top..top + large_side).contains(&y) {
            f32::from(coverage.get_pixel(x - left, y - top).0[0]) / 255.0
        } else {
            0.0
        };
        let lit = light.map_or(1.0, |(dx, dy, depth)| {
            let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
            1.0 - depth * ((u - 0.5) * dx + (v - 0.5) * dy + 0.71) / 1.42
        });
        Rgb(std::array::from_fn(|k| {
            ((paper * (1.0 - c) + ink[k] * c) * lit * 255.0).round() as u8
        }))
    });
    // One in three blurred a little, one in three with noise.
    if rng.random_range(0..3) == 0 {
        page = imageops::blur(&page, rng.random_range(0.6..1.5));
    }
    if rng.random_range(0..3) == 0 {
        let sigma = rng.random_range(2.0..6.0);
        for p in page.pixels_mut() {
            for channel in &mut p.0 {
                // The sum of three uniforms, near enough a normal distribution.
                let n: f32 = (0..3).map(|_| rng.random_range(-1.0..1.0)).sum::<f32>();
                *channel = (f32::from(*channel) + n * sigma).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    let rgb = DynamicImage::ImageRgb8(page);
    let gray = || DynamicImage::ImageLuma8(rgb.to_luma8());
    let mut bytes = Cursor::new(Vec::new());
    match FORMATS[format] {
        "png-gray" => gray().write_to(&mut bytes, ImageOutputFormat::Png),
        "png-rgb" => rgb.write_to(&mut bytes, ImageOutputFormat::Png),
        "pgm" => gray().write_to(
            &mut bytes,
            ImageOutputFormat::Pnm(PnmSubtype::Graymap(SampleEncoding::Binary)),
        ),
        "bmp" => rgb.write_to(&mut bytes, ImageOutputFormat::Bmp),
        _ => rgb.write_to(
            &mut bytes,
            ImageOutputFormat::Jpeg(rng.random_range(75..=92)),
        ),
    }
    .unwrap();
    bytes.into_inner()
}

#[test]
fn renderings_are_classified_as_well_as_the_original_digits() {
    let test = Split::test(&data(), Some(RENDERED)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let mut prepared = Vec::with_capacity(RENDERED * IMAGE_LEN);
    let mut refused = Vec::new();
    for (i, digit) in test.images.chunks(IMAGE_LEN).enumerate() {
        let bytes = render(digit, i % FORMATS.len(), &mut rng);
        match prepare_bytes(&bytes) {
            Ok(pixels) => prepared.extend_from_slice(&pixels),
            Err(problem) => {
                refused.push(format!("digit {i} ({}): {problem}", FORMATS[i % 5]));
                prepared.extend_from_slice(&[0; IMAGE_LEN]);
            }
        }
    }
    let device = open_device("cpu").unwrap();
    let right = |images: &[u8]| -> Vec<bool> {
        let net = load_checkpoint(&device, checkpoint()).unwrap();
        classify(net, images)
            .unwrap()
            .iter()
            .zip(&test.labels)
            .map(|(p, &label)| argmax(p) == label)
            .collect()
    };
    let (originals, renderings) = (right(&test.images), right(&prepared));
    let count = |right: &[bool]| right.iter().filter(|&&r| r).count();
    let by_format: Vec<String> = (0..FORMATS.len())
        .map(|f| {
            let (o, r): (Vec<bool>, Vec<bool>) = (f..RENDERED)
                .step_by(FORMATS.len())
                .map(|i| (originals[i], renderings[i]))
                .unzip();
            format!("{} {} vs {}", FORMATS[f], count(&r), count(&o))
        })
        .collect();
    let summary = format!(
        "{RENDERED} MNIST test digits: {} right as renderings, {} as the originals ({}); \
         refused: {refused:?}",
        count(&renderings),
        count(&originals),
        by_format.join(", ")
    );
    println!("{summary}");
    assert!(
        count(&renderings) * 100 + RENDERED >= count(&originals) * 100,
        "more than a point below the originals: {summary}"
    );
}

/// A page of `width` x `height` white pixels with `ink` pixels black, as a PNG.
fn page_with(width: u32, height: u32, ink: impl Fn(u32, u32) -> bool) -> Vec<u8> {
    let page = GrayImage::from_fn(width, height, |x, y| {
        Luma([if ink(x, y) { 0 } else { 255 }])
    });
    let mut bytes = Cursor::new(Vec::new());
    DynamicImage::ImageLuma8(page)
        .write_to(&mut bytes, ImageOutputFormat::Png)
        .unwrap();
    bytes.into_inner()
}

fn no_digit(bytes: &[u8]) -> NoDigit {
    match prepare_bytes(bytes) {
        Err(ImageProblem::NoDigit(why)) => why,
        other => panic!("expected no digit, got {other:?}"),
    }
}

#[test]
fn a_dot_a_speck_and_a_hairline_are_no_digit() {
    // One black pixel on a 50x50 white page.
    let speck = no_digit(&page_with(50, 50, |x, y| (x, y) == (20, 30)));
    assert_eq!(speck, NoDigit::TooSmall { side: 1, least: 8 });
    // A round dot 6 pixels across on a 200x200 page.
    let dot = no_digit(&page_with(200, 200, |x, y| {
        (x as i32 - 90).pow(2) + (y as i32 - 120).pow(2) <= 9
    }));
    assert!(matches!(dot, NoDigit::TooSmall { .. }), "{dot:?}");
    // A line one pixel wide, 60 long: scaled to 20 pixels, a third of a pixel wide.
    let line = no_digit(&page_with(100, 100, |x, y| {
        x == 40 && (20..80).contains(&y)
    }));
    assert!(matches!(line, NoDigit::TooThin { .. }), "{line:?}");
    // Grey on slightly lighter grey.
    let faint = GrayImage::from_fn(60, 60, |x, y| {
        Luma([if (20..40).contains(&x) && (10..50).contains(&y) {
            200
        } else {
            215
        }])
    });
    let mut bytes = Cursor::new(Vec::new());
    DynamicImage::ImageLuma8(faint)
        .write_to(&mut bytes, ImageOutputFormat::Png)
        .unwrap();
    let faint = no_digit(&bytes.into_inner());
    assert!(matches!(faint, NoDigit::TooFaint { .. }), "{faint:?}");
    assert_eq!(
        no_digit(&page_with(50, 50, |_, _| false)),
        NoDigit::Blank,
        "a white page"
    );
    // Against each rule, a digit that passes it: a bar 12 pixels tall, 3 wide.
    prepare_bytes(&page_with(50, 50, |x, y| {
        (20..23).contains(&x) && (10..22).contains(&y)
    }))
    .unwrap();
}

#[test]
fn each_image_problem_says_what_is_wrong() {
    let message = |bytes: &[u8]| prepare_bytes(bytes).unwrap_err().to_string();
    let too_wide = message(b"P5\n16385 1\n255\n");
    assert_eq!(
        too_wide,
        "the image is too large: 16385x1 pixels, sides over 16384 pixels are refused"
    );
    let too_many = message(b"P5\n8000 6000\n255\n");
    assert!(
        too_many.contains("8000x6000 pixels, images over 40000000 pixels are refused"),
        "{too_many}"
    );
    let digit = page_with(60, 60, |x, y| {
        (20..30).contains(&x) && (10..50).contains(&y)
    });
    prepare_bytes(&digit).unwrap();
    assert_eq!(
        message(&digit[..digit.len() / 2]),
        "the PNG data ends early: the file is truncated"
    );
    let mut jpeg = Cursor::new(Vec::new());
    image::load_from_memory(&digit)
        .unwrap()
        .write_to(&mut jpeg, ImageOutputFormat::Jpeg(90))
        .unwrap();
    let jpeg = jpeg.into_inner();
    prepare_bytes(&jpeg).unwrap();
    assert_eq!(
        message(&jpeg[..jpeg.len() / 2]),
        "the JPEG data ends early: the file is truncated"
    );
    let mut bmp = Cursor::new(Vec::new());
    image::load_from_memory(&digit)
        .unwrap()
        .write_to(&mut bmp, ImageOutputFormat::Bmp)
        .unwrap();
    let bmp = bmp.into_inner();
    assert_eq!(
        message(&bmp[..bmp.len() / 2]),
        "the BMP data ends early: the file is truncated"
    );
    let pgm = b"P5\n4 4\n255\n\x00\x01";
    assert_eq!(
        message(pgm),
        "the PNM data ends early: the file is truncated"
    );
    // A PNG whole to its end, one byte of its image data changed: its checksum fails.
    let mut corrupt = digit.clone();
    let idat = corrupt.windows(4).position(|w| w == b"IDAT").unwrap();
    corrupt[idat + 8] ^= 0xff;
    let malformed = message(&corrupt);
    assert!(malformed.starts_with("malformed PNG data: "), "{malformed}");
    assert_eq!(
        message(b"GIF89a\x01\x00\x01\x00"),
        "unsupported format: a GIF image; predict reads PNG, JPEG, BMP and PGM/PPM"
    );
    assert_eq!(
        message(b"hello, world"),
        "unsupported format: not a PNG, JPEG, BMP or PGM/PPM image (its first bytes match \
         none of them)"
    );
    assert_eq!(
        message(&page_with(50, 50, |x, y| (x, y) == (3, 4))),
        "no digit found: the ink is too small: 1 pixel across, the least is 8"
    );
    let dir = scratch("problems");
    let missing = prepare_file(&dir.join("missing.png")).unwrap_err();
    assert!(
        missing.to_string().starts_with("cannot read the file: "),
        "{missing}"
    );
    // A sparse file over the size limit: refused before it is read.
    let huge = dir.join("huge.png");
    fs::File::create(&huge)
        .unwrap()
        .set_len((256 << 20) + 1)
        .unwrap();
    let err = prepare_file(&huge).unwrap_err();
    assert!(
        matches!(err, ImageProblem::TooLarge(Limit::FileBytes(n)) if n == (256 << 20) + 1),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("the file is too large: "),
        "{err}"
    );
}

#[test]
fn predict_goes_on_past_images_it_cannot_read() {
    let dir = scratch("cli");
    let test = Split::test(&data(), Some(FORMATS.len())).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let mut good = Vec::new();
    for (i, digit) in test.images.chunks(IMAGE_LEN).enumerate() {
        let ext = ["png", "png", "pgm", "bmp", "jpg"][i];
        let path = dir.join(format!("digit{i}.{ext}"));
        fs::write(&path, render(digit, i, &mut rng)).unwrap();
        good.push(path.to_str().unwrap().to_string());
    }
    let blank = dir.join("blank.png");
    fs::write(&blank, page_with(50, 50, |_, _| false)).unwrap();
    let text = dir.join("notes.png");
    fs::write(&text, "not an image").unwrap();
    let missing = dir.join("missing.png");
    let bad = [&blank, &text, &missing].map(|p| p.to_str().unwrap().to_string());
    // Bad images between the good ones.
    let mut images: Vec<&str> = good.iter().map(String::as_str).collect();
    for (i, b) in bad.iter().enumerate() {
        images.insert(2 * i + 1, b);
    }
    let checkpoint = checkpoint().to_str().unwrap();
    let mut args = vec!["predict", "--device", "cpu", "--checkpoint", checkpoint];
    args.extend(&images);
    let output = run(&args);
    assert!(!output.status.success());
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), good.len(), "{stdout}");
    for (line, path) in lines.iter().zip(&good) {
        let rest = line.strip_prefix(&format!("{path}: ")).expect(line);
        // The digit, then three classes with probabilities, likeliest first.
        assert!(rest.as_bytes()[0].is_ascii_digit(), "{line}");
        assert_eq!(rest.matches(", ").count(), 2, "{line}");
    }
    let errors = stderr(&output);
    let expected = [
        format!("error: {}: no digit found: the image is blank", bad[0]),
        format!("error: {}: unsupported format: not a PNG", bad[1]),
        format!("error: {}: cannot read the file: ", bad[2]),
        "error: 3 of 8 images could not be predicted".to_string(),
    ];
    let error_lines: Vec<&str> = errors.lines().collect();
    assert_eq!(error_lines.len(), expected.len(), "{errors}");
    for (line, expected) in error_lines.iter().zip(&expected) {
        assert!(line.starts_with(expected.as_str()), "{line}");
    }

    args.insert(1, "--json");
    let output = run(&args);
    assert!(!output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), images.len(), "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{{\"path\": \"{}\", \"digit\": ", good[0])),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("\"top\": [{\"class\": "), "{}", lines[0]);
    assert_eq!(
        lines[1],
        format!(
            "{{\"path\": \"{}\", \"error\": \"no digit found: the image is blank\"}}",
            bad[0]
        )
    );
}

/// Every format's file cut short at many lengths and with bytes changed: each is an error or a
/// prediction, never a panic.
#[test]
fn damaged_files_are_errors_not_panics() {
    let test = Split::test(&data(), Some(FORMATS.len())).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (format, digit) in test.images.chunks(IMAGE_LEN).enumerate() {
        let file = render(digit, format, &mut rng);
        for _ in 0..40 {
            let cut = rng.random_range(0..file.len());
            let _ = prepare_bytes(&file[..cut]);
            let mut changed = file.clone();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..changed.len());
                changed[at] = rng.random();
            }
            let _ = prepare_bytes(&changed);
        }
    }
}
