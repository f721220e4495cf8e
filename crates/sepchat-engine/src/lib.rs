//! sepchat's inference engine.
//!
//! A quantized Llama GGUF is validated ([`sepchat_gguf`]), loaded onto a candle device
//! ([`model::LlamaModel`]), and run by one worker thread ([`worker::Engine`]) that owns every
//! conversation's KV cache ([`kv_cache::KvCache`]). Text enters and leaves through
//! [`sepchat_text`] (tokenizer and chat template from the GGUF, streaming detokenizer).
//! This crate knows nothing about storage, async runtimes or the UI.

mod attention;
pub mod bench;
pub mod cache_map;
pub mod cache_policy;
mod causal_softmax;
pub mod device;
pub mod error;
mod ggml_exact;
pub mod kv_cache;
pub mod kv_format;
pub mod model;
pub mod perplexity;
mod quant;
pub mod sampling;
pub mod stream_eval;
pub mod worker;

pub use attention::Arithmetic;
pub use cache_map::{CacheSimulator, Feed, SlotBook, TokenState};
pub use cache_policy::{CacheConfig, CachePolicy, CacheSpecError, SepParams};
pub use device::DeviceChoice;
pub use error::{EngineError, Result};
pub use kv_cache::{KvCache, KvStats};
pub use kv_format::KvFormat;
pub use model::{LlamaModel, ModelConfig};
pub use sampling::SamplingParams;
pub use worker::{Engine, Event, GenerateRequest, GenerationSummary, SessionId, StopReason};
