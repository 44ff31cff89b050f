//! What `handwritten eval` tells beyond the loss: accuracy per class and the confusion matrix,
//! printed and drawn.

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::mnist::CLASSES;
use crate::plot::{rgb_len, write_png, FONT};

pub const CONFUSION_PLOT_FILE: &str = "confusion.png";
const SIZE: (u32, u32) = (720, 720);

/// Counts of (true class, predicted class) over a test set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassReport {
    /// `matrix[truth][predicted]`.
    pub matrix: [[usize; CLASSES]; CLASSES],
}

impl ClassReport {
    /// Pairs `labels` with `predictions`; both are classes below [`CLASSES`].
    pub fn new(labels: &[u8], predictions: &[u8]) -> Self {
        let mut matrix = [[0; CLASSES]; CLASSES];
        for (&truth, &predicted) in labels.iter().zip(predictions) {
            matrix[truth as usize][predicted as usize] += 1;
        }
        ClassReport { matrix }
    }

    /// Images of class `class`, and how many of them were predicted right.
    pub fn class_counts(&self, class: usize) -> (usize, usize) {
        (self.matrix[class].iter().sum(), self.matrix[class][class])
    }

    /// Draws the matrix as a grid of counts, shaded by each row's share, into the PNG `path`.
    pub fn draw(&self, path: &Path) -> Result<()> {
        register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("the embedded DejaVuSans.ttf is not a valid font"))?;
        let mut pixels = vec![0; rgb_len(SIZE)];
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let n = CLASSES as i32;
        let mut chart = ChartBuilder::on(&root)
            .caption("Confusion matrix", ("sans-serif", 28))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(48)
            .build_cartesian_2d(0..n, 0..n)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(CLASSES)
            .y_labels(CLASSES)
            .x_label_formatter(&|x| x.to_string())
            // Row 0 at the top, as the printed matrix.
            .y_label_formatter(&|y| (n - 1 - y).to_string())
            .draw()?;
        for (truth, row) in self.matrix.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            for (predicted, &count) in row.iter().enumerate() {
                let (x, y) = (predicted as i32, n - 1 - truth as i32);
                let share = count as f64 / total;
                let shade = RGBColor(
                    (255.0 * (1.0 - share)) as u8,
                    (255.0 * (1.0 - 0.6 * share)) as u8,
                    255,
                );
                chart.draw_series([Rectangle::new([(x, y), (x + 1, y + 1)], shade.filled())])?;
                let color = if share > 0.5 { WHITE } else { BLACK };
                let label = Text::new(
                    count.to_string(),
                    (x, y + 1),
                    ("sans-serif", 16).into_font().color(&color),
                );
                chart.draw_series([label])?;
            }
        }
        root.present()?;
        drop(chart);
        drop(root);
        write_png(path, SIZE, pixels)
    }
}

impl fmt::Display for ClassReport {
    /// Per-class accuracy, then the matrix with true classes as rows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "class  images  correct  accuracy")?;
        for class in 0..CLASSES {
            let (images, correct) = self.class_counts(class);
            let accuracy = correct as f64 / images.max(1) as f64;
            writeln!(f, "{class:>5}  {images:>6}  {correct:>7}  {accuracy:.6}")?;
        }
        writeln!(f, "confusion matrix (rows: true class, columns: predicted)")?;
        write!(f, "     ")?;
        for class in 0..CLASSES {
            write!(f, "{class:>6}")?;
        }
        writeln!(f)?;
        for (truth, row) in self.matrix.iter().enumerate() {
            write!(f, "{truth:>5}")?;
            for count in row {
                write!(f, "{count:>6}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_true_row_and_predicted_column() {
        let report = ClassReport::new(&[3, 3, 3, 7], &[3, 5, 3, 7]);
        assert_eq!(report.matrix[3][3], 2);
        assert_eq!(report.matrix[3][5], 1);
        assert_eq!(report.matrix[7][7], 1);
        assert_eq!(report.class_counts(3), (3, 2));
        let text = report.to_string();
        assert!(text.contains("    3       3        2  0.666667"), "{text}");
        assert!(text.contains("    7       1        1  1.000000"), "{text}");
    }

    #[test]
    fn drawing_is_a_png() {
        let dir =
            std::env::temp_dir().join(format!("handwritten-confusion-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("confusion.png");
        ClassReport::new(&[0, 1, 2], &[0, 1, 1])
            .draw(&path)
            .unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
