//! The JSON export: a versioned document holding every conversation's whole tree, settings, stats and markers,
//! and its parser. `docs/export-format.md` documents every field; keep the two in step.
//!
//! The document has its own types instead of serializing the store's rows directly, so that a change to a row type
//! cannot silently change the file format: fields the schema leaves implicit (a message's `conversation_id`) are
//! not written, and the parser fills them back in.

use std::collections::{HashMap, HashSet};

use sepchat_store::{
    CompressionMarker, Conversation, FullConversation, Message, MessageStats, MessageStatus, Role, Sampling,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ExportError, Result};

/// The value of the document's `format` field.
pub const FORMAT_TAG: &str = "sepchat-export";

/// The schema version this crate writes, and the highest it reads. Readers reject a higher version: it may hold
/// something they would drop or misread (see `docs/export-format.md` for when it changes).
pub const FORMAT_VERSION: u64 = 1;

#[derive(Serialize)]
struct DocumentOut<'a> {
    format: &'static str,
    version: u64,
    exported_at: i64,
    conversations: &'a [Entry],
}

/// What the parser reads once `format` and `version` are checked; `exported_at` is informational and not needed.
#[derive(Deserialize)]
struct DocumentIn {
    conversations: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    conversation: Settings,
    #[serde(default)]
    active_leaf_id: Option<i64>,
    messages: Vec<MessageEntry>,
    #[serde(default)]
    markers: Vec<MarkerEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Settings {
    id: i64,
    title: String,
    #[serde(default)]
    system_prompt: Option<String>,
    #[serde(default)]
    sampling: Option<Sampling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sampling_raw: Option<String>,
    #[serde(default)]
    cache_profile: Option<String>,
    #[serde(default)]
    model_path: Option<String>,
    #[serde(default)]
    model_sha256: Option<String>,
    #[serde(default)]
    pinned: bool,
    created_at: i64,
    updated_at: i64,
    #[serde(default)]
    deleted_at: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MessageEntry {
    id: i64,
    #[serde(default)]
    parent_id: Option<i64>,
    role: Role,
    content: String,
    status: MessageStatus,
    #[serde(default)]
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
    #[serde(default)]
    stats: Option<MessageStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats_raw: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MarkerEntry {
    id: i64,
    message_id: i64,
    tokens_seen_at: i64,
    slots_before: i64,
    slots_after: i64,
    dropped_separators: i64,
    dropped_other: i64,
    bytes_freed: i64,
    created_at: i64,
}

impl Entry {
    fn from_full(full: &FullConversation) -> Entry {
        let c = &full.conversation;
        Entry {
            conversation: Settings {
                id: c.id,
                title: c.title.clone(),
                system_prompt: c.system_prompt.clone(),
                sampling: c.sampling.clone(),
                sampling_raw: c.sampling_raw.clone(),
                cache_profile: c.cache_profile.clone(),
                model_path: c.model_path.clone(),
                model_sha256: c.model_sha256.clone(),
                pinned: c.pinned,
                created_at: c.created_at,
                updated_at: c.updated_at,
                deleted_at: c.deleted_at,
            },
            active_leaf_id: c.active_leaf_id,
            messages: full
                .messages
                .iter()
                .map(|m| MessageEntry {
                    id: m.id,
                    parent_id: m.parent_id,
                    role: m.role,
                    content: m.content.clone(),
                    status: m.status,
                    error: m.error.clone(),
                    created_at: m.created_at,
                    updated_at: m.updated_at,
                    stats: m.stats.clone(),
                    stats_raw: m.stats_raw.clone(),
                })
                .collect(),
            markers: full
                .markers
                .iter()
                .map(|k| MarkerEntry {
                    id: k.id,
                    message_id: k.message_id,
                    tokens_seen_at: k.tokens_seen_at,
                    slots_before: k.slots_before,
                    slots_after: k.slots_after,
                    dropped_separators: k.dropped_separators,
                    dropped_other: k.dropped_other,
                    bytes_freed: k.bytes_freed,
                    created_at: k.created_at,
                })
                .collect(),
        }
    }

    fn into_full(self) -> FullConversation {
        let s = self.conversation;
        let conversation_id = s.id;
        FullConversation {
            conversation: Conversation {
                id: s.id,
                title: s.title,
                system_prompt: s.system_prompt,
                sampling: s.sampling,
                sampling_raw: s.sampling_raw,
                cache_profile: s.cache_profile,
                model_path: s.model_path,
                model_sha256: s.model_sha256,
                pinned: s.pinned,
                active_leaf_id: self.active_leaf_id,
                created_at: s.created_at,
                updated_at: s.updated_at,
                deleted_at: s.deleted_at,
            },
            messages: self
                .messages
                .into_iter()
                .map(|m| Message {
                    id: m.id,
                    conversation_id,
                    parent_id: m.parent_id,
                    role: m.role,
                    content: m.content,
                    status: m.status,
                    error: m.error,
                    stats: m.stats,
                    stats_raw: m.stats_raw,
                    created_at: m.created_at,
                    updated_at: m.updated_at,
                })
                .collect(),
            markers: self
                .markers
                .into_iter()
                .map(|k| CompressionMarker {
                    id: k.id,
                    conversation_id,
                    message_id: k.message_id,
                    tokens_seen_at: k.tokens_seen_at,
                    slots_before: k.slots_before,
                    slots_after: k.slots_after,
                    dropped_separators: k.dropped_separators,
                    dropped_other: k.dropped_other,
                    bytes_freed: k.bytes_freed,
                    created_at: k.created_at,
                })
                .collect(),
        }
    }
}

/// The JSON export of `conversations` (pretty-printed, two-space indent, ending in a newline): every message of
/// every branch in the given order, settings, stats and markers. `exported_at` (unix milliseconds) is a parameter
/// so the output is a pure function of its inputs. A message's and a marker's `conversation_id` are not written:
/// they are the conversation's id. Non-finite floats in stats or sampling (which no real run produces) are written
/// as `null`, as JSON has no other spelling for them.
pub fn render_json(conversations: &[FullConversation], exported_at: i64) -> Result<String> {
    let entries: Vec<Entry> = conversations.iter().map(Entry::from_full).collect();
    let document = DocumentOut { format: FORMAT_TAG, version: FORMAT_VERSION, exported_at, conversations: &entries };
    let mut text = serde_json::to_string_pretty(&document).map_err(ExportError::Encode)?;
    text.push('\n');
    Ok(text)
}

/// Parses a JSON export back into the store's row types, with the exporter's ids (the store assigns its own on
/// import) and every `conversation_id` set to its conversation's id.
///
/// Checks, in this order: the text is JSON ([`ExportError::MalformedJson`]); it is an object whose `format` is
/// `sepchat-export` ([`ExportError::NotAnExport`]); its `version` is a positive integer no higher than
/// [`FORMAT_VERSION`] ([`ExportError::UnsupportedVersion`]); every field has the documented type
/// ([`ExportError::InvalidField`], with the path of the bad field); and each conversation is a tree: unique message
/// ids, parents, the active leaf and marker messages all within the conversation, no parent cycles. Unknown fields
/// are ignored, except inside `sampling` and `stats`, where they are kept (they round-trip through the store).
pub fn parse_json_export(text: &str) -> Result<Vec<FullConversation>> {
    // The header is checked on the generic value first, so that a newer version's document is reported as newer
    // rather than as whatever field it changed.
    let value: Value = serde_json::from_str(text).map_err(|error| ExportError::MalformedJson {
        line: error.line(),
        column: error.column(),
        message: error_message(&error),
    })?;
    check_header(&value)?;
    let document: DocumentIn = serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        ExportError::InvalidField { path, message: error.into_inner().to_string() }
    })?;
    let conversations: Vec<FullConversation> = document.conversations.into_iter().map(Entry::into_full).collect();
    for full in &conversations {
        check_tree(full)?;
    }
    Ok(conversations)
}

/// serde_json's message without its " at line L column C" suffix, which the error carries as fields.
fn error_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).map(str::to_owned).unwrap_or(text)
}

fn check_header(value: &Value) -> Result<()> {
    let Value::Object(fields) = value else {
        return Err(ExportError::NotAnExport("the top level is not a JSON object".into()));
    };
    match fields.get("format") {
        Some(Value::String(tag)) if tag == FORMAT_TAG => {}
        Some(other) => {
            return Err(ExportError::NotAnExport(format!("its `format` is {other}, not \"{FORMAT_TAG}\"")));
        }
        None => return Err(ExportError::NotAnExport("it has no `format` field".into())),
    }
    let invalid_version = |message: String| ExportError::InvalidField { path: "version".into(), message };
    match fields.get("version") {
        None => Err(invalid_version("missing field `version`".into())),
        Some(Value::Number(number)) => match number.as_u64() {
            Some(0) => Err(invalid_version("version 0 does not exist; versions start at 1".into())),
            Some(version) if version > FORMAT_VERSION => {
                Err(ExportError::UnsupportedVersion { found: version, supported: FORMAT_VERSION })
            }
            Some(_) => Ok(()),
            None => Err(invalid_version(format!("expected a positive integer, found {number}"))),
        },
        Some(other) => Err(invalid_version(format!("expected a positive integer, found {other}"))),
    }
}

/// The checks the store's import makes too, made here as well so a bad file is reported when it is read, with the
/// exporter's ids, before anything is written.
fn check_tree(full: &FullConversation) -> Result<()> {
    let conversation = full.conversation.id;
    let mut parent_of: HashMap<i64, Option<i64>> = HashMap::with_capacity(full.messages.len());
    for message in &full.messages {
        if parent_of.insert(message.id, message.parent_id).is_some() {
            return Err(ExportError::DuplicateMessageId { conversation, message: message.id });
        }
    }
    for message in &full.messages {
        if let Some(parent) = message.parent_id {
            if !parent_of.contains_key(&parent) {
                return Err(ExportError::DanglingParent { conversation, message: message.id, parent });
            }
        }
    }
    // Every parent exists, so walking up from any message ends at a root unless it revisits a message. Messages
    // known to reach a root are remembered, which keeps the whole check linear.
    let mut reaches_root: HashSet<i64> = HashSet::with_capacity(full.messages.len());
    for message in &full.messages {
        let mut path: HashSet<i64> = HashSet::new();
        let mut current = Some(message.id);
        while let Some(id) = current {
            if reaches_root.contains(&id) {
                break;
            }
            if !path.insert(id) {
                return Err(ExportError::ParentCycle { conversation, message: id });
            }
            current = parent_of.get(&id).copied().flatten();
        }
        reaches_root.extend(path);
    }
    if let Some(leaf) = full.conversation.active_leaf_id {
        if !parent_of.contains_key(&leaf) {
            return Err(ExportError::DanglingActiveLeaf { conversation, leaf });
        }
    }
    for marker in &full.markers {
        if !parent_of.contains_key(&marker.message_id) {
            return Err(ExportError::DanglingMarker { conversation, marker: marker.id, message: marker.message_id });
        }
    }
    Ok(())
}
