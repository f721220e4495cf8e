//! Helpers shared by the integration tests: the default model and the shared reference files.
//!
//! Tests that need the model FAIL when it is missing, never skip: a skipped tokenizer test would hide a
//! tokenizer that disagrees with llama.cpp.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use sepchat_text::GgufTokenizer;

/// GGUF metadata of the default model; panics with the fix when the file is missing.
pub fn default_model_content() -> Content {
    let path = sepchat_gguf::default_model::default_model_path()
        .unwrap_or_else(|| panic!("no home directory to locate the default model; set SEPCHAT_MODEL_DIR"));
    let mut file = File::open(&path).unwrap_or_else(|error| {
        panic!("default model not found at {} ({error}): run `make fetch-model` first", path.display())
    });
    Content::read(&mut file).unwrap_or_else(|error| panic!("cannot read GGUF {}: {error}", path.display()))
}

/// The tokenizer of the default model.
pub fn default_tokenizer() -> GgufTokenizer {
    GgufTokenizer::from_gguf(&default_model_content())
        .unwrap_or_else(|error| panic!("cannot build the default model's tokenizer: {error}"))
}

/// The `shared/` folder next to the repository root, or `$SEPCHAT_SHARED_DIR`.
pub fn shared_dir() -> PathBuf {
    match std::env::var("SEPCHAT_SHARED_DIR") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// A reference JSON file under `shared/reference/`.
pub fn reference_json(file_name: &str) -> serde_json::Value {
    let path = shared_dir().join("reference").join(file_name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read reference file {}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("invalid JSON in {}: {error}", path.display()))
}
