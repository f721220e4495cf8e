//! # sepchat-export: conversations to files and back
//!
//! Pure functions over the store's row types ([`FullConversation`]); no database access. The faces read
//! conversations with `Store::full_conversation`, render them here, and for an import parse a file here and hand
//! the result to `Store::import_conversations`, which assigns new ids.
//!
//! - [`render`] (or [`render_markdown`], [`render_json`], [`render_html`], [`render_text`]) turns one or many
//!   conversations into a document. Markdown, HTML and text show each conversation's active branch (root to
//!   `active_leaf_id`, see [`active_branch`]); JSON holds the whole tree.
//! - [`parse_json_export`] reads a JSON export back, checking its version and that each conversation is a tree.
//!   Export, parse and export again gives the same bytes.
//! - [`write_atomically`] and [`export_to_path`] write files with a temporary file and a rename, so a crash never
//!   leaves half a file.
//!
//! The JSON schema is documented field by field in `docs/export-format.md`.

#![forbid(unsafe_code)]

mod error;
mod format;
mod html;
mod json;
mod markdown;
mod text;
mod transcript;
mod write;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sepchat_store::FullConversation;

pub use error::{ExportError, Result};
pub use format::ExportFormat;
pub use html::{render_html, CONTENT_SECURITY_POLICY};
pub use json::{parse_json_export, render_json, FORMAT_TAG, FORMAT_VERSION};
pub use markdown::render_markdown;

pub use text::render_text;
pub use transcript::{active_branch, rfc3339};
pub use write::write_atomically;

/// `conversations` rendered in `format`. `exported_at` (unix milliseconds) is written by the JSON and HTML formats;
/// it is a parameter so that output is reproducible (tests, round trips).
pub fn render(conversations: &[FullConversation], format: ExportFormat, exported_at: i64) -> Result<String> {
    Ok(match format {
        ExportFormat::Markdown => render_markdown(conversations),
        ExportFormat::Json => render_json(conversations, exported_at)?,
        ExportFormat::Html => render_html(conversations, exported_at),
        ExportFormat::Text => render_text(conversations),
    })
}

/// Renders `conversations` in `format`, stamped with the current time, and writes the result to `path` with
/// [`write_atomically`].
pub fn export_to_path(conversations: &[FullConversation], format: ExportFormat, path: &Path) -> Result<()> {
    let document = render(conversations, format, now_unix_ms())?;
    write_atomically(path, document.as_bytes())
}

/// The current time in unix milliseconds; a clock set before 1970 reads as 0 rather than failing an export.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}
