//! A model file's sha256, the identity KV snapshots are checked against. Hashing a model takes a noticeable moment
//! (100 MB to several GB), so the result is remembered per (path, size, modification time) in a small JSON file in
//! the data directory; any rewrite of the file changes its modification time and is hashed again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};

/// The remembered hashes' file name inside the data directory.
pub const FINGERPRINTS_FILE: &str = "model-fingerprints.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    modified_ns: u128,
    sha256: String,
}

/// The sha256 of the file at `path`, from the cache in `data_dir` when the file has not changed since.
pub fn model_sha256(path: &Path, data_dir: &Path) -> Result<String> {
    let io_error = |source| CoreError::ModelFingerprint { path: path.to_path_buf(), source };
    let metadata = std::fs::metadata(path).map_err(io_error)?;
    let modified_ns = metadata.modified().map_err(io_error)?.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).to_string_lossy().into_owned();
    let cache_path = data_dir.join(FINGERPRINTS_FILE);
    // An unreadable cache is only a cache: start a new one.
    let mut cache: BTreeMap<String, Entry> =
        std::fs::read(&cache_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
    if let Some(entry) = cache.get(&key) {
        if entry.size == metadata.len() && entry.modified_ns == modified_ns {
            return Ok(entry.sha256.clone());
        }
    }
    let sha256 = hash_file(path).map_err(io_error)?;
    cache.insert(key, Entry { size: metadata.len(), modified_ns, sha256: sha256.clone() });
    if let Err(error) = write_cache(&cache_path, &cache) {
        tracing::warn!(path = %cache_path.display(), %error, "cannot remember the model's sha256");
    }
    Ok(sha256)
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Written with a temporary file and a rename, so two processes starting at once never leave half a file.
fn write_cache(path: &Path, cache: &BTreeMap<String, Entry>) -> std::io::Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(file.as_file(), cache)?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_once_and_again_after_a_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"abc").expect("write");
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(model_sha256(&model, dir.path()).expect("hash"), abc);
        assert!(dir.path().join(FINGERPRINTS_FILE).is_file());
        assert_eq!(model_sha256(&model, dir.path()).expect("cached"), abc);
        std::fs::write(&model, b"abcd").expect("rewrite");
        assert_ne!(model_sha256(&model, dir.path()).expect("rehash"), abc);
    }
}
