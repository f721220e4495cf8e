//! The crate's one error type.

use std::path::PathBuf;

/// Everything exporting and importing can fail with. Import errors are split by kind, not folded into one string,
/// because the faces answer them differently: a newer version asks the user to update sepchat, while malformed
/// input or a broken tree means the file itself is bad.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("unknown export format `{0}` (expected md, markdown, json, html, txt or text)")]
    UnknownFormat(String),
    #[error("the file is not valid JSON (line {line}, column {column}): {message}")]
    MalformedJson { line: usize, column: usize, message: String },
    #[error("the file is not a sepchat export: {0}")]
    NotAnExport(String),
    #[error(
        "the export is format version {found}, newer than this sepchat reads (up to {supported}): \
         update sepchat to import it"
    )]
    UnsupportedVersion { found: u64, supported: u64 },
    /// A field is missing or has the wrong type or value. `path` is where, e.g. `conversations[0].messages[2].role`
    /// (`.` is the top level).
    #[error("invalid export at `{path}`: {message}")]
    InvalidField { path: String, message: String },
    #[error("conversation {conversation}: message id {message} appears more than once")]
    DuplicateMessageId { conversation: i64, message: i64 },
    #[error("conversation {conversation}: message {message} has parent {parent}, which is not a message of the conversation")]
    DanglingParent { conversation: i64, message: i64, parent: i64 },
    #[error("conversation {conversation}: message {message} is its own ancestor (the parent links form a cycle)")]
    ParentCycle { conversation: i64, message: i64 },
    #[error("conversation {conversation}: the active leaf {leaf} is not a message of the conversation")]
    DanglingActiveLeaf { conversation: i64, leaf: i64 },
    #[error(
        "conversation {conversation}: compression marker {marker} belongs to message {message}, which is not a \
         message of the conversation"
    )]
    DanglingMarker { conversation: i64, marker: i64, message: i64 },
    #[error("cannot encode the export as JSON")]
    Encode(#[source] serde_json::Error),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;
