//! The crate's one error type.

use std::path::PathBuf;

/// Everything the store can fail with. Database errors keep sqlx's error as the source so callers can log the
/// SQLite code; "not found" cases are their own variants because the UI answers them differently (a stale id).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the history database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot bring the history database's schema up to date")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("history database error")]
    Database(#[from] sqlx::Error),
    #[error("cannot encode {what} as JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("conversation {0} does not exist")]
    ConversationNotFound(i64),
    #[error("message {0} does not exist")]
    MessageNotFound(i64),
    #[error("message {message_id} does not belong to conversation {conversation_id}")]
    WrongConversation { message_id: i64, conversation_id: i64 },
    #[error("a finished message cannot have status `streaming` (message {0})")]
    FinishAsStreaming(i64),
    #[error("invalid import: {0}")]
    InvalidImport(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
