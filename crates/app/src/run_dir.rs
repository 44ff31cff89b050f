//! A training run's directory. `training_state.safetensors` is the commit point: an epoch exists
//! once it is renamed into place. Then `model.safetensors`, `metrics.csv`, `Loss.png` and
//! `Acc.png` are rewritten from it, in that order, each into a unique temporary file renamed over
//! the old one; so the directory never describes an epoch its state does not hold, and a resume
//! rewrites them all before it goes on.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nn::{temp_path, write_atomically, ConvNet, TEMP_PREFIX};

use crate::metrics::{to_csv, EpochMetrics};
use crate::plot::plot_curves;
use crate::state::{TrainingState, STATE_FILE};

pub const METRICS_FILE: &str = "metrics.csv";
pub const LOSS_PLOT_FILE: &str = "Loss.png";
pub const ACCURACY_PLOT_FILE: &str = "Acc.png";
pub const CHECKPOINT_FILE: &str = "model.safetensors";
/// Default run names tried for one second before giving up.
const MAX_RUNS_PER_SECOND: usize = 10_000;

/// A run directory that this process writes.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `path` for a new run. An existing directory must be empty: a run's files are
    /// never replaced by another's.
    pub fn create(path: &Path) -> Result<RunDir> {
        let occupied = match fs::read_dir(path) {
            Ok(mut entries) => entries.next().is_some(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(err).with_context(|| format!("--out {}", path.display())),
        };
        if occupied {
            bail!(
                "--out {0} is not empty: resume that run with `handwritten train --resume {0}`, \
                 or choose another --out",
                path.display()
            );
        }
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        RunDir::writable(path)
    }

    /// Creates `runs/<UTC date-time>`, or `runs/<UTC date-time>-2` and so on when that exists:
    /// creating a directory is atomic, so two runs started in the same second get two.
    pub fn create_default(runs: &Path) -> Result<RunDir> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        fs::create_dir_all(runs).with_context(|| format!("creating {}", runs.display()))?;
        let stamp = utc_timestamp(now);
        for n in 1..=MAX_RUNS_PER_SECOND {
            let name = if n == 1 {
                stamp.clone()
            } else {
                format!("{stamp}-{n}")
            };
            let path = runs.join(name);
            match fs::create_dir(&path) {
                Ok(()) => return RunDir::writable(&path),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("creating {}", path.display()))
                }
            }
        }
        bail!(
            "{MAX_RUNS_PER_SECOND} runs in {} already start at {stamp}: choose --out",
            runs.display()
        )
    }

    /// An existing run to resume: its stale temporary files are removed.
    pub fn reopen(path: &Path) -> Result<RunDir> {
        let entries = fs::read_dir(path).with_context(|| format!("--resume {}", path.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let stale = entry.path();
                fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        RunDir::writable(path)
    }

    /// Checks now, not after an epoch, that files can be written in `path`.
    fn writable(path: &Path) -> Result<RunDir> {
        let probe = temp_path(&path.join("probe"));
        fs::write(&probe, b"")
            .and_then(|()| fs::remove_file(&probe))
            .with_context(|| format!("{} is not writable", path.display()))?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    /// Commits `state` (its epoch exists from here on), then rewrites the checkpoint of `net`,
    /// the metrics and the plots from it.
    pub fn commit(&self, state: &TrainingState, net: &ConvNet) -> Result<()> {
        let bytes = state.to_bytes()?;
        write_atomically(&self.state_path(), |path| fs::write(path, &bytes))?;
        self.write_derived(&state.history, net)
    }

    /// The files derived from the state: checkpoint, metrics, plots.
    pub fn write_derived(&self, history: &[EpochMetrics], net: &ConvNet) -> Result<()> {
        let series =
            |field: fn(&EpochMetrics) -> f64| history.iter().map(field).collect::<Vec<_>>();
        let checkpoint = net.to_safetensors()?;
        write_atomically(&self.path.join(CHECKPOINT_FILE), |path| {
            fs::write(path, &checkpoint)
        })?;
        write_atomically(&self.path.join(METRICS_FILE), |path| {
            fs::write(path, to_csv(history))
        })?;
        write_atomically(&self.path.join(LOSS_PLOT_FILE), |path| {
            plot_curves(
                path,
                "Loss",
                &series(|m| m.train_loss),
                &series(|m| m.test_loss),
            )
        })?;
        write_atomically(&self.path.join(ACCURACY_PLOT_FILE), |path| {
            plot_curves(
                path,
                "Accuracy",
                &series(|m| m.train_acc),
                &series(|m| m.test_acc),
            )
        })?;
        Ok(())
    }
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
    fn default_run_names_never_collide() {
        let runs = std::env::temp_dir().join(format!("handwritten-runs-{}", std::process::id()));
        let dirs: Vec<PathBuf> = (0..3)
            .map(|_| RunDir::create_default(&runs).unwrap().path)
            .collect();
        assert!(
            dirs[0] != dirs[1] && dirs[1] != dirs[2] && dirs[0] != dirs[2],
            "{dirs:?}"
        );
        assert!(dirs.iter().all(|d| d.is_dir()));
        fs::remove_dir_all(&runs).unwrap();
    }
}
