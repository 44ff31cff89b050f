//! A training run's directory. `training_state.safetensors` is the commit point: an epoch exists
//! once it is renamed into place. Then `model.safetensors`, `metrics.csv`, `Loss.png` and
//! `Acc.png` are rewritten from it, in that order, each into a unique temporary file renamed over
//! the old one; so the directory never describes an epoch its state does not hold, and a resume
//! rewrites them all before it goes on.
//!
//! One process at a time writes a run directory: it holds an OS lock on the directory's
//! [`LOCK_FILE`] from before it looks at the directory until it exits (see [`lock`]).

use std::cell::Cell;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nn::{temp_path, write_atomically, ConvNet, TEMP_PREFIX};

use crate::metrics::{to_csv, EpochMetrics};
use crate::plot::plot_curves;
use crate::state::{TrainingState, STATE_FILE};

pub const METRICS_FILE: &str = "metrics.csv";
pub const LOSS_PLOT_FILE: &str = "Loss.png";
pub const ACCURACY_PLOT_FILE: &str = "Acc.png";
pub const CHECKPOINT_FILE: &str = "model.safetensors";
/// Held locked by the process that writes the directory, and holds its process id. It is never
/// removed (a process that opened it could otherwise lock a file no longer there while another
/// locks a new one), and it is not part of the run: a directory holding only it is empty.
pub const LOCK_FILE: &str = ".lock";
/// Default run names tried for one second before giving up.
const MAX_RUNS_PER_SECOND: usize = 10_000;
/// How long a process that finds the lock held waits for the holder to write its id.
const HOLDER_ID_WAIT: Duration = Duration::from_millis(200);

/// A directory's lock, held until dropped or until the process ends, however it ends: the OS
/// releases it, so a killed run's directory can be taken again at once.
pub struct DirLock {
    file: File,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Best effort: an id left behind is only read while another process holds the lock.
        let _ = self.file.set_len(0);
    }
}

/// Takes the exclusive lock on `dir` (an existing directory) for this process, writing its id
/// into `dir/.lock`. Fails at once when another process holds it, naming `dir` and that process.
/// Whoever writes into a run directory (`train --out`, `train --resume`, `eval --out`) takes
/// it before looking at what the directory holds.
pub fn lock(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| {
            format!(
                "{} is not writable: opening its lock file {}",
                dir.display(),
                path.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = match holder_id(&file) {
                Some(pid) => format!("process {pid}"),
                None => "another process".to_string(),
            };
            bail!(
                "{} is in use by {holder}: one process at a time trains in or writes to a run \
                 directory; wait for it to end, or choose another directory",
                dir.display()
            );
        }
        Err(TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("locking {}", path.display()))
        }
    }
    let id = format!("{}\n", std::process::id());
    // Written in place, then cut to length: a reader sees a whole id on the first line.
    file.write_all_at(id.as_bytes(), 0)
        .and_then(|()| file.set_len(id.len() as u64))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(DirLock { file })
}

/// The id on the lock file's first line, once its holder has written it.
fn holder_id(file: &File) -> Option<u32> {
    let start = Instant::now();
    loop {
        let mut head = [0; 32];
        let read = file.read_at(&mut head, 0).ok()?;
        let text = String::from_utf8_lossy(&head[..read]);
        if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
            return Some(pid);
        }
        if start.elapsed() > HOLDER_ID_WAIT {
            return None;
        }
        sleep(Duration::from_millis(2));
    }
}

/// Whether `path` holds anything of its own (anything but its lock file).
fn has_entries(path: &Path) -> io::Result<bool> {
    for entry in fs::read_dir(path)? {
        if entry?.file_name() != LOCK_FILE {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks that files can be written in the directory `dir`.
fn check_writable(dir: &Path) -> io::Result<()> {
    let probe = temp_path(&dir.join("probe"));
    fs::write(&probe, b"").and_then(|()| fs::remove_file(&probe))
}

/// Checks, before any work starts, that `flag path` names a directory or one this process can
/// create. What an existing directory holds, and whether it is writable, is looked at once it
/// is locked (see [`LockedDir::open`]).
pub fn check_out(flag: &str, path: &Path) -> Result<()> {
    let shown = path.display();
    // The directory itself, or else the nearest ancestor that exists, which must take it.
    let existing = path
        .ancestors()
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| fs::symlink_metadata(a).is_ok())
        .unwrap_or(Path::new("."));
    let metadata = fs::metadata(existing)
        .with_context(|| format!("{flag} {shown}: reading {}", existing.display()))?;
    match (metadata.is_dir(), existing == path) {
        (true, true) => Ok(()),
        (false, true) => bail!("{flag} {shown} is a file, expected a directory"),
        (false, false) => bail!(
            "{flag} {shown} cannot be created: {} is a file",
            existing.display()
        ),
        (true, false) => check_writable(existing).with_context(|| {
            format!(
                "{flag} {shown} cannot be created: {} is not writable",
                existing.display()
            )
        }),
    }
}

fn not_empty(flag: &str, path: &Path) -> String {
    format!(
        "{flag} {0} is not empty: resume that run with `handwritten train --resume {0}`, or \
         choose another {flag}",
        path.display()
    )
}

/// A directory this process writes and holds the lock of. Made by this process and left with
/// nothing kept in it, it is removed again when dropped: a run that fails before it starts
/// leaves no empty directory behind.
pub struct LockedDir {
    pub path: PathBuf,
    created: bool,
    kept: Cell<bool>,
    _lock: DirLock,
}

impl LockedDir {
    /// Checks `flag path` as [`check_out`] does, creates it when it does not exist and takes its
    /// lock; then it must be writable and, with `empty`, hold nothing but the lock file.
    pub fn open(flag: &str, path: &Path, empty: bool) -> Result<LockedDir> {
        check_out(flag, path)?;
        // A directory no run ever locked gets no lock file when it is refused.
        let unlocked = !path.join(LOCK_FILE).exists();
        if empty && unlocked && path.is_dir() && has_entries(path).unwrap_or(false) {
            bail!(not_empty(flag, path));
        }
        let created = match fs::create_dir(path) {
            Ok(()) => true,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path)
                    .with_context(|| format!("{flag} {}: creating it", path.display()))?;
                true
            }
            Err(err) => {
                return Err(err).with_context(|| format!("{flag} {}: creating it", path.display()))
            }
        };
        LockedDir::lock(flag, path, created, empty)
    }

    /// Locks `path`, which this process has just created when `created`.
    fn lock(flag: &str, path: &Path, created: bool, empty: bool) -> Result<LockedDir> {
        let dir = LockedDir {
            path: path.to_path_buf(),
            created,
            kept: Cell::new(false),
            _lock: lock(path)?,
        };
        // Looked at again under the lock: another process may have written it since the check.
        if empty && has_entries(path).with_context(|| format!("{flag} {}", path.display()))? {
            bail!(not_empty(flag, path));
        }
        check_writable(path)
            .with_context(|| format!("{flag} {} is not writable", path.display()))?;
        Ok(dir)
    }

    /// The directory stays, whatever happens next.
    pub fn keep(&self) {
        self.kept.set(true);
    }
}

impl Drop for LockedDir {
    fn drop(&mut self) {
        if self.created && !self.kept.get() {
            // Still locked here: the lock file goes first, then the directory if it is empty.
            let _ = fs::remove_file(self.path.join(LOCK_FILE));
            let _ = fs::remove_dir(&self.path);
        }
    }
}

/// A run directory that this process writes, and holds the lock of.
pub struct RunDir {
    dir: LockedDir,
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `path` for a new run. An existing directory must be empty: a run's files are
    /// never replaced by another's.
    pub fn create(path: &Path) -> Result<RunDir> {
        Ok(RunDir::of(LockedDir::open("--out", path, true)?))
    }

    /// Creates `runs/<UTC date-time>`, or `runs/<UTC date-time>-2` and so on when that exists:
    /// creating a directory is atomic, so two runs started in the same second get two.
    pub fn create_default(runs: &Path) -> Result<RunDir> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        check_out("--out", runs)?;
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
                Ok(()) => return Ok(RunDir::of(LockedDir::lock("--out", &path, true, true)?)),
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

    /// An existing run to resume, locked before anything in it is read: its stale temporary
    /// files are removed.
    pub fn reopen(path: &Path) -> Result<RunDir> {
        let dir = LockedDir::lock("--resume", path, false, false)?;
        let entries = fs::read_dir(path).with_context(|| format!("--resume {}", path.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let stale = entry.path();
                fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        Ok(RunDir::of(dir))
    }

    fn of(dir: LockedDir) -> RunDir {
        RunDir {
            path: dir.path.clone(),
            dir,
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    /// Commits `state` (its epoch exists from here on), then rewrites the checkpoint of `net`,
    /// the metrics and the plots from it.
    pub fn commit(&self, state: &TrainingState, net: &ConvNet) -> Result<()> {
        let bytes = state.to_bytes()?;
        write_atomically(&self.state_path(), |path| fs::write(path, &bytes))?;
        self.dir.keep();
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
        // Held at once: a run directory that commits nothing is removed when dropped.
        let held: Vec<RunDir> = (0..3)
            .map(|_| RunDir::create_default(&runs).unwrap())
            .collect();
        let dirs: Vec<PathBuf> = held.iter().map(|run| run.path.clone()).collect();
        assert!(
            dirs[0] != dirs[1] && dirs[1] != dirs[2] && dirs[0] != dirs[2],
            "{dirs:?}"
        );
        assert!(dirs.iter().all(|d| d.is_dir()));
        drop(held);
        assert!(dirs.iter().all(|d| !d.exists()));
        fs::remove_dir_all(&runs).unwrap();
    }
}
