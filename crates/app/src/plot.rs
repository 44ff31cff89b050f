//! Train and test curves per epoch as PNG charts.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// plotters draws text with ab_glyph, which finds no system fonts: the charts bring their own.
pub const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

const SIZE: (u32, u32) = (800, 500);

/// Draws `train` and `test` (one value per epoch, epoch 1 first) against the epoch into the PNG
/// file `path`.
pub fn plot_curves(path: &Path, title: &str, train: &[f64], test: &[f64]) -> Result<()> {
    // Registering again only replaces the entry: cheaper than keeping track.
    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the embedded DejaVuSans.ttf is not a valid font"))?;
    let mut pixels = vec![0; rgb_len(SIZE)];
    let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    // An axis needs two distinct ends, even after one epoch.
    let last_epoch = train.len().max(test.len()).max(2) as u32;
    let (low, high) = padded_range(train.iter().chain(test).copied());
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 28))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1..last_epoch, low..high)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(title)
        .x_labels(last_epoch.min(20) as usize)
        .draw()?;
    for (name, values, color) in [("train", train, BLUE), ("test", test, RED)] {
        let points = (1u32..).zip(values.iter().copied());
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(3))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    drop(chart);
    drop(root);
    write_png(path, SIZE, pixels)
}

/// Bytes of an RGB image of `size`.
pub fn rgb_len((width, height): (u32, u32)) -> usize {
    3 * width as usize * height as usize
}

/// Encodes the RGB `pixels` of an image of `size` into the PNG file `path`. Charts are drawn in
/// memory and written here, so that a failed write is told as the OS told it.
pub fn write_png(path: &Path, (width, height): (u32, u32), pixels: Vec<u8>) -> Result<()> {
    let image = image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| anyhow!("a {width}x{height} chart has the wrong number of pixels"))?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|err| match err {
            image::ImageError::IoError(err) => anyhow!("writing {}: {err}", path.display()),
            err => anyhow!("encoding {}: {err}", path.display()),
        })
}

/// The values' range widened by a margin, never below zero (losses and accuracies are not
/// negative), and never empty.
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !min.is_finite() || !max.is_finite() {
        return (0.0, 1.0);
    }
    let margin = ((max - min) * 0.1).max(1e-3 * max.abs().max(1.0));
    ((min - margin).max(0.0), max + margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_covers_the_values_with_a_margin() {
        let (low, high) = padded_range([0.2, 1.0, 0.6].into_iter());
        assert!((0.0..0.2).contains(&low));
        assert!(high > 1.0);
    }

    #[test]
    fn range_of_equal_values_is_not_empty() {
        let (low, high) = padded_range([0.98, 0.98].into_iter());
        assert!(low < 0.98 && high > 0.98);
    }

    #[test]
    fn charts_are_png_files() {
        let dir = std::env::temp_dir().join(format!("handwritten-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for epochs in [1, 3] {
            let path = dir.join(format!("Loss{epochs}.png"));
            let train: Vec<f64> = (0..epochs).map(|e| 1.0 / (e + 1) as f64).collect();
            let test: Vec<f64> = train.iter().map(|v| v * 1.1).collect();
            plot_curves(&path, "Loss", &train, &test).unwrap();
            let png = std::fs::read(&path).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_says_what_the_os_said() {
        let path = Path::new("/nonexistent-handwritten-dir/Loss.png");
        let err = plot_curves(path, "Loss", &[1.0], &[1.0])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "writing /nonexistent-handwritten-dir/Loss.png: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn range_of_nothing_is_the_unit_interval() {
        assert_eq!(padded_range(std::iter::empty()), (0.0, 1.0));
    }
}
