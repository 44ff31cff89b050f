//! What an epoch measured, and its CSV form.

use std::fmt::Write as _;

/// One epoch's figures: mean loss and accuracy over each split, and the training pass's speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

impl EpochMetrics {
    /// Whether every figure is one a pass can give: losses, times and speeds finite and not
    /// negative, accuracies from 0 to 1.
    pub fn check(&self) -> Result<(), String> {
        let figures = [
            ("train_loss", self.train_loss, f64::INFINITY),
            ("train_acc", self.train_acc, 1.0),
            ("test_loss", self.test_loss, f64::INFINITY),
            ("test_acc", self.test_acc, 1.0),
            ("seconds", self.seconds, f64::INFINITY),
            ("images_per_second", self.images_per_second, f64::INFINITY),
        ];
        for (name, value, max) in figures {
            if !(value.is_finite() && (0.0..=max).contains(&value)) {
                let range = if max == 1.0 {
                    "from 0 to 1".to_string()
                } else {
                    "finite and at least 0".to_string()
                };
                return Err(format!("{name} is {value}, expected a number {range}"));
            }
        }
        Ok(())
    }
}

pub const CSV_HEADER: &str =
    "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_second";

/// The CSV text of every epoch so far: a header and a row per epoch.
pub fn to_csv(history: &[EpochMetrics]) -> String {
    let mut csv = format!("{CSV_HEADER}\n");
    for m in history {
        writeln!(
            csv,
            "{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1}",
            m.epoch,
            m.train_loss,
            m.train_acc,
            m.test_loss,
            m.test_acc,
            m.seconds,
            m.images_per_second
        )
        .expect("writing to a String cannot fail");
    }
    csv
}

/// The epochs of a CSV text written by [`to_csv`].
pub fn from_csv(csv: &str) -> anyhow::Result<Vec<EpochMetrics>> {
    let mut lines = csv.lines();
    if lines.next() != Some(CSV_HEADER) {
        anyhow::bail!("metrics do not begin with the header \"{CSV_HEADER}\"");
    }
    lines
        .enumerate()
        .map(|(row, line)| {
            let fields: Vec<&str> = line.split(',').collect();
            let bad = || anyhow::anyhow!("metrics row {}: \"{line}\" is not 7 numbers", row + 1);
            let [epoch, train_loss, train_acc, test_loss, test_acc, seconds, ips] = fields[..]
            else {
                return Err(bad());
            };
            let number = |text: &str| text.parse::<f64>().map_err(|_| bad());
            Ok(EpochMetrics {
                epoch: epoch.parse().map_err(|_| bad())?,
                train_loss: number(train_loss)?,
                train_acc: number(train_acc)?,
                test_loss: number(test_loss)?,
                test_acc: number(test_acc)?,
                seconds: number(seconds)?,
                images_per_second: number(ips)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_one_row_per_epoch() {
        let epoch = |n| EpochMetrics {
            epoch: n,
            train_loss: 0.5 / n as f64,
            train_acc: 0.9,
            test_loss: 0.25,
            test_acc: 0.95,
            seconds: 2.0,
            images_per_second: 1000.0,
        };
        let csv = to_csv(&[epoch(1), epoch(2)]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[2],
            "2,0.250000,0.900000,0.250000,0.950000,2.000,1000.0"
        );
        let back = from_csv(&csv).unwrap();
        assert_eq!(back, [epoch(1), epoch(2)]);
        assert_eq!(to_csv(&back), csv);
    }

    #[test]
    fn malformed_csv_is_refused() {
        assert!(from_csv("epoch\n").is_err());
        let bad_row = format!("{CSV_HEADER}\n1,0.5,x,0.2,0.9,1.0,10.0\n");
        let err = from_csv(&bad_row).unwrap_err().to_string();
        assert!(err.contains("row 1"), "{err}");
    }
}
