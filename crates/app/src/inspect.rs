//! `handwritten inspect`: what every layer makes of one image, as PNG files: the prepared input,
//! conv1's filters, each layer's activations (grids of maps, strips of cells for vectors) and the
//! probabilities as a bar chart. The same pictures as the page of `handwritten serve`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use nn::{normalized_images, HostTensor};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::mnist::{CLASSES, IMAGE_SIDE};
use crate::plot::FONT;
use crate::predict::{prepare_file, softmax, text_line};
use crate::run_dir::LockedDir;
use crate::train::{load_checkpoint, open_device, resolve_precision};

pub struct InspectOptions {
    pub checkpoint: PathBuf,
    pub image: PathBuf,
    pub out: PathBuf,
    pub device: String,
}

/// Writes the pictures into `options.out` and returns the prediction's line, as predict prints.
pub fn inspect(options: &InspectOptions) -> Result<String> {
    // Checked and locked before any work, as `eval --out` is: one process writes it at a time.
    let locked = LockedDir::open("--out", &options.out, false)?;
    let device = open_device(&options.device)?;
    let mut net = load_checkpoint(&device, &options.checkpoint)?;
    net.set_precision(resolve_precision(&device, None)?);
    let pixels = prepare_file(&options.image)
        .map_err(|problem| anyhow!("{}: {problem}", options.image.display()))?;
    let x = normalized_images(&device, &pixels, IMAGE_SIDE)?;
    let trace = net.forward_traced(&x)?;
    let filters = net.conv1_filters()?;
    let probabilities = softmax(&trace.logits.values);

    let out = &options.out;
    let input = &trace.input;
    save(
        out,
        "input.png",
        &grid(input, 1, 10, |v| grey((v + 1.0) / 2.0)),
    )?;
    let limit = filters.values.iter().fold(0f32, |m, &v| m.max(v.abs()));
    save(
        out,
        "conv1_filters.png",
        &grid(&filters, 8, 16, |v| diverging(v, limit)),
    )?;
    for (name, layer, columns) in [
        ("conv1_pooled.png", &trace.conv1_pooled, 8),
        ("conv2_pooled.png", &trace.conv2_pooled, 8),
    ] {
        let peak = peak(layer);
        save(out, name, &grid(layer, columns, 8, |v| heat(v / peak)))?;
    }
    for (name, layer) in [("fc1.png", &trace.fc1), ("fc2.png", &trace.fc2)] {
        let peak = peak(layer);
        save(out, name, &strip(&layer.values, 64, 8, |v| heat(v / peak)))?;
    }
    let limit = trace
        .logits
        .values
        .iter()
        .fold(0f32, |m, &v| m.max(v.abs()));
    let logits = strip(&trace.logits.values, CLASSES, 32, |v| diverging(v, limit));
    save(out, "logits.png", &logits)?;
    bar_chart(&out.join("probabilities.png"), &probabilities)?;
    locked.keep();
    Ok(text_line(&options.image, &probabilities))
}

/// The pictures' names, in the order they are written.
pub const PICTURES: [&str; 8] = [
    "input.png",
    "conv1_filters.png",
    "conv1_pooled.png",
    "conv2_pooled.png",
    "fc1.png",
    "fc2.png",
    "logits.png",
    "probabilities.png",
];

/// `--out DIR` must be a directory (made if missing) that can be written, before any work.
fn save(dir: &Path, name: &str, picture: &RgbImage) -> Result<()> {
    let path = dir.join(name);
    picture
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))
}

/// The largest value of a layer after ReLU, never 0 (an all-zero layer draws dark).
fn peak(layer: &HostTensor) -> f32 {
    layer
        .values
        .iter()
        .fold(f32::MIN_POSITIVE, |m, &v| m.max(v))
}

/// The maps of a `[N, C, H, W]` tensor (the first image's, or each of `N` filters' single
/// channel) as a grid of `columns`, each pixel a `scale`-wide square, maps one pixel apart.
fn grid(
    tensor: &HostTensor,
    columns: usize,
    scale: u32,
    colour: impl Fn(f32) -> Rgb<u8>,
) -> RgbImage {
    let (maps, h, w) = match tensor.shape[..] {
        [n, 1, h, w] if n > 1 => (n, h, w),
        [_, c, h, w] => (c, h, w),
        _ => (1, 1, tensor.values.len()),
    };
    let rows = maps.div_ceil(columns);
    let (cell_w, cell_h) = (w as u32 * scale + 1, h as u32 * scale + 1);
    let columns = columns.min(maps) as u32;
    let mut picture = RgbImage::from_pixel(
        columns * cell_w - 1,
        rows as u32 * cell_h - 1,
        Rgb([0x44; 3]),
    );
    for map in 0..maps {
        let small = RgbImage::from_fn(w as u32, h as u32, |x, y| {
            colour(tensor.values[(map * h + y as usize) * w + x as usize])
        });
        let big = imageops::resize(
            &small,
            w as u32 * scale,
            h as u32 * scale,
            FilterType::Nearest,
        );
        let (left, top) = (
            (map as u32 % columns) * cell_w,
            (map as u32 / columns) * cell_h,
        );
        imageops::replace(&mut picture, &big, i64::from(left), i64::from(top));
    }
    picture
}

/// A vector as rows of `columns` cells, each `scale` pixels square.
fn strip(values: &[f32], columns: usize, scale: u32, colour: impl Fn(f32) -> Rgb<u8>) -> RgbImage {
    let rows = values.len().div_ceil(columns);
    let tensor = HostTensor {
        shape: vec![1, 1, rows, columns],
        values: (0..rows * columns)
            .map(|i| values.get(i).copied().unwrap_or(0.0))
            .collect(),
    };
    grid(&tensor, 1, scale, colour)
}

fn grey(t: f32) -> Rgb<u8> {
    Rgb([(255.0 * t.clamp(0.0, 1.0)).round() as u8; 3])
}

/// Dark blue through orange to pale yellow, as the page draws: 0 dark, 1 bright.
fn heat(t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    let channel = |v: f32| (255.0 * v.clamp(0.0, 1.0)).round() as u8;
    Rgb([
        channel(1.6 * t),
        channel(1.4 * t - 0.3),
        channel((0.25 * (1.0 - 3.0 * t)).max(2.0 * t - 1.2)),
    ])
}

/// Blue for negative, white for 0, red for positive, full at `limit`.
fn diverging(value: f32, limit: f32) -> Rgb<u8> {
    let t = if limit > 0.0 {
        (value / limit).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let fade = |v: f32| (255.0 * (1.0 - v)).round() as u8;
    if t >= 0.0 {
        Rgb([255, fade(t), fade(t)])
    } else {
        Rgb([fade(-t), fade(-t), 255])
    }
}

fn bar_chart(path: &Path, probabilities: &[f32; CLASSES]) -> Result<()> {
    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the embedded DejaVuSans.ttf is not a valid font"))?;
    let root = BitMapBackend::new(path, (640, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("probabilities", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d((0..CLASSES - 1).into_segmented(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("digit")
        .x_labels(CLASSES)
        .draw()?;
    chart.draw_series(probabilities.iter().enumerate().map(|(class, &p)| {
        let (left, right) = (SegmentValue::Exact(class), SegmentValue::Exact(class + 1));
        let mut bar = Rectangle::new([(left, 0.0), (right, f64::from(p))], BLUE.filled());
        bar.set_margin(0, 0, 6, 6);
        bar
    }))?;
    root.present()
        .map_err(|err| anyhow!("drawing {}: {err}", path.display()))
}
