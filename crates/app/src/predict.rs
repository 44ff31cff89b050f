//! `handwritten predict`: one's own images, prepared as MNIST prepared its digits, through a
//! checkpoint.
//!
//! MNIST's preprocessing: grayscale; light ink on a dark background (inverted when the background
//! is light); cropped to the digit; scaled to fit 20x20 keeping the aspect ratio; placed in 28x28
//! with its centre of mass at the centre. The network then normalises as in training.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use image::imageops::{self, FilterType};
use image::io::{Limits, Reader};
use image::{DynamicImage, GrayImage, Luma};

use crate::mnist::{CLASSES, IMAGE_LEN, IMAGE_SIDE};

/// The digit's box inside the 28x28 image, as in MNIST.
const DIGIT_BOX: u32 = 20;
/// The largest image side read: bounds the decoder's memory.
const MAX_SIDE: u32 = 16_384;

/// The image at `path` (PNG, JPEG, BMP or PGM/PPM), as 28x28 MNIST-style pixels.
pub fn load_image(path: &Path) -> Result<[u8; IMAGE_LEN]> {
    let mut reader = Reader::open(path)
        .and_then(Reader::with_guessed_format)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| {
        anyhow!(
            "{}: not a PNG, JPEG, BMP or PGM image I can read: {e}",
            path.display()
        )
    })?;
    mnist_style(&grayscale(&image)).with_context(|| path.display().to_string())
}

/// Luminance, with transparent pixels taken as white paper.
fn grayscale(image: &DynamicImage) -> GrayImage {
    let rgba = image.to_rgba8();
    GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let luma = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
        let alpha = f32::from(a) / 255.0;
        Luma([(alpha * luma + (1.0 - alpha) * 255.0).round() as u8])
    })
}

/// MNIST's preprocessing of a grayscale image of one digit, any size, either polarity.
pub fn mnist_style(gray: &GrayImage) -> Result<[u8; IMAGE_LEN]> {
    let (width, height) = gray.dimensions();
    if width == 0 || height == 0 {
        bail!("the image is empty");
    }
    // The border tells the background: light paper means dark ink, to be inverted.
    let border: Vec<u8> = gray
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x == width - 1 || *y == height - 1)
        .map(|(_, _, p)| p.0[0])
        .collect();
    let background = border.iter().map(|&p| f32::from(p)).sum::<f32>() / border.len() as f32;
    let invert = background > 127.5;
    let ink_of = |p: u8| if invert { 255 - p } else { p };
    let paper = ink_of(background.round() as u8);
    // Ink above the paper, stretched to the full range.
    let ink = GrayImage::from_fn(width, height, |x, y| {
        Luma([ink_of(gray.get_pixel(x, y).0[0]).saturating_sub(paper)])
    });
    let peak = ink.pixels().map(|p| p.0[0]).max().unwrap_or(0);
    if peak < 32 {
        bail!("no digit found: the image is blank");
    }
    // Crop to the pixels with a quarter of the peak's ink or more: faint noise stays out.
    let threshold = peak / 4;
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for (x, y, p) in ink.enumerate_pixels() {
        if p.0[0] >= threshold {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    let cropped = imageops::crop_imm(&ink, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    let scale = 255.0 / f32::from(peak);
    let cropped = GrayImage::from_fn(cropped.width(), cropped.height(), |x, y| {
        Luma([(f32::from(cropped.get_pixel(x, y).0[0]) * scale).min(255.0) as u8])
    });
    // Longer side to 20 pixels; the filter averages over the source pixels each one covers.
    let (cw, ch) = cropped.dimensions();
    let fit = f64::from(DIGIT_BOX) / f64::from(cw.max(ch));
    let (w, h) = (
        ((f64::from(cw) * fit).round() as u32).clamp(1, DIGIT_BOX),
        ((f64::from(ch) * fit).round() as u32).clamp(1, DIGIT_BOX),
    );
    let digit = imageops::resize(&cropped, w, h, FilterType::Triangle);
    // Place the box so that its centre of mass falls on the image's centre, within the image.
    let (mut mass, mut mx, mut my) = (0.0, 0.0, 0.0);
    for (x, y, p) in digit.enumerate_pixels() {
        let v = f64::from(p.0[0]);
        mass += v;
        mx += v * (f64::from(x) + 0.5);
        my += v * (f64::from(y) + 0.5);
    }
    if mass == 0.0 {
        bail!("no digit found: the image is blank");
    }
    let side = IMAGE_SIDE as u32;
    let place = |centre: f64, len: u32| {
        ((side as f64 / 2.0 - centre / mass).round() as i64).clamp(0, i64::from(side - len)) as u32
    };
    let (left, top) = (place(mx, w), place(my, h));
    let mut pixels = [0u8; IMAGE_LEN];
    for (x, y, p) in digit.enumerate_pixels() {
        pixels[((top + y) * side + left + x) as usize] = p.0[0];
    }
    Ok(pixels)
}

/// The three likeliest classes of `probabilities`, likeliest first.
pub fn top3(probabilities: &[f32; CLASSES]) -> [(usize, f32); 3] {
    let mut classes: Vec<usize> = (0..CLASSES).collect();
    classes.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    [0, 1, 2].map(|i| (classes[i], probabilities[classes[i]]))
}

/// `PATH: DIGIT (c1 p1, c2 p2, c3 p3)`.
pub fn text_line(path: &Path, probabilities: &[f32; CLASSES]) -> String {
    let top = top3(probabilities);
    let ranked: Vec<String> = top.iter().map(|(c, p)| format!("{c} {p:.6}")).collect();
    format!("{}: {} ({})", path.display(), top[0].0, ranked.join(", "))
}

/// `{"path": ..., "digit": ..., "top": [{"class": c, "probability": p}, ...]}`.
pub fn json_line(path: &Path, probabilities: &[f32; CLASSES]) -> String {
    let top = top3(probabilities);
    let ranked: Vec<String> = top
        .iter()
        .map(|(c, p)| format!("{{\"class\": {c}, \"probability\": {p:.6}}}"))
        .collect();
    format!(
        "{{\"path\": {}, \"digit\": {}, \"top\": [{}]}}",
        json_string(&path.display().to_string()),
        top[0].0,
        ranked.join(", ")
    )
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> [f32; CLASSES] {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out = [0.0; CLASSES];
    let mut sum = 0.0;
    for (o, &z) in out.iter_mut().zip(logits) {
        *o = (z - max).exp();
        sum += *o;
    }
    out.map(|v| v / sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dark stroke on light paper, off-centre in a large image.
    fn bar_on_paper() -> GrayImage {
        GrayImage::from_fn(200, 120, |x, y| {
            Luma([if (30..40).contains(&x) && (20..100).contains(&y) {
                10
            } else {
                240
            }])
        })
    }

    #[test]
    fn dark_on_light_is_inverted_fitted_and_centred() {
        let pixels = mnist_style(&bar_on_paper()).unwrap();
        let at = |x: usize, y: usize| pixels[y * IMAGE_SIDE + x];
        // 80 tall, 10 wide: 20 tall, 3 wide (rounded), centred on 14.
        let rows: Vec<usize> = (0..IMAGE_SIDE).filter(|&y| at(14, y) > 128).collect();
        assert_eq!(rows.len(), 20, "{rows:?}");
        assert_eq!((rows[0], rows[19]), (4, 23));
        assert_eq!(at(0, 0), 0);
        let ink: usize = pixels.iter().filter(|&&p| p > 128).count();
        assert!((40..=80).contains(&ink), "{ink}");
    }

    #[test]
    fn blank_images_are_refused() {
        let err = mnist_style(&GrayImage::from_pixel(50, 50, Luma([255]))).unwrap_err();
        assert!(err.to_string().contains("blank"), "{err}");
    }

    #[test]
    fn top_three_and_json() {
        let mut p = [0.0; CLASSES];
        (p[7], p[1], p[9], p[0]) = (0.9, 0.05, 0.03, 0.02);
        assert_eq!(top3(&p).map(|(c, _)| c), [7, 1, 9]);
        let path = Path::new("a \"b\".png");
        assert!(text_line(path, &p).starts_with("a \"b\".png: 7 (7 0.900000, 1 0.050000"));
        let json = json_line(path, &p);
        assert!(
            json.starts_with("{\"path\": \"a \\\"b\\\".png\", \"digit\": 7"),
            "{json}"
        );
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[9] > 0.999);
    }
}
