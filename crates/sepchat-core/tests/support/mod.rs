//! What the core's integration tests share: the real default model and greedy sampling.

// Each test binary includes this module and may use only part of it.
#![allow(dead_code)]

use sepchat_core::api::{LoadModelRequest, Sampling};
use sepchat_core::App;

/// The default model's path; a missing file fails the test with what to run (never a skip).
pub fn default_model() -> String {
    let path = sepchat_gguf::default_model::default_model_path().expect("no home directory for the default model");
    assert!(path.is_file(), "the default model is missing at {}: run `make fetch-model` first", path.display());
    path.to_string_lossy().into_owned()
}

/// An App in a fresh temporary data directory with the default model loaded on the CPU; keep the directory alive.
pub async fn app_with_model() -> (tempfile::TempDir, App) {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = App::open(dir.path()).await.expect("open the app");
    let request = LoadModelRequest { path: Some(default_model()), device: Some("cpu".into()), ..Default::default() };
    app.load_model(request).await.expect("load the default model");
    (dir, app)
}

/// Deterministic sampling (`Sampling::greedy`), at most `max_tokens`.
pub fn greedy(max_tokens: u64) -> Sampling {
    Sampling { max_tokens: Some(max_tokens), ..Sampling::greedy() }
}
