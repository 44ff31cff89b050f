//! Files that are replaced whole or not at all: the checkpoint here, and the run directory's
//! state, metrics and plots in the app.

use std::fmt::Display;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// How the temporary files of [`write_atomically`] begin: a file so named is a write that never
/// finished, safe to remove.
pub const TEMP_PREFIX: &str = ".tmp.";

/// Writes `path` by having `write` fill a unique temporary file beside it, flushing that to disk
/// and renaming it over `path`: a reader, or a process killed half-way, sees the old file or the
/// new one, never a mix. The temporary file is removed when anything fails, and the error names
/// `path` (with the cause `write` gave, its whole chain where it has one).
pub fn write_atomically<E: Display>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> Result<()> {
    let temp = temp_path(path);
    let result = write(&temp).map_err(|e| format!("{e:#}")).and_then(|()| {
        // A rename is atomic, but without the flush a crash could leave it pointing at data
        // that never reached the disk.
        File::open(&temp)
            .and_then(|file| file.sync_all())
            .and_then(|()| fs::rename(&temp, path))
            .map_err(|e| e.to_string())
    });
    if result.is_err() {
        // Best effort: the error worth reporting is the one that stopped the write.
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|what| Error::Write {
        path: path.display().to_string(),
        what,
    })
}

/// `dir/.tmp.PID.N.NAME` for `dir/NAME`: unique to this process and call, in the same directory
/// (so that the rename is atomic) and with the same extension (plotters picks the image format
/// by it).
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map_or_else(Default::default, |name| name.to_string_lossy());
    path.with_file_name(format!("{TEMP_PREFIX}{}.{n}.{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nn-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn temp_files_are_unique_and_keep_the_directory_and_extension() {
        let (a, b) = (
            temp_path(Path::new("runs/a/Loss.png")),
            temp_path(Path::new("runs/a/Loss.png")),
        );
        assert_ne!(a, b);
        for temp in [a, b] {
            assert_eq!(temp.parent(), Some(Path::new("runs/a")));
            assert_eq!(temp.extension().unwrap(), "png");
            assert!(temp
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(TEMP_PREFIX));
        }
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = scratch_dir("atomic-replace");
        let path = dir.join("metrics.csv");
        fs::write(&path, "old").unwrap();
        write_atomically(&path, |temp| fs::write(temp, "new")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(entries(&dir), ["metrics.csv"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_removes_the_temporary_one_and_names_the_file() {
        let dir = scratch_dir("atomic-fail");
        let path = dir.join("Loss.png");
        fs::write(&path, "old").unwrap();
        let error = write_atomically(&path, |temp| {
            fs::write(temp, "half")?;
            Err(std::io::Error::other("the plot failed"))
        })
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("the plot failed"),
            "{message}"
        );
        assert!(!message.contains(TEMP_PREFIX), "{message}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(entries(&dir), ["Loss.png"]);

        // A directory that does not exist: the write itself fails, and still names the file.
        let missing = dir.join("missing").join("model.safetensors");
        let error = write_atomically(&missing, |temp| fs::write(temp, "x")).unwrap_err();
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
