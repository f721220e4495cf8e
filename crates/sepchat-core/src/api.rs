//! The App's API as data: every request, response and event that crosses from the core to a face (the CLI, the
//! local server, the Tauri shell). All of it is serde, and this module is the only place such types live, so the
//! server's JSON, the Tauri commands and the UI's TypeScript types can follow one definition.
//!
//! Naming: fields are snake_case; enums are written as snake_case strings; events carry their kind in `"type"`.
//! Timestamps are unix milliseconds (UTC), ids are the store's integer ids. Leaf types that are plain data in the
//! store (message status, role, sampling, stats, compression markers, search hits) are re-exported as they are.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use sepchat_store::{
    CompressionMarker, MessageStats, MessageStatus, Role, Sampling, SearchHit, SNIPPET_MATCH_END, SNIPPET_MATCH_START,
};

/// What kind of failure an [`ApiError`] is. The strings are stable: faces branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A conversation or message id that does not exist (or no longer does).
    NotFound,
    /// A request that cannot be served as asked: empty text, a bad cache spec or sampling value, a message of the
    /// wrong role, an unreadable import file.
    InvalidInput,
    /// The conversation is already generating a reply (or the model is in use and cannot be replaced now).
    Busy,
    /// No model is loaded, or the model file cannot be loaded (missing, invalid GGUF, no chat template).
    Model,
    /// The history database failed.
    Storage,
    /// The inference engine failed outside a reply (a failure during a reply is stored with the reply instead).
    Engine,
    /// A file could not be read or written (export, import).
    Io,
    /// A bug: a background task panicked. The message says where.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::Busy => "busy",
            ErrorCode::Model => "model",
            ErrorCode::Storage => "storage",
            ErrorCode::Engine => "engine",
            ErrorCode::Io => "io",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error as faces see it: a stable code and one line for people. Built from the crate's
/// [`crate::CoreError`], whose causes are folded into the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// A conversation's row: title, settings, where it is in the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub id: i64,
    pub title: String,
    /// `None`: the app's default system prompt; `Some("")`: no system prompt at all.
    pub system_prompt: Option<String>,
    /// The conversation's own settings; unset fields take the app's defaults ([`crate::DEFAULT_SAMPLING`]).
    pub sampling: Sampling,
    /// A cache spec (`default`, `low`, `dense`, `sep:a=4,s=64,w=256,c=512`, ...); `None`: the app's default.
    pub cache_profile: Option<String>,
    pub model_path: Option<String>,
    pub model_sha256: Option<String>,
    pub pinned: bool,
    /// The last message of the branch on screen.
    pub active_leaf_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set while the conversation is in the trash.
    pub deleted_at: Option<i64>,
}

impl From<sepchat_store::Conversation> for ConversationInfo {
    fn from(row: sepchat_store::Conversation) -> Self {
        ConversationInfo {
            id: row.id,
            title: row.title,
            system_prompt: row.system_prompt,
            sampling: row.sampling.unwrap_or_default(),
            cache_profile: row.cache_profile,
            model_path: row.model_path,
            model_sha256: row.model_sha256,
            pinned: row.pinned,
            active_leaf_id: row.active_leaf_id,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
        }
    }
}

/// One message of a branch, with the siblings a regenerate/edit arrow moves between.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageInfo {
    pub id: i64,
    pub parent_id: Option<i64>,
    pub role: Role,
    pub content: String,
    pub status: MessageStatus,
    /// Why generation failed (status `error`).
    pub error: Option<String>,
    pub stats: Option<MessageStats>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Every message with the same parent, this one included, oldest first (regenerated replies, edited prompts).
    pub sibling_ids: Vec<i64>,
    /// This message's index in `sibling_ids`.
    pub sibling_index: usize,
}

/// A conversation as the chat view shows it: the row, the active branch root first, and the compression markers
/// of that branch's messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationView {
    pub conversation: ConversationInfo,
    pub branch: Vec<MessageInfo>,
    pub markers: Vec<CompressionMarker>,
}

/// Settings for a new conversation; everything optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewConversationRequest {
    /// Empty or absent: titled from the first message.
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub sampling: Option<Sampling>,
    pub cache_profile: Option<String>,
}

/// How a generation streams its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// Send a [`ChatEvent::Kv`] for every engine step instead of about ten a second (for statistics logs; a UI
    /// wants the default).
    pub kv_every_step: bool,
}

/// Send a user message at the end of the active branch and stream the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendMessageRequest {
    pub conversation_id: i64,
    pub text: String,
    #[serde(default)]
    pub stream: StreamOptions,
}

/// A new reply beside an existing one (never replacing it). `message_id` is the reply to regenerate, or the user
/// message to answer again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegenerateRequest {
    pub conversation_id: i64,
    pub message_id: i64,
    #[serde(default)]
    pub stream: StreamOptions,
}

/// A new version of a user message: a sibling of it with `text`, answered at once. The old message and everything
/// after it stay as another branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditMessageRequest {
    pub conversation_id: i64,
    pub message_id: i64,
    pub text: String,
    #[serde(default)]
    pub stream: StreamOptions,
}

/// Text completion without the chat template and without history (the CLI's `--raw`): nothing is stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompleteRequest {
    pub prompt: String,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub cache_profile: Option<String>,
    #[serde(default)]
    pub stream: StreamOptions,
}

/// One message of a [`ChatCompletionRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    pub role: Role,
    pub content: String,
}

/// A whole chat given by the caller, rendered with the model's chat template and continued: a conversation's turn
/// with nothing stored (the server's OpenAI-compatible endpoint). A first `system` message is the system prompt;
/// without one the app's default is used, as in a new conversation, and an empty one means none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatTurn>,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub cache_profile: Option<String>,
    #[serde(default)]
    pub stream: StreamOptions,
}

/// Where the conversation's KV cache came from for this reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSource {
    /// Nothing to reuse: the prompt is the first turn.
    Fresh,
    /// The session was warm in the engine: only the new tokens are fed (or a never-compacted cache was rolled back
    /// to where the branches part).
    Warm,
    /// Restored from the snapshot written after an earlier reply, then extended.
    RestoredFromSnapshot,
    /// Rebuilt by feeding the stored branch again (no usable snapshot; the detail says why).
    Replayed,
}

impl CacheSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheSource::Fresh => "fresh",
            CacheSource::Warm => "warm",
            CacheSource::RestoredFromSnapshot => "restored_from_snapshot",
            CacheSource::Replayed => "replayed",
        }
    }
}

/// The engine's live KV cache readout (SEPLLM.md's panel); the same fields as `sepchat_engine::KvStats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvStats {
    /// Every token processed in this conversation, template tokens included.
    pub tokens_seen: usize,
    pub slots_held: usize,
    pub capacity: usize,
    pub initial_held: usize,
    pub initial_limit: usize,
    pub separators_held: usize,
    pub separators_limit: usize,
    pub past_held: usize,
    pub local_held: usize,
    pub local_limit: usize,
    /// Tokens that fit before the next compaction (a dense cache: before it is full).
    pub tokens_to_next_compaction: usize,
    pub bytes_held: usize,
    /// Bytes a dense cache of every token seen would need.
    pub bytes_dense: usize,
    pub kept_ratio: f64,
    pub kept_ratio_mean: f64,
    pub slots_mean: f64,
    pub slots_peak: usize,
    pub dropped_separators: usize,
    pub dropped_other: usize,
    pub compactions: usize,
    pub horizon: usize,
}

impl From<&sepchat_engine::KvStats> for KvStats {
    fn from(stats: &sepchat_engine::KvStats) -> Self {
        KvStats {
            tokens_seen: stats.tokens_seen,
            slots_held: stats.slots_held,
            capacity: stats.capacity,
            initial_held: stats.initial_held,
            initial_limit: stats.initial_limit,
            separators_held: stats.separators_held,
            separators_limit: stats.separators_limit,
            past_held: stats.past_held,
            local_held: stats.local_held,
            local_limit: stats.local_limit,
            tokens_to_next_compaction: stats.tokens_to_next_compaction,
            bytes_held: stats.bytes_held,
            bytes_dense: stats.bytes_dense,
            kept_ratio: stats.kept_ratio,
            kept_ratio_mean: stats.kept_ratio_mean,
            slots_mean: stats.slots_mean,
            slots_peak: stats.slots_peak,
            dropped_separators: stats.dropped_separators,
            dropped_other: stats.dropped_other,
            compactions: stats.compactions,
            horizon: stats.horizon,
        }
    }
}

/// What a cache still holds of a piece of a message's text (the token map): the block of the slots holding its
/// tokens, `evicted`, or `unseen` (never fed: a message with no reply after it, or text the template leaves out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Initial,
    Separator,
    Past,
    Local,
    Evicted,
    Unseen,
}

/// A run of a message's text whose tokens share one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMapSegment {
    pub text: String,
    pub state: TokenState,
}

/// One message of the branch; its segments concatenate to exactly its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCacheMap {
    pub message_id: i64,
    pub segments: Vec<CacheMapSegment>,
}

/// `App::cache_map`: a conversation's active branch replayed, turn by turn as the engine fed it, through a cache of
/// some setting without running the model (the KV panel's A/B switch and token map).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMap {
    pub conversation_id: i64,
    /// The setting simulated, as a full spec.
    pub cache_spec: String,
    /// The readout that cache would show after this history.
    pub stats: KvStats,
    /// The branch's messages, root first.
    pub messages: Vec<MessageCacheMap>,
    /// False when a reply's stored text tokenizes to another number of tokens than the model generated (its ids
    /// are not stored, so replies are re-tokenized): the numbers may then be off by those tokens.
    pub exact: bool,
}

/// What a generation streams to its sink, in order: `Started` and `Session` (chat only), `Prefill` while the
/// prompt is fed (after each chunk: a replay shows progress), `Kv` and `Token` while it runs, `Compression` when
/// the cache compacts, and `Finished` last (chat only; a completion's result is the method's return value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The user message is committed and the reply's row exists (status `streaming`).
    Started { conversation_id: i64, user_message_id: i64, assistant_message_id: i64 },
    /// Where the KV cache came from; sent before the prompt is fed.
    Session { source: CacheSource, detail: Option<String> },
    /// Prompt tokens fed so far of the `total` this reply must feed.
    Prefill { done: usize, total: usize },
    /// New reply text; never splits a UTF-8 character.
    Token { text: String },
    /// The cache readout, about ten times a second (see [`StreamOptions`]); the last one is always sent.
    Kv { stats: KvStats },
    /// The cache compacted; the marker is stored with the reply.
    Compression { marker: CompressionMarker },
    /// The reply is finished and stored.
    Finished { result: Box<SendResult> },
}

/// The numbers of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationReport {
    /// `end_of_turn`, `max_tokens`, `cancelled` (stopped) or `error`.
    pub stop_reason: String,
    /// Tokens of the whole prompt, and how many of them the cache already held.
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_ms: f64,
    pub time_to_first_token_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// The cache after the reply (`None` when generation failed).
    pub kv: Option<KvStats>,
    /// The cache setting used, as a full spec (`sep:a=4,s=256,w=1024,c=2048`).
    pub cache_spec: String,
    /// Whether that cache evicts (SepCache, StreamingLLM) or refuses to grow past its capacity (dense).
    pub cache_evicts: bool,
}

/// The snapshot written after a reply, so the conversation can resume without a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub path: String,
    pub slots: usize,
    pub tokens_seen: usize,
    pub bytes: usize,
}

/// A finished reply (send, regenerate or edit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendResult {
    pub conversation_id: i64,
    /// The user message answered (new for send and edit, existing for regenerate).
    pub user_message_id: i64,
    /// The reply as stored: status `done`, `stopped` or `error` (with the partial text and the error).
    pub message: MessageInfo,
    pub cache_source: CacheSource,
    pub cache_detail: Option<String>,
    pub report: GenerationReport,
    /// Compressions during this reply, as stored.
    pub compressions: Vec<CompressionMarker>,
    /// `None` when the reply failed or the snapshot could not be written (logged).
    pub snapshot: Option<SnapshotReport>,
}

/// A finished completion ([`CompleteRequest`] or [`ChatCompletionRequest`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteResult {
    pub text: String,
    /// Set when generation failed; `text` is then what was generated before.
    pub error: Option<String>,
    pub report: GenerationReport,
}

/// Which model file to load; `None` fields take the defaults (the downloaded default model; device `auto`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadModelRequest {
    pub path: Option<String>,
    /// `auto`, `cpu`, `cuda` or `metal`.
    pub device: Option<String>,
    /// How the CPU attention of decode steps rounds: `fast` (the default: f32) or `llama-cpp`
    /// (llama.cpp's flash-attention kernel rounding for rounding, for output identical to its).
    pub attention: Option<String>,
}

/// The loaded model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: String,
    pub file_name: String,
    /// The file's sha256: the identity KV snapshots are checked against.
    pub sha256: String,
    /// `cpu`, `cuda` or `metal`.
    pub device: String,
    pub context_length: usize,
    pub weights_bytes: usize,
    pub has_chat_template: bool,
}

/// Export file formats, by their short names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExportFormat {
    #[serde(rename = "md")]
    Markdown,
    #[serde(rename = "json")]
    Json,
    #[serde(rename = "html")]
    Html,
    #[serde(rename = "txt")]
    Text,
}

/// Export some conversations (or all that are not in the trash) to a file, written atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    /// `None`: every conversation not in the trash.
    pub conversation_ids: Option<Vec<i64>>,
    pub format: ExportFormat,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportResult {
    pub path: String,
    pub conversations: usize,
    pub bytes: usize,
}

/// Import a JSON export; every conversation gets new ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRequest {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResult {
    pub conversation_ids: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_errors_have_stable_json() {
        let event = ChatEvent::Session { source: CacheSource::RestoredFromSnapshot, detail: None };
        assert_eq!(
            serde_json::to_value(&event).expect("serializes"),
            serde_json::json!({"type": "session", "source": "restored_from_snapshot", "detail": null})
        );
        let token = ChatEvent::Token { text: "hi".into() };
        assert_eq!(serde_json::to_string(&token).expect("serializes"), r#"{"type":"token","text":"hi"}"#);
        let error = ApiError { code: ErrorCode::NotFound, message: "conversation 3 does not exist".into() };
        assert_eq!(
            serde_json::to_value(&error).expect("serializes"),
            serde_json::json!({"code": "not_found", "message": "conversation 3 does not exist"})
        );
        for code in [
            ErrorCode::NotFound,
            ErrorCode::InvalidInput,
            ErrorCode::Busy,
            ErrorCode::Model,
            ErrorCode::Storage,
            ErrorCode::Engine,
            ErrorCode::Io,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).expect("serializes"), serde_json::json!(code.as_str()));
        }
        let format: ExportFormat = serde_json::from_str("\"txt\"").expect("parses");
        assert_eq!(format, ExportFormat::Text);
    }

    #[test]
    fn requests_accept_missing_optional_fields() {
        let request: SendMessageRequest =
            serde_json::from_str(r#"{"conversation_id": 4, "text": "hello"}"#).expect("parses");
        assert!(!request.stream.kv_every_step);
        let request: NewConversationRequest = serde_json::from_str("{}").expect("parses");
        assert_eq!(request, NewConversationRequest::default());
    }
}
