//! The plain-text export: a header with the title, dates and settings, then the active branch as `User:` /
//! `Assistant:` blocks.

use std::fmt::Write as _;

use sepchat_store::FullConversation;

use crate::transcript::{
    active_branch, date_or_raw, display_title, marker_summary, markers_by_message, message_summary, role_label,
    sampling_summary,
};

/// A line between conversations, long enough to stand out in any viewer.
const SEPARATOR: &str = "========================================================================";

/// The plain-text export of `conversations`, separated by a line of `=`. Message text is copied as written; the
/// status or stats of a message and each KV cache compaction follow it in square brackets.
pub fn render_text(conversations: &[FullConversation]) -> String {
    let mut out = String::new();
    for (index, full) in conversations.iter().enumerate() {
        if index > 0 {
            let _ = writeln!(out, "\n{SEPARATOR}\n");
        }
        write_conversation(&mut out, full);
    }
    out
}

fn write_conversation(out: &mut String, full: &FullConversation) {
    let c = &full.conversation;
    let title = display_title(&c.title);
    let _ = writeln!(out, "{title}\n{}", "-".repeat(title.chars().count()));
    let _ = writeln!(out, "Created: {}", date_or_raw(c.created_at));
    let _ = writeln!(out, "Updated: {}", date_or_raw(c.updated_at));
    match (&c.model_path, &c.model_sha256) {
        (Some(path), Some(sha256)) => {
            let _ = writeln!(out, "Model: {path} (sha256 {sha256})");
        }
        (Some(path), None) => {
            let _ = writeln!(out, "Model: {path}");
        }
        (None, Some(sha256)) => {
            let _ = writeln!(out, "Model: sha256 {sha256}");
        }
        (None, None) => {}
    }
    if let Some(profile) = &c.cache_profile {
        let _ = writeln!(out, "Cache profile: {profile}");
    }
    if let Some(sampling) = sampling_summary(c) {
        let _ = writeln!(out, "Sampling: {sampling}");
    }
    if let Some(prompt) = &c.system_prompt {
        let _ = writeln!(out, "System prompt:\n{}", indent(prompt));
    }

    let markers = markers_by_message(full);
    for message in active_branch(full) {
        let _ = writeln!(out, "\n{}:", role_label(message.role));
        if !message.content.is_empty() {
            out.push_str(&message.content);
            if !message.content.ends_with('\n') {
                out.push('\n');
            }
        }
        if let Some(error) = &message.error {
            let _ = writeln!(out, "[error: {error}]");
        }
        if let Some(summary) = message_summary(message) {
            let _ = writeln!(out, "[{summary}]");
        }
        for marker in markers.get(&message.id).into_iter().flatten() {
            let _ = writeln!(out, "[{}]", marker_summary(marker));
        }
    }
}

/// Every line indented by four spaces, so a multi-line prompt stays visibly inside the header.
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}")).collect::<Vec<_>>().join("\n")
}
