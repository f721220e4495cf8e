//! # sepchat-store: the chat history in SQLite
//!
//! All of sepchat's SQL lives here. A [`Store`] holds conversations (title, system prompt, sampling, cache profile,
//! model, pin, trash), their messages as a tree (regenerate adds a sibling, editing starts a branch; the branch on
//! screen is the conversation's `active_leaf_id`), per-message generation stats, SepCache compression markers, and
//! an FTS5 index over titles and message text kept in sync by triggers. Every method is an async fn over an sqlx
//! pool (tokio runtime); queries are checked at run time, so building needs no database.
//!
//! ## Crash safety, and why the connection is set up as it is
//!
//! - `journal_mode = WAL`: readers and the writer do not block each other (the list and search stay responsive
//!   while a reply streams) and a commit appends to the log instead of rewriting pages.
//! - `synchronous = NORMAL`: with WAL this syncs at checkpoints, not at every commit. A crash of the app never
//!   loses a commit and no crash corrupts the file; a power loss or OS crash may lose the last few commits. That is
//!   the right price for a streaming reply flushed every few hundred milliseconds (FULL would fsync each flush).
//! - `foreign_keys = ON`: deleting a conversation cascades to its messages and markers (and, through triggers, the
//!   search index); a message cannot point at a parent that does not exist.
//! - `busy_timeout = 5 s` and every write transaction `BEGIN IMMEDIATE`: a writer takes the write lock up front and
//!   waits for it, instead of a deferred transaction failing with "database is locked" when it tries to upgrade a
//!   stale read. Within one process writers also queue on an async mutex first, so they never spin in SQLite's
//!   busy handler against each other.
//! - Migrations (the top-level `migrations/` folder, compiled in) are append-only; a test pins each file's hash.
//! - The user's message is committed before generation starts; the assistant row is created `streaming` and its
//!   text flushed with [`Store::update_streaming_text`]; on every [`Store::open`], rows still `streaming` (the app
//!   died mid-reply) become `interrupted`, text kept.
//!
//! ## Conventions
//!
//! Ids are SQLite integer keys (`AUTOINCREMENT`, never reused). Timestamps are unix milliseconds (UTC) as `i64`:
//! they sort as numbers, need no date library, and convert to RFC 3339 at the edges (export, UI). Reads are
//! lenient so one bad row never hides the others: unknown status strings read as `error`, undecodable JSON keeps
//! its raw text (`*_raw` fields), a row that cannot be decoded at all is skipped, each with a `tracing` warning.

mod error;
mod search;
mod store;
mod types;

use std::path::PathBuf;

pub use error::{Result, StoreError};
pub use search::{SNIPPET_MATCH_END, SNIPPET_MATCH_START};
pub use store::{Store, BUSY_TIMEOUT};
pub use types::{
    CompressionMarker, ConnectionSettings, Conversation, FullConversation, Message, MessageStats, MessageStatus,
    NewCompressionMarker, NewConversation, Role, Sampling, SearchHit,
};

/// The database's file name inside the data directory.
pub const DATABASE_FILE_NAME: &str = "sepchat.sqlite3";

/// The directory holding the user's data: `$SEPCHAT_DATA_DIR` if set, else the platform data directory plus
/// `sepchat` (`$XDG_DATA_HOME/sepchat`, by default `~/.local/share/sepchat`, on Linux). `None` only when no home
/// directory can be found.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SEPCHAT_DATA_DIR").filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    dirs::data_dir().map(|dir| dir.join("sepchat"))
}

/// Where the history database lives by default: [`default_data_dir`] / [`DATABASE_FILE_NAME`].
pub fn default_database_path() -> Option<PathBuf> {
    default_data_dir().map(|dir| dir.join(DATABASE_FILE_NAME))
}
