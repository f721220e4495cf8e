//! Helpers shared by the engine's integration tests.

use candle_core::Device;
use sepchat_engine::model::LlamaModel;

/// The real default model; a missing file fails the test with what to run.
pub fn default_model() -> LlamaModel {
    let path = sepchat_gguf::default_model::default_model_path().expect("a home directory");
    assert!(
        path.exists(),
        "the default model is missing at {}: run `make fetch-model` (make test does it)",
        path.display()
    );
    LlamaModel::load(&path, &Device::Cpu).expect("the default model loads")
}
