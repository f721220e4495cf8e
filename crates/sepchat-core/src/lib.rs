//! # sepchat-core: the App
//!
//! One [`App`] value whose async methods are the user's actions: conversations (create, list, rename, pin, trash
//! with undo, purge), search, chat (send, stop, regenerate, edit, switch branch), per-conversation settings (system
//! prompt, sampling, cache profile), loading a model, export and import. Faces (the CLI, the local server, the
//! Tauri shell) hold an `App` and call it; they never touch the store or the engine. Everything that crosses to a
//! face is a serde type of the [`api`] module, errors included (`{code, message}`, see [`api::ApiError`]).
//!
//! The App is async (tokio) over the async history store (`sepchat-store`); the engine (`sepchat-engine`) is one
//! blocking worker thread, whose events are bridged to the async side. Each conversation is one engine session,
//! so its KV cache is reused across turns; when it has gone cold the cache is restored from a snapshot on disk or
//! rebuilt by replaying the stored branch, and the reply says which ([`api::CacheSource`]). See `chat.rs` for one
//! turn step by step and `session.rs` for the session bookkeeping.

mod app;
mod cache_map;
mod chat;
mod error;
mod fingerprint;
mod transfer;
mod tree;

pub mod api;
pub mod prompt;
pub mod session;

pub use app::{App, MAX_SEARCH_HITS, SNAPSHOT_DIR_NAME};
pub use chat::{Sink, FLUSH_INTERVAL, KV_EVENT_INTERVAL};
pub use error::{CoreError, Result};
pub use fingerprint::FINGERPRINTS_FILE;
pub use prompt::{default_sampling, DEFAULT_CACHE_PROFILE, DEFAULT_SYSTEM_PROMPT};
/// A timestamp (unix milliseconds) as faces show it: RFC 3339 in UTC.
pub use sepchat_export::rfc3339;
