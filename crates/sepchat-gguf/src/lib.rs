//! The model file: where the default model lives, and validation of any GGUF before a loader trusts it.

pub mod default_model;
