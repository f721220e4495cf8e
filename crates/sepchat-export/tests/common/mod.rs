//! Hand-built conversations shared by the integration tests.

#![allow(dead_code)]

use sepchat_store::{
    CompressionMarker, Conversation, FullConversation, Message, MessageStats, MessageStatus, Role, Sampling,
};
use serde_json::json;

/// 2024-05-01T09:30:00.000Z.
pub const T0: i64 = 1_714_555_800_000;

pub fn conversation(id: i64, title: &str) -> Conversation {
    Conversation {
        id,
        title: title.to_owned(),
        system_prompt: None,
        sampling: None,
        sampling_raw: None,
        cache_profile: None,
        model_path: None,
        model_sha256: None,
        pinned: false,
        active_leaf_id: None,
        created_at: T0,
        updated_at: T0,
        deleted_at: None,
    }
}

pub fn message(conversation_id: i64, id: i64, parent_id: Option<i64>, role: Role, content: &str) -> Message {
    Message {
        id,
        conversation_id,
        parent_id,
        role,
        content: content.to_owned(),
        status: MessageStatus::Done,
        error: None,
        stats: None,
        stats_raw: None,
        created_at: T0 + id * 1000,
        updated_at: T0 + id * 1000 + 500,
    }
}

pub fn marker(conversation_id: i64, id: i64, message_id: i64) -> CompressionMarker {
    CompressionMarker {
        id,
        conversation_id,
        message_id,
        tokens_seen_at: 4096,
        slots_before: 2048,
        slots_after: 1284,
        dropped_separators: 12,
        dropped_other: 752,
        bytes_freed: 18 * 1024 * 1024,
        created_at: T0 + id,
    }
}

/// A conversation with every feature: settings, a system message, a regenerated reply (two branches; the active
/// one is the second), an edited prompt, stats with unknown fields, a raw stats text, statuses, an error, markers,
/// unicode, an empty message and a long one.
///
/// ```text
/// 10 user ─ 11 assistant (old reply, stopped)
///         └ 12 assistant (regenerated) ─ 13 user ─ 14 assistant (active leaf, with two markers)
/// 15 user (an edited first prompt, its own root) ─ 16 assistant (error, empty text)
/// ```
pub fn rich_conversation() -> FullConversation {
    let id = 7;
    let mut c = conversation(id, "Planning: «naïve» café ☕ — \"quotes\" & <tags>");
    c.system_prompt = Some("You are terse.\nAnswer in English.".into());
    c.sampling = Some(Sampling {
        temperature: Some(0.7),
        top_p: Some(0.95),
        top_k: Some(40),
        min_p: Some(0.05),
        repeat_penalty: Some(1.1),
        max_tokens: Some(512),
        seed: Some(42),
        extra: json!({"x_future": [1, "two", {"three": 3.5}], "x_flag": true}).as_object().cloned().unwrap_or_default(),
    });
    c.cache_profile = Some("sep:a=4,s=256,w=1024,c=2048".into());
    c.model_path = Some("/home/me/.cache/sepchat/models/SmolLM2-135M-Instruct-Q4_1.gguf".into());
    c.model_sha256 = Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into());
    c.pinned = true;
    c.active_leaf_id = Some(14);
    c.created_at = T0;
    c.updated_at = T0 + 60_000;

    let mut old_reply = message(id, 11, Some(10), Role::Assistant, "First try…");
    old_reply.status = MessageStatus::Stopped;
    old_reply.stats =
        Some(MessageStats { tokens_out: Some(3), stop_reason: Some("stopped".into()), ..Default::default() });

    let mut reply = message(id, 12, Some(10), Role::Assistant, "Sure — here's a plan:\n\n1. **Coffee**\n2. `code`\n");
    reply.stats = Some(MessageStats {
        time_to_first_token_ms: Some(85.25),
        prefill_tokens_per_s: Some(812.5),
        decode_tokens_per_s: Some(41.3),
        tokens_in: Some(27),
        tokens_out: Some(19),
        stop_reason: Some("eos".into()),
        kv_slots: Some(46),
        kv_bytes: Some(1_507_328),
        extra: json!({"x_layer_ms": [1.5, 2.25]}).as_object().cloned().unwrap_or_default(),
    });

    let mut last = message(id, 14, Some(13), Role::Assistant, &"A long answer. ".repeat(20_000));
    last.stats_raw = Some("{not json".into());

    let mut failed = message(id, 16, Some(15), Role::Assistant, "");
    failed.status = MessageStatus::Error;
    failed.error = Some("out of memory: 2 GiB requested".into());

    FullConversation {
        conversation: c,
        messages: vec![
            message(id, 9, None, Role::System, "Be brief."),
            message(id, 10, Some(9), Role::User, "Plan my day 🗓️ — مرحبا, 你好, \u{0}nul, \u{2028}sep"),
            old_reply,
            reply,
            message(id, 13, Some(12), Role::User, "And tomorrow?\r\nWith CRLF."),
            last,
            message(id, 15, None, Role::User, ""),
            failed,
        ],
        markers: vec![marker(id, 100, 14), marker(id, 101, 14), marker(id, 102, 12)],
    }
}

/// A second, minimal conversation: no settings, no messages.
pub fn empty_conversation() -> FullConversation {
    FullConversation { conversation: conversation(8, ""), messages: Vec::new(), markers: Vec::new() }
}
