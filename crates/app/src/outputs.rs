//! A training run's directory: metrics.csv, Loss.png, Acc.png, model.safetensors and run.txt
//! (how the run computes), all rewritten after every epoch.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kernels::Precision;
use nn::ConvNet;

use crate::metrics::{to_csv, EpochMetrics};
use crate::plot::plot_curves;

pub const METRICS_FILE: &str = "metrics.csv";
pub const LOSS_PLOT_FILE: &str = "Loss.png";
pub const ACCURACY_PLOT_FILE: &str = "Acc.png";
pub const CHECKPOINT_FILE: &str = "model.safetensors";
pub const RUN_INFO_FILE: &str = "run.txt";

/// How a run computes, written to run.txt as `key value` lines.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub device: &'static str,
    pub precision: Precision,
    /// Whether each step replays a captured graph.
    pub graph: bool,
}

impl RunInfo {
    fn to_text(&self) -> String {
        format!(
            "device {}\nprecision {}\ngraph {}\n",
            self.device, self.precision, self.graph
        )
    }
}

/// `runs/<UTC date-time>`, e.g. `runs/20251128-154500`.
pub fn default_run_dir() -> PathBuf {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    Path::new("runs").join(utc_timestamp(now))
}

/// Rewrites every file of the run directory `dir` from the epochs so far and the model.
pub fn write_run(dir: &Path, history: &[EpochMetrics], net: &ConvNet, run: &RunInfo) -> Result<()> {
    write_atomically(&dir.join(RUN_INFO_FILE), |path| {
        Ok(fs::write(path, run.to_text())?)
    })?;
    let series = |field: fn(&EpochMetrics) -> f64| history.iter().map(field).collect::<Vec<_>>();
    write_atomically(&dir.join(METRICS_FILE), |path| {
        Ok(fs::write(path, to_csv(history))?)
    })?;
    write_atomically(&dir.join(LOSS_PLOT_FILE), |path| {
        plot_curves(
            path,
            "Loss",
            &series(|m| m.train_loss),
            &series(|m| m.test_loss),
        )
    })?;
    write_atomically(&dir.join(ACCURACY_PLOT_FILE), |path| {
        plot_curves(
            path,
            "Accuracy",
            &series(|m| m.train_acc),
            &series(|m| m.test_acc),
        )
    })?;
    write_atomically(&dir.join(CHECKPOINT_FILE), |path| Ok(net.save(path)?))
}

/// Writes `path` by having `write` fill a temporary file next to it, then renaming it over
/// `path`: a reader, or a run interrupted half-way, sees the old file or the new one, never a mix.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let temp = temp_path(path);
    write(&temp).with_context(|| format!("writing {}", temp.display()))?;
    fs::rename(&temp, path)
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))
}

/// `dir/.tmp.NAME`: same directory (so the rename is atomic) and same extension (plotters picks
/// the image format by it).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(Default::default, |name| name.to_string_lossy());
    path.with_file_name(format!(".tmp.{name}"))
}

/// `YYYYMMDD-HHMMSS` of a Unix time, in UTC.
fn utc_timestamp(unix_seconds: u64) -> String {
    let (days, seconds) = (unix_seconds / 86_400, unix_seconds % 86_400);
    // Howard Hinnant's civil_from_days: count from 0000-03-01 in 400-year eras so that the
    // leap day is the last day of each year.
    let from_march_0000 = days + 719_468;
    let era = from_march_0000 / 146_097;
    let day_of_era = from_march_0000 % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_calendar() {
        // Expected values from `date -u -d @SECONDS +%Y%m%d-%H%M%S`.
        assert_eq!(utc_timestamp(0), "19700101-000000");
        assert_eq!(utc_timestamp(1_764_344_700), "20251128-154500");
        assert_eq!(utc_timestamp(951_782_400), "20000229-000000");
        assert_eq!(utc_timestamp(4_107_542_399), "21000228-235959");
    }

    #[test]
    fn temp_file_keeps_the_directory_and_extension() {
        let temp = temp_path(Path::new("runs/a/Loss.png"));
        assert_eq!(temp, Path::new("runs/a/.tmp.Loss.png"));
    }
}
