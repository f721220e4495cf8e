//! The Markdown export: per conversation, YAML front matter with the settings, a `#` title, then the active branch
//! as `## User` / `## Assistant` sections holding the message text as it was written.

use std::fmt::Write as _;

use sepchat_store::{FullConversation, Sampling};
use serde_json::{Map, Value};

use crate::transcript::{
    active_branch, display_title, marker_summary, markers_by_message, message_summary, rfc3339, role_label,
};

/// The Markdown export of `conversations`, one after the other. Each starts with its own front matter block
/// (`---` … `---`): a YAML mapping of `title`, `id`, `created`, `updated` (RFC 3339 UTC), `model_path`,
/// `model_sha256`, `cache_profile`, `system_prompt` and `sampling` (a mapping, or `null` for the app's defaults).
/// Under each section, a status or stats line in italics and a quoted line per KV cache compaction follow the text.
///
/// Message text is copied as-is, so a message holding its own `---` line or headings reads as Markdown would read
/// it; the JSON export is the lossless one.
pub fn render_markdown(conversations: &[FullConversation]) -> String {
    let mut out = String::new();
    for (index, full) in conversations.iter().enumerate() {
        if index > 0 {
            // A blank line first: `---` right under a line of text would underline it as a heading.
            out.push('\n');
        }
        write_conversation(&mut out, full);
    }
    out
}

fn write_conversation(out: &mut String, full: &FullConversation) {
    let c = &full.conversation;
    out.push_str("---\n");
    let _ = writeln!(out, "title: {}", yaml_string(&c.title));
    let _ = writeln!(out, "id: {}", c.id);
    let _ = writeln!(out, "created: {}", yaml_date(c.created_at));
    let _ = writeln!(out, "updated: {}", yaml_date(c.updated_at));
    let _ = writeln!(out, "model_path: {}", yaml_optional(c.model_path.as_deref()));
    let _ = writeln!(out, "model_sha256: {}", yaml_optional(c.model_sha256.as_deref()));
    let _ = writeln!(out, "cache_profile: {}", yaml_optional(c.cache_profile.as_deref()));
    let _ = writeln!(out, "system_prompt: {}", yaml_optional(c.system_prompt.as_deref()));
    match (&c.sampling, &c.sampling_raw) {
        (Some(sampling), _) => write_sampling(out, sampling),
        // The stored settings could not be read: keep the text, so nothing is lost silently.
        (None, Some(raw)) => {
            let _ = writeln!(out, "sampling: null\nsampling_raw: {}", yaml_string(raw));
        }
        (None, None) => out.push_str("sampling: null\n"),
    }
    out.push_str("---\n\n");
    let _ = writeln!(out, "# {}\n", markdown_escape(&display_title(&c.title)));

    let markers = markers_by_message(full);
    for message in active_branch(full) {
        let _ = writeln!(out, "## {}\n", role_label(message.role));
        if !message.content.is_empty() {
            out.push_str(&message.content);
            if !message.content.ends_with('\n') {
                out.push('\n');
            }
            out.push('\n');
        }
        if let Some(error) = &message.error {
            let _ = writeln!(out, "> **Error:** {}\n", one_line(error));
        }
        if let Some(summary) = message_summary(message) {
            let _ = writeln!(out, "*{summary}*\n");
        }
        for marker in markers.get(&message.id).into_iter().flatten() {
            let _ = writeln!(out, "> {}\n", marker_summary(marker));
        }
    }
}

/// Backslash-escapes the ASCII punctuation that could start markup (emphasis, links, raw HTML, entities, code), so a
/// title renders as the text it is. Message text is not escaped: it is Markdown already.
fn markdown_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '#' | '!' | '|' | '~') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The sampling settings as a block mapping in a fixed key order, unknown keys after the known ones.
fn write_sampling(out: &mut String, sampling: &Sampling) {
    // Through serde_json, so this lists exactly the fields the JSON export writes, in the same spelling.
    let fields = match serde_json::to_value(sampling) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    if fields.is_empty() {
        out.push_str("sampling: {}\n");
        return;
    }
    out.push_str("sampling:\n");
    for (key, value) in &fields {
        let _ = writeln!(out, "  {}: {}", yaml_key(key), yaml_value(value));
    }
}

fn yaml_date(unix_ms: i64) -> String {
    // A date out of chrono's range stays a number rather than a made-up date.
    rfc3339(unix_ms).unwrap_or_else(|| unix_ms.to_string())
}

fn yaml_optional(text: Option<&str>) -> String {
    text.map_or_else(|| "null".to_owned(), yaml_string)
}

/// A key as a plain scalar when it is a simple identifier, else quoted.
fn yaml_key(key: &str) -> String {
    let simple = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if simple {
        key.to_owned()
    } else {
        yaml_string(key)
    }
}

/// A JSON value as YAML. Scalars print as JSON prints them (valid YAML 1.2 plain scalars); strings go through
/// [`yaml_string`]; arrays and objects as JSON flow collections, which YAML 1.2 also reads, with their strings
/// escaped the same way.
fn yaml_value(value: &Value) -> String {
    match value {
        Value::String(text) => yaml_string(text),
        Value::Array(items) => format!("[{}]", items.iter().map(yaml_value).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields.iter().map(|(k, v)| format!("{}: {}", yaml_string(k), yaml_value(v))).collect::<Vec<_>>().join(", ")
        ),
        Value::Null | Value::Bool(_) | Value::Number(_) => value.to_string(),
    }
}

/// A YAML double-quoted scalar holding exactly `text`, on one line. Quoting every string means no title can turn
/// into a number, a boolean, a comment or the end of the front matter; escaping line breaks and every character
/// YAML does not allow raw (C0/C1 controls, DEL, U+2028/U+2029, U+FEFF, U+FFFE/U+FFFF) keeps the block
/// well-formed whatever the text holds.
pub(crate) fn yaml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{feff}'
            | '\u{fffe}'
            | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_strings_escape_what_yaml_forbids() {
        assert_eq!(yaml_string("plain"), "\"plain\"");
        assert_eq!(yaml_string("a \"q\" \\ b"), r#""a \"q\" \\ b""#);
        assert_eq!(yaml_string("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(yaml_string("\u{0}\u{7f}\u{85}\u{2028}"), r#""\u0000\u007F\u0085\u2028""#);
        assert_eq!(yaml_string("héllo 👋"), "\"héllo 👋\"");
        assert_eq!(markdown_escape("a *b* <i> & [c](d) #1"), r"a \*b\* \<i\> \& \[c\](d) \#1");
        assert_eq!(yaml_key("top_p"), "top_p");
        assert_eq!(yaml_key("x-y"), "\"x-y\"");
        assert_eq!(yaml_key("1st"), "\"1st\"");
    }
}
