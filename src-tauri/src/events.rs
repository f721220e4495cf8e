//! App-wide notices, sent as Tauri events to every window (`listen(name, handler)` in the UI). Per-call streams
//! (tokens, KV readouts, prefill progress) are not events: they go over the `on_event` channel of the call.

use serde::Serialize;
use tauri::{AppHandle, Emitter};

/// A model finished loading (at start, or after `load_model`); the payload is its `ModelInfo`.
pub const MODEL_LOADED: &str = "model-loaded";

/// A model failed to load (at start: typically the default model is not downloaded yet); the payload is the
/// `ApiError`. The model loaded before, if any, stays loaded.
pub const MODEL_ERROR: &str = "model-error";

/// The conversation list may have changed (created, renamed, pinned, trashed, restored, purged, imported, its
/// settings or branch changed, a message sent); the payload is a [`ConversationsChanged`].
pub const CONVERSATIONS_CHANGED: &str = "conversations-changed";

/// Every event name this app emits.
pub const EVENTS: &[&str] = &[MODEL_LOADED, MODEL_ERROR, CONVERSATIONS_CHANGED];

/// The payload of [`CONVERSATIONS_CHANGED`]: which command changed them (for logs and tests; a UI simply
/// reloads its list).
#[derive(Debug, Clone, Serialize)]
pub struct ConversationsChanged {
    pub method: &'static str,
}

/// Sends `payload` to every window. A failure means no window can receive it (the app is closing), so it is only
/// logged: a notice is never worth failing the command that caused it.
pub fn emit(handle: &AppHandle, event: &str, payload: impl Serialize + Clone) {
    if let Err(error) = handle.emit(event, payload) {
        tracing::warn!(event, %error, "cannot send an event to the window");
    }
}

pub fn conversations_changed(handle: &AppHandle, method: &'static str) {
    emit(handle, CONVERSATIONS_CHANGED, ConversationsChanged { method });
}
