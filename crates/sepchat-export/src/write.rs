//! Writing a file so that it is either the old file or the whole new one, never a partial write.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

use crate::{ExportError, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (a rename is atomic only within one
/// file system) is written, flushed to disk, then renamed over `path`, and on Unix the directory is synced so the
/// rename itself survives a power loss. A reader sees the old file or the new one, never a mix; on any error the
/// temporary file is removed and `path` is untouched.
///
/// A file being replaced keeps its permissions; a new file gets the temporary file's, which tempfile creates
/// readable by the owner only (0600 on Unix) — fitting for chat history. A symlink at `path` is replaced by the
/// file, not written through.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let write_error = |source: std::io::Error| ExportError::Write { path: path.to_owned(), source };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let prefix = match path.file_name() {
        // A leading dot hides the temporary file from directory listings while it exists.
        Some(name) => format!(".{}.", name.to_string_lossy()),
        None => ".sepchat-export.".to_owned(),
    };
    let mut temp = tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempfile_in(dir).map_err(write_error)?;
    temp.write_all(bytes).map_err(write_error)?;
    if let Ok(existing) = fs::metadata(path) {
        if existing.is_file() {
            temp.as_file().set_permissions(existing.permissions()).map_err(write_error)?;
        }
    }
    temp.as_file().sync_all().map_err(write_error)?;
    // On failure the returned error owns the temporary file, and dropping it deletes the file.
    temp.persist(path).map_err(|error| write_error(error.error))?;
    sync_dir(dir).map_err(write_error)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file to sync it; NTFS journals the rename itself.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
