//! Crash-safe file replacement: write a temporary file beside the target, fsync it,
//! rename it over the target, fsync the directory.
//!
//! A reader (nginx, the next cutover run) sees either the old contents or the new,
//! never a mix, even when the process is killed or the disk fills mid-write. This
//! module never deletes or truncates the target itself: when anything fails, the
//! target is left exactly as it was and the temporary file is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replacing a file failed; the file still has its previous contents.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}; the previous contents are unchanged", path.display())]
pub struct AtomicWriteError {
    /// The file that was to be replaced.
    pub path: PathBuf,
    /// The underlying failure (e.g. disk full, read-only directory).
    #[source]
    pub source: io::Error,
}

/// Replaces `path` with `contents` atomically, creating it with `mode` when new.
///
/// # Errors
/// [`AtomicWriteError`] when the temporary file cannot be created, written, synced or
/// renamed; `path` keeps its previous contents.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let wrap = |source| AtomicWriteError {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        wrap(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // The rename is only durable once the directory entry is on disk.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.inc");
        write(&path, b"one", 0o644).unwrap();
        write(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failure_leaves_previous_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("a.inc");
        let err = write(&path, b"x", 0o644).unwrap_err();
        assert!(err.to_string().contains("previous contents are unchanged"));
    }
}
