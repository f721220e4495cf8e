//! What the human-readable formats share: the branch they show, the dates, and the one-line summaries of stats and
//! compression markers. Every function here accepts any `FullConversation`, consistent or not (a leaf that is not
//! in the list, a parent cycle in a hand-edited file): a renderer shows what it can and never fails.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SecondsFormat};
use sepchat_store::{CompressionMarker, Conversation, FullConversation, Message, MessageStats, MessageStatus, Role};
use serde_json::Value;

/// The messages of the branch on screen, root first: the path from the root to `active_leaf_id`.
///
/// Without an active leaf (or with one that names no message) the last message in the list is the leaf, so a
/// conversation that has messages never exports as empty. The walk stops at a parent that is missing and at a
/// message already on the path, so a broken tree yields a partial branch instead of a loop.
pub fn active_branch(full: &FullConversation) -> Vec<&Message> {
    let by_id: HashMap<i64, &Message> = full.messages.iter().map(|message| (message.id, message)).collect();
    let leaf = full.conversation.active_leaf_id.and_then(|id| by_id.get(&id).copied()).or(full.messages.last());
    let mut branch = Vec::new();
    let mut seen = HashSet::new();
    let mut current = leaf;
    while let Some(message) = current {
        if !seen.insert(message.id) {
            break;
        }
        branch.push(message);
        current = message.parent_id.and_then(|parent| by_id.get(&parent).copied());
    }
    branch.reverse();
    branch
}

/// The conversation's compression markers grouped by the message they belong to, each group in list order.
pub(crate) fn markers_by_message(full: &FullConversation) -> HashMap<i64, Vec<&CompressionMarker>> {
    let mut groups: HashMap<i64, Vec<&CompressionMarker>> = HashMap::new();
    for marker in &full.markers {
        groups.entry(marker.message_id).or_default().push(marker);
    }
    groups
}

/// A unix-milliseconds timestamp as RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T09:30:00.250Z`, or `None`
/// when it is outside the years chrono can write (±262,143), which only a hand-made file could hold.
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(unix_ms).map(|time| time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// [`rfc3339`], or the raw number with its unit when the date cannot be written, so a text export never fails.
pub(crate) fn date_or_raw(unix_ms: i64) -> String {
    rfc3339(unix_ms).unwrap_or_else(|| format!("{unix_ms} ms after the unix epoch"))
}

/// The heading a message's role gets.
pub(crate) fn role_label(role: Role) -> &'static str {
    match role {
        Role::System => "System",
        Role::User => "User",
        Role::Assistant => "Assistant",
    }
}

/// A non-final or failed state worth showing next to the text; `None` for `done`.
pub(crate) fn status_label(status: MessageStatus) -> Option<&'static str> {
    match status {
        MessageStatus::Done => None,
        MessageStatus::Streaming => Some("still streaming when exported"),
        MessageStatus::Stopped => Some("stopped"),
        MessageStatus::Interrupted => Some("interrupted"),
        MessageStatus::Error => Some("failed"),
    }
}

/// The compact stats line of a message: its status when not `done`, then whichever stats it has, joined by ` · `
/// (e.g. `12 tokens in · 340 tokens out · first token 85 ms · decode 41.3 tok/s · stop: eos · KV 1284 slots,
/// 3.1 MiB`). `None` when there is nothing to say.
pub(crate) fn message_summary(message: &Message) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    if let Some(label) = status_label(message.status) {
        parts.push(label.to_owned());
    }
    if let Some(stats) = &message.stats {
        parts.extend(stats_parts(stats));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

fn stats_parts(stats: &MessageStats) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(tokens) = stats.tokens_in {
        parts.push(format!("{tokens} tokens in"));
    }
    if let Some(tokens) = stats.tokens_out {
        parts.push(format!("{tokens} tokens out"));
    }
    if let Some(ms) = stats.time_to_first_token_ms {
        parts.push(format!("first token {ms:.0} ms"));
    }
    if let Some(rate) = stats.prefill_tokens_per_s {
        parts.push(format!("prefill {rate:.1} tok/s"));
    }
    if let Some(rate) = stats.decode_tokens_per_s {
        parts.push(format!("decode {rate:.1} tok/s"));
    }
    if let Some(reason) = &stats.stop_reason {
        parts.push(format!("stop: {reason}"));
    }
    match (stats.kv_slots, stats.kv_bytes) {
        (Some(slots), Some(bytes)) => parts.push(format!("KV {slots} slots, {}", human_bytes(bytes))),
        (Some(slots), None) => parts.push(format!("KV {slots} slots")),
        (None, Some(bytes)) => parts.push(format!("KV {}", human_bytes(bytes))),
        (None, None) => {}
    }
    parts
}

/// The marker line, e.g. `KV cache compacted here: 2048 → 1284 slots (dropped 12 separators and 752 other
/// tokens, freed 18.0 MiB, after 4096 tokens)`.
pub(crate) fn marker_summary(marker: &CompressionMarker) -> String {
    format!(
        "KV cache compacted here: {} → {} slots (dropped {} separators and {} other tokens, freed {}, after {} \
         tokens)",
        marker.slots_before,
        marker.slots_after,
        marker.dropped_separators,
        marker.dropped_other,
        human_bytes(u64::try_from(marker.bytes_freed).unwrap_or(0)),
        marker.tokens_seen_at,
    )
}

/// Bytes in binary units with one decimal above 1 KiB (`512 B`, `1.5 KiB`, `18.0 MiB`).
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // A float is exact enough for one decimal; the precision lost above 2^53 bytes is far below what is shown.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The sampling settings on one line, `key=value` with JSON values (`temperature=0.7, top_k=40`), or the stored
/// text when it could not be read as settings; `None` when the app's defaults apply.
pub(crate) fn sampling_summary(conversation: &Conversation) -> Option<String> {
    let Some(sampling) = &conversation.sampling else {
        return conversation.sampling_raw.clone();
    };
    // Through serde_json, so the names are the ones the JSON export uses, unknown settings included.
    let fields = match serde_json::to_value(sampling) {
        Ok(Value::Object(fields)) => fields,
        _ => return None,
    };
    if fields.is_empty() {
        return Some("app defaults".to_owned());
    }
    Some(fields.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(", "))
}

/// A conversation's title for headings: the stored one on one line, or a placeholder when it is blank.
pub(crate) fn display_title(title: &str) -> String {
    let one_line = title.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        "Untitled conversation".to_owned()
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sepchat_store::Conversation;

    fn message(id: i64, parent_id: Option<i64>) -> Message {
        Message {
            id,
            conversation_id: 1,
            parent_id,
            role: if id % 2 == 1 { Role::User } else { Role::Assistant },
            content: format!("message {id}"),
            status: MessageStatus::Done,
            error: None,
            stats: None,
            stats_raw: None,
            created_at: id,
            updated_at: id,
        }
    }

    fn conversation(messages: Vec<Message>, active_leaf_id: Option<i64>) -> FullConversation {
        FullConversation {
            conversation: Conversation {
                id: 1,
                title: "t".into(),
                system_prompt: None,
                sampling: None,
                sampling_raw: None,
                cache_profile: None,
                model_path: None,
                model_sha256: None,
                pinned: false,
                active_leaf_id,
                created_at: 0,
                updated_at: 0,
                deleted_at: None,
            },
            messages,
            markers: Vec::new(),
        }
    }

    fn ids(branch: &[&Message]) -> Vec<i64> {
        branch.iter().map(|message| message.id).collect()
    }

    #[test]
    fn the_branch_follows_the_active_leaf() {
        // 1 ─ 2 ─ 3 ─ 4
        //      └─ 5 ─ 6      (a regenerated reply and its follow-up)
        let messages = vec![
            message(1, None),
            message(2, Some(1)),
            message(3, Some(2)),
            message(4, Some(3)),
            message(5, Some(2)),
            message(6, Some(5)),
        ];
        assert_eq!(ids(&active_branch(&conversation(messages.clone(), Some(4)))), [1, 2, 3, 4]);
        assert_eq!(ids(&active_branch(&conversation(messages.clone(), Some(6)))), [1, 2, 5, 6]);
        assert_eq!(ids(&active_branch(&conversation(messages.clone(), Some(5)))), [1, 2, 5]);
        // No leaf, or one that names nothing: the last message.
        assert_eq!(ids(&active_branch(&conversation(messages.clone(), None))), [1, 2, 5, 6]);
        assert_eq!(ids(&active_branch(&conversation(messages, Some(99)))), [1, 2, 5, 6]);
        assert!(active_branch(&conversation(Vec::new(), None)).is_empty());
    }

    #[test]
    fn a_broken_tree_gives_a_partial_branch() {
        let cycle = vec![message(1, Some(2)), message(2, Some(1))];
        assert_eq!(ids(&active_branch(&conversation(cycle, Some(2)))), [1, 2]);
        let orphan = vec![message(1, None), message(3, Some(2))];
        assert_eq!(ids(&active_branch(&conversation(orphan, Some(3)))), [3]);
    }

    #[test]
    fn dates_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(rfc3339(1_714_555_800_250).as_deref(), Some("2024-05-01T09:30:00.250Z"));
        assert_eq!(rfc3339(-1).as_deref(), Some("1969-12-31T23:59:59.999Z"));
        // 2000-02-29 (a leap day) 23:59:59.999.
        assert_eq!(rfc3339(951_868_799_999).as_deref(), Some("2000-02-29T23:59:59.999Z"));
        assert_eq!(rfc3339(i64::MAX), None);
        assert_eq!(date_or_raw(i64::MIN), format!("{} ms after the unix epoch", i64::MIN));
    }

    #[test]
    fn summaries_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(18 * 1024 * 1024), "18.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");

        let mut reply = message(2, Some(1));
        assert_eq!(message_summary(&reply), None);
        reply.status = MessageStatus::Stopped;
        reply.stats = Some(MessageStats {
            tokens_in: Some(12),
            tokens_out: Some(340),
            time_to_first_token_ms: Some(85.4),
            decode_tokens_per_s: Some(41.26),
            stop_reason: Some("stopped".into()),
            kv_slots: Some(1284),
            kv_bytes: Some(3_250_000),
            ..MessageStats::default()
        });
        assert_eq!(
            message_summary(&reply).as_deref(),
            Some(
                "stopped · 12 tokens in · 340 tokens out · first token 85 ms · decode 41.3 tok/s · stop: stopped · \
                 KV 1284 slots, 3.1 MiB"
            )
        );

        let marker = CompressionMarker {
            id: 1,
            conversation_id: 1,
            message_id: 2,
            tokens_seen_at: 4096,
            slots_before: 2048,
            slots_after: 1284,
            dropped_separators: 12,
            dropped_other: 752,
            bytes_freed: 18 * 1024 * 1024,
            created_at: 0,
        };
        assert_eq!(
            marker_summary(&marker),
            "KV cache compacted here: 2048 → 1284 slots (dropped 12 separators and 752 other tokens, freed 18.0 MiB, \
             after 4096 tokens)"
        );
    }

    #[test]
    fn titles_fit_on_one_line() {
        assert_eq!(display_title("  a\n b\tc "), "a b c");
        assert_eq!(display_title(" \n"), "Untitled conversation");
    }
}
