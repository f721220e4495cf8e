//! The model file: where the default model lives, and validation of any GGUF before a loader trusts it.

#![forbid(unsafe_code)]

pub mod default_model;
pub mod validate;

pub use validate::{validate_bytes, validate_file, GgufError, GgufSummary};
