//! The row types the store reads and writes, and how a stored row is decoded without letting one bad field hide it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The text stored in the `role` column (and checked by its CHECK constraint).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    fn from_db(text: &str) -> Option<Self> {
        match text {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// Where a message is in its life. Only an assistant reply is ever `Streaming`; the other states are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Being generated; its text is flushed every few hundred milliseconds.
    Streaming,
    /// Generation ended normally (end of turn or token limit; the stats say which).
    Done,
    /// The user pressed Stop; the partial text is kept.
    Stopped,
    /// The app died while the message was streaming; found and marked on the next start, text kept.
    Interrupted,
    /// Generation failed; `Message::error` says why, the partial text is kept.
    Error,
}

impl MessageStatus {
    /// The text stored in the `status` column (and checked by its CHECK constraint).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Streaming => "streaming",
            MessageStatus::Done => "done",
            MessageStatus::Stopped => "stopped",
            MessageStatus::Interrupted => "interrupted",
            MessageStatus::Error => "error",
        }
    }

    fn from_db(text: &str) -> Option<Self> {
        match text {
            "streaming" => Some(MessageStatus::Streaming),
            "done" => Some(MessageStatus::Done),
            "stopped" => Some(MessageStatus::Stopped),
            "interrupted" => Some(MessageStatus::Interrupted),
            "error" => Some(MessageStatus::Error),
            _ => None,
        }
    }
}

/// A conversation's sampling settings, stored as a JSON object. Every field is optional (absent: the app's
/// default) and fields this version does not know are kept in `extra`, so a newer app's settings survive a
/// round trip through an older one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Sampling {
    /// Always the most likely token: temperature 0 with every filter and the repeat penalty off (what the
    /// engine's `SamplingParams::greedy` does); other fields are left to the app's defaults.
    pub fn greedy() -> Self {
        Sampling {
            temperature: Some(0.0),
            top_p: Some(1.0),
            top_k: Some(0),
            min_p: Some(0.0),
            repeat_penalty: Some(1.0),
            ..Sampling::default()
        }
    }
}

/// Per-message generation statistics, stored as a JSON object (optional fields and `extra` as for [`Sampling`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    /// Why generation ended, e.g. `eos`, `max_tokens`, `stopped`, `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// KV cache slots held after the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_slots: Option<u64>,
    /// KV cache bytes held after the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_bytes: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A conversation row. Timestamps are unix milliseconds (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: i64,
    pub title: String,
    /// `None`: the app's default system prompt.
    pub system_prompt: Option<String>,
    /// `None`: the app's defaults (or the stored JSON could not be read; see `sampling_raw`).
    pub sampling: Option<Sampling>,
    /// The stored sampling text when it is not valid sampling JSON; kept so nothing is lost silently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_raw: Option<String>,
    /// A cache spec string such as `sep:a=4,s=256,w=1024,c=2048`; `None`: the app's default.
    pub cache_profile: Option<String>,
    pub model_path: Option<String>,
    pub model_sha256: Option<String>,
    pub pinned: bool,
    /// The leaf of the branch on screen (the last message of the path root..leaf).
    pub active_leaf_id: Option<i64>,
    pub created_at: i64,
    /// Last change to the content or settings (messages, title, prompt, sampling, cache profile, model). Pinning,
    /// trashing and branch switching do not count: they are how the user looks at it, and an undo must put the
    /// conversation back where it was in the list.
    pub updated_at: i64,
    /// Set while the conversation is in the trash.
    pub deleted_at: Option<i64>,
}

/// What a new conversation starts with. `Default` is an untitled conversation with the app's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewConversation {
    pub title: String,
    pub system_prompt: Option<String>,
    pub sampling: Option<Sampling>,
    pub cache_profile: Option<String>,
    pub model_path: Option<String>,
    pub model_sha256: Option<String>,
}

/// A message: a node of the conversation's tree. Timestamps are unix milliseconds (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: i64,
    pub conversation_id: i64,
    /// `None` for a first message; several messages may share a parent (regenerated replies, edited prompts).
    pub parent_id: Option<i64>,
    pub role: Role,
    pub content: String,
    pub status: MessageStatus,
    pub error: Option<String>,
    pub stats: Option<MessageStats>,
    /// The stored stats text when it is not valid stats JSON; kept so nothing is lost silently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_raw: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A point where SepCache compressed the conversation's KV cache; the transcript shows it after `message_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionMarker {
    pub id: i64,
    pub conversation_id: i64,
    /// The message being generated (or prefilled) when the compression happened.
    pub message_id: i64,
    /// Tokens the conversation had fed through the cache when it compressed.
    pub tokens_seen_at: i64,
    pub slots_before: i64,
    pub slots_after: i64,
    pub dropped_separators: i64,
    pub dropped_other: i64,
    pub bytes_freed: i64,
    pub created_at: i64,
}

/// A compression marker to record; the conversation is the message's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCompressionMarker {
    pub message_id: i64,
    pub tokens_seen_at: i64,
    pub slots_before: i64,
    pub slots_after: i64,
    pub dropped_separators: i64,
    pub dropped_other: i64,
    pub bytes_freed: i64,
}

/// A whole conversation: the row, every message of every branch (in id order, so parents come before their
/// children) and its compression markers. This is both what [`crate::Store::full_conversation`] reads and what
/// [`crate::Store::import_conversations`] takes; on import the ids inside are the importer's own and are remapped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullConversation {
    pub conversation: Conversation,
    pub messages: Vec<Message>,
    pub markers: Vec<CompressionMarker>,
}

/// One search result: a conversation title or a message that matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub conversation_id: i64,
    /// `None` when the hit is the conversation's title.
    pub message_id: Option<i64>,
    pub conversation_title: String,
    /// A few words around the match; matched terms are wrapped in [`crate::SNIPPET_MATCH_START`] and
    /// [`crate::SNIPPET_MATCH_END`]. The text is raw: escape it before putting it in HTML.
    pub snippet: String,
}

/// The connection settings in effect, read back from SQLite (for diagnostics and tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSettings {
    pub journal_mode: String,
    /// SQLite's number: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA.
    pub synchronous: i64,
    pub foreign_keys: bool,
    pub busy_timeout_ms: i64,
}

pub(crate) const CONVERSATION_COLUMNS: &str = "id, title, system_prompt, sampling, cache_profile, model_path, \
     model_sha256, pinned, active_leaf_id, created_at, updated_at, deleted_at";

pub(crate) const MESSAGE_COLUMNS: &str =
    "id, conversation_id, parent_id, role, content, status, error, stats, created_at, updated_at";

pub(crate) const MARKER_COLUMNS: &str = "id, conversation_id, message_id, tokens_seen_at, slots_before, slots_after, \
     dropped_separators, dropped_other, bytes_freed, created_at";

// Decoding. Fields whose text this version may not understand (JSON, enums) are decoded leniently with a warning,
// because one odd row (a newer app's status, a hand-edited database) must not make a whole list unreadable.

pub(crate) fn conversation_from_row(row: &SqliteRow) -> Result<Conversation, sqlx::Error> {
    let id: i64 = row.try_get("id")?;
    let (sampling, sampling_raw) = lenient_json(row.try_get("sampling")?, "sampling", "conversation", id);
    Ok(Conversation {
        id,
        title: row.try_get("title")?,
        system_prompt: row.try_get("system_prompt")?,
        sampling,
        sampling_raw,
        cache_profile: row.try_get("cache_profile")?,
        model_path: row.try_get("model_path")?,
        model_sha256: row.try_get("model_sha256")?,
        pinned: row.try_get::<i64, _>("pinned")? != 0,
        active_leaf_id: row.try_get("active_leaf_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}

pub(crate) fn message_from_row(row: &SqliteRow) -> Result<Message, sqlx::Error> {
    let id: i64 = row.try_get("id")?;
    let role_text: String = row.try_get("role")?;
    let role = Role::from_db(&role_text).unwrap_or_else(|| {
        // Showing the text as the user's is the least surprising choice: it is not fed back as model output.
        tracing::warn!(message_id = id, role = %role_text, "unknown message role; reading it as `user`");
        Role::User
    });
    let status_text: String = row.try_get("status")?;
    let status = MessageStatus::from_db(&status_text).unwrap_or_else(|| {
        tracing::warn!(message_id = id, status = %status_text, "unknown message status; reading it as `error`");
        MessageStatus::Error
    });
    let (stats, stats_raw) = lenient_json(row.try_get("stats")?, "stats", "message", id);
    Ok(Message {
        id,
        conversation_id: row.try_get("conversation_id")?,
        parent_id: row.try_get("parent_id")?,
        role,
        content: row.try_get("content")?,
        status,
        error: row.try_get("error")?,
        stats,
        stats_raw,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(crate) fn marker_from_row(row: &SqliteRow) -> Result<CompressionMarker, sqlx::Error> {
    Ok(CompressionMarker {
        id: row.try_get("id")?,
        conversation_id: row.try_get("conversation_id")?,
        message_id: row.try_get("message_id")?,
        tokens_seen_at: row.try_get("tokens_seen_at")?,
        slots_before: row.try_get("slots_before")?,
        slots_after: row.try_get("slots_after")?,
        dropped_separators: row.try_get("dropped_separators")?,
        dropped_other: row.try_get("dropped_other")?,
        bytes_freed: row.try_get("bytes_freed")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Decodes every row it can and skips (with a warning) a row that cannot be decoded at all, e.g. a column holding
/// a value of the wrong SQLite type written by hand: the other rows stay readable.
pub(crate) fn decode_rows<T>(
    rows: &[SqliteRow],
    what: &str,
    decode: fn(&SqliteRow) -> Result<T, sqlx::Error>,
) -> Vec<T> {
    rows.iter()
        .filter_map(|row| match decode(row) {
            Ok(value) => Some(value),
            Err(error) => {
                let id: Option<i64> = row.try_get("id").ok();
                tracing::warn!(?id, %error, "skipping an unreadable {what} row");
                None
            }
        })
        .collect()
}

/// Parses an optional JSON column. Invalid JSON gives `(None, Some(raw))` and a warning instead of an error.
fn lenient_json<T: DeserializeOwned>(
    raw: Option<String>,
    column: &str,
    table: &str,
    id: i64,
) -> (Option<T>, Option<String>) {
    let Some(text) = raw else {
        return (None, None);
    };
    match serde_json::from_str(&text) {
        Ok(value) => (Some(value), None),
        Err(error) => {
            tracing::warn!(id, %error, "the {table}'s {column} is not valid JSON; keeping the raw text");
            (None, Some(text))
        }
    }
}

/// The text to store for an optional typed JSON field, or the raw text kept from an unreadable one (so an export
/// and re-import of a damaged row keeps what was there).
pub(crate) fn json_column<T: Serialize>(
    value: Option<&T>,
    raw: Option<&str>,
    what: &'static str,
) -> Result<Option<String>, crate::StoreError> {
    match (value, raw) {
        (Some(value), _) => {
            serde_json::to_string(value).map(Some).map_err(|source| crate::StoreError::Json { what, source })
        }
        (None, raw) => Ok(raw.map(str::to_owned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_keep_unknown_fields() {
        let text = r#"{"tokens_out":12,"stop_reason":"eos","future_field":[1,2]}"#;
        let stats: MessageStats = serde_json::from_str(text).expect("valid stats");
        assert_eq!(stats.tokens_out, Some(12));
        assert_eq!(stats.extra.get("future_field"), Some(&serde_json::json!([1, 2])));
        let again = serde_json::to_string(&stats).expect("serializes");
        assert_eq!(serde_json::from_str::<MessageStats>(&again).expect("round trip"), stats);
    }

    #[test]
    fn enums_round_trip_through_their_column_text() {
        for status in [
            MessageStatus::Streaming,
            MessageStatus::Done,
            MessageStatus::Stopped,
            MessageStatus::Interrupted,
            MessageStatus::Error,
        ] {
            assert_eq!(MessageStatus::from_db(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).expect("serializes"), serde_json::json!(status.as_str()));
        }
        for role in [Role::System, Role::User, Role::Assistant] {
            assert_eq!(Role::from_db(role.as_str()), Some(role));
        }
        assert_eq!(MessageStatus::from_db("exploded"), None);
    }

    #[test]
    fn invalid_json_is_kept_raw() {
        let (stats, raw) = lenient_json::<MessageStats>(Some("{not json".into()), "stats", "message", 1);
        assert_eq!(stats, None);
        assert_eq!(raw.as_deref(), Some("{not json"));
        // A JSON value of the wrong shape is as unreadable as broken JSON.
        let (stats, raw) = lenient_json::<MessageStats>(Some("[1]".into()), "stats", "message", 1);
        assert_eq!((stats, raw.as_deref()), (None, Some("[1]")));
    }
}
