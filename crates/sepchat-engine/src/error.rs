//! The engine's one error type.

use std::path::PathBuf;

/// Everything that can go wrong inside the engine, each with a readable one-line message.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open model file {path}: {source}")]
    ModelOpen { path: PathBuf, source: std::io::Error },
    #[error("invalid GGUF file {path}: {source}")]
    InvalidGguf { path: PathBuf, source: sepchat_gguf::GgufError },
    #[error("cannot load model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },
    #[error(transparent)]
    Text(#[from] sepchat_text::TextError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("the prompt is empty: there is nothing to feed the model")]
    EmptyPrompt,
    #[error("the conversation needs {needed} KV slots but the {policy} cache holds at most {capacity}")]
    ContextFull { needed: usize, capacity: usize, policy: String },
    #[error("the first {tokens} tokens (the system turn) do not fit the initial block of the {policy} cache: shorten the system prompt or choose a larger cache")]
    InitialBlockTooLarge { tokens: usize, policy: String },
    #[error(transparent)]
    CacheSpec(#[from] crate::cache_policy::CacheSpecError),
    #[error("the KV snapshot does not fit this conversation: {0}")]
    SnapshotMismatch(String),
    #[error("the KV snapshot is damaged: {0}")]
    SnapshotCorrupt(String),
    #[error("KV snapshot file: {0}")]
    SnapshotIo(#[from] std::io::Error),
    #[error("the engine holds no cache for session {0}")]
    NoSuchSession(u64),
    #[error("token id {id} is outside the model's vocabulary of {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("device {requested} is not available: {reason}")]
    DeviceUnavailable { requested: String, reason: String },
    #[error("invalid sampling setting: {0}")]
    InvalidSampling(String),
    #[error("the engine worker has stopped")]
    WorkerGone,
    #[error("the engine worker panicked: {0}")]
    WorkerPanicked(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
