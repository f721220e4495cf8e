//! [`Store`]: the connection pool, opening (pragmas, migrations, crash recovery) and every query.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, Sqlite, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::{Result, StoreError};
use crate::search::{fts_match_expression, SNIPPET_MATCH_END, SNIPPET_MATCH_START};
use crate::types::{
    conversation_from_row, decode_rows, json_column, marker_from_row, message_from_row, CompressionMarker,
    ConnectionSettings, Conversation, FullConversation, Message, MessageStats, MessageStatus, NewCompressionMarker,
    NewConversation, Role, Sampling, SearchHit, CONVERSATION_COLUMNS, MARKER_COLUMNS, MESSAGE_COLUMNS,
};

/// The top-level `migrations/` folder, compiled in. `build.rs` makes cargo rebuild when a file there is added.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// How long a connection waits for another one's write lock before SQLite reports `database is locked`. Write
/// transactions here last milliseconds, so 5 s only runs out if something holds the lock pathologically long.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pool size: WAL lets readers run beside the one writer, so a few connections keep list/search reads from
/// queueing behind a streaming flush; more would only add writers waiting on the same lock.
const MAX_CONNECTIONS: u32 = 4;

/// The history store. Cheap to clone (the pool and the write lock are shared); every method is one or a few short
/// transactions.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Serializes this process's writers before they ask SQLite for the write lock: SQLite's busy handler polls with
    /// sleeps (unfair, and a waiter can starve), while this mutex queues writers in order. Other processes (or other
    /// `Store`s on the same file) still meet at `BEGIN IMMEDIATE` + the busy timeout.
    write_lock: Arc<Mutex<()>>,
    path: PathBuf,
    recovered_on_open: u64,
}

/// A write transaction: this store's write lock, then `BEGIN IMMEDIATE`. Dropping it without `commit` rolls back.
struct WriteTx {
    // Field order matters: the transaction must end (drop rolls back) before the lock lets the next writer in.
    tx: Transaction<'static, Sqlite>,
    _lock: OwnedMutexGuard<()>,
}

impl WriteTx {
    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Unix milliseconds now. A clock before 1970 reads as 0 rather than failing a write.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating it and its parent directories if needed) the database at `path`, brings the schema up to
    /// date and runs crash recovery (see [`Store::recovered_on_open`]).
    ///
    /// Recovery assumes no other process is streaming into this file right now: open one database from one app
    /// instance at a time.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::CreateDir { path: parent.to_path_buf(), source })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            // WAL: readers never block the writer and the writer never blocks readers, and a commit is one append
            // to the log instead of a rewrite of the database pages through a rollback journal.
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode syncs the log at checkpoints, not at every commit. The database can never be
            // corrupted by a crash; an app crash loses nothing committed (the OS still has the log), and only a
            // power loss or OS crash may roll back the last few commits. For a chat history that is the right
            // trade against an fsync per streaming flush (FULL).
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;

        // Migrations run inside one IMMEDIATE transaction (each migration becomes a savepoint in it), so two
        // processes opening a new or old database at once apply them one after the other instead of racing.
        {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            // `run_direct` rather than `run`: `run`'s `Acquire` bound makes this future not `Send` for every
            // lifetime ("implementation of `Acquire` is not general enough"), so `open` could not be spawned.
            MIGRATOR.run_direct(&mut *tx).await?;
            tx.commit().await?;
        }

        let mut store = Store { pool, write_lock: Arc::new(Mutex::new(())), path, recovered_on_open: 0 };
        store.recovered_on_open = store.recover_interrupted().await?;
        if store.recovered_on_open > 0 {
            tracing::info!(count = store.recovered_on_open, "marked messages left streaming as interrupted");
        }
        Ok(store)
    }

    /// How many messages [`Store::open`] found left `streaming` by a previous run and marked `interrupted`.
    pub fn recovered_on_open(&self) -> u64 {
        self.recovered_on_open
    }

    /// The database file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks every message still `streaming` as `interrupted`, keeping its text (one UPDATE); returns how many.
    /// [`Store::open`] calls it: at start no generation is running, so such a row was cut off by a crash.
    pub async fn recover_interrupted(&self) -> Result<u64> {
        let mut write = self.begin_write().await?;
        let result =
            sqlx::query("UPDATE messages SET status = 'interrupted', updated_at = ? WHERE status = 'streaming'")
                .bind(now_ms())
                .execute(&mut *write.tx)
                .await?;
        write.commit().await?;
        Ok(result.rows_affected())
    }

    /// Closes the pool, waiting for connections to finish; the last connection checkpoints the WAL into the
    /// database file.
    pub async fn close(self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> Result<WriteTx> {
        let lock = Arc::clone(&self.write_lock).lock_owned().await;
        // `pool.begin()` would issue a deferred BEGIN, which takes the write lock only at the first write; if
        // another connection commits in between, SQLite cannot upgrade the stale read snapshot and fails with
        // SQLITE_BUSY at once, without waiting. IMMEDIATE takes the write lock up front, under the busy timeout.
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _lock: lock })
    }

    // ---- Conversations ----

    /// Creates a conversation; `created_at` and `updated_at` are now.
    pub async fn create_conversation(&self, new: NewConversation) -> Result<Conversation> {
        let sampling = json_column(new.sampling.as_ref(), None, "sampling")?;
        let now = now_ms();
        let mut write = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO conversations (title, system_prompt, sampling, cache_profile, model_path, model_sha256, \
             created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(&new.title)
        .bind(&new.system_prompt)
        .bind(sampling)
        .bind(&new.cache_profile)
        .bind(&new.model_path)
        .bind(&new.model_sha256)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *write.tx)
        .await?;
        let conversation = conversation_from_row(&row)?;
        write.commit().await?;
        Ok(conversation)
    }

    /// A conversation by id, trashed or not.
    pub async fn get_conversation(&self, id: i64) -> Result<Conversation> {
        let row = sqlx::query(&format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::ConversationNotFound(id))?;
        Ok(conversation_from_row(&row)?)
    }

    /// Conversations not in the trash: pinned first, then the most recently updated.
    pub async fn list_conversations(&self) -> Result<Vec<Conversation>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE deleted_at IS NULL \
             ORDER BY pinned DESC, updated_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(decode_rows(&rows, "conversation", conversation_from_row))
    }

    /// Conversations in the trash, most recently trashed first.
    pub async fn list_trashed(&self) -> Result<Vec<Conversation>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE deleted_at IS NOT NULL \
             ORDER BY deleted_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(decode_rows(&rows, "conversation", conversation_from_row))
    }

    pub async fn rename(&self, id: i64, title: &str) -> Result<()> {
        self.update_conversation(id, "title = ?, updated_at = ?", |query| query.bind(title.to_owned()).bind(now_ms()))
            .await
    }

    /// Pins or unpins; does not change `updated_at` (see [`Conversation::updated_at`]).
    pub async fn set_pinned(&self, id: i64, pinned: bool) -> Result<()> {
        self.update_conversation(id, "pinned = ?", |query| query.bind(i64::from(pinned))).await
    }

    pub async fn set_system_prompt(&self, id: i64, system_prompt: Option<&str>) -> Result<()> {
        let system_prompt = system_prompt.map(str::to_owned);
        self.update_conversation(id, "system_prompt = ?, updated_at = ?", |query| {
            query.bind(system_prompt).bind(now_ms())
        })
        .await
    }

    pub async fn set_sampling(&self, id: i64, sampling: Option<&Sampling>) -> Result<()> {
        let sampling = json_column(sampling, None, "sampling")?;
        self.update_conversation(id, "sampling = ?, updated_at = ?", |query| query.bind(sampling).bind(now_ms())).await
    }

    /// Sets the cache spec string (e.g. `sep:a=4,s=256,w=1024,c=2048`); the store does not parse it.
    pub async fn set_cache_profile(&self, id: i64, cache_profile: Option<&str>) -> Result<()> {
        let cache_profile = cache_profile.map(str::to_owned);
        self.update_conversation(id, "cache_profile = ?, updated_at = ?", |query| {
            query.bind(cache_profile).bind(now_ms())
        })
        .await
    }

    pub async fn set_model(&self, id: i64, model_path: Option<&str>, model_sha256: Option<&str>) -> Result<()> {
        let model_path = model_path.map(str::to_owned);
        let model_sha256 = model_sha256.map(str::to_owned);
        self.update_conversation(id, "model_path = ?, model_sha256 = ?, updated_at = ?", |query| {
            query.bind(model_path).bind(model_sha256).bind(now_ms())
        })
        .await
    }

    /// Moves a conversation to the trash (soft delete: `deleted_at` = now). It leaves the list and search results
    /// until [`Store::restore_conversation`] or [`Store::purge_trashed`].
    pub async fn trash_conversation(&self, id: i64) -> Result<()> {
        self.update_conversation(id, "deleted_at = ?", |query| query.bind(now_ms())).await
    }

    /// Takes a conversation out of the trash, back to its old place in the list.
    pub async fn restore_conversation(&self, id: i64) -> Result<()> {
        self.update_conversation(id, "deleted_at = NULL", |query| query).await
    }

    /// Deletes for good the conversations trashed at least `older_than` ago (all trashed ones for
    /// `Duration::ZERO`); returns how many.
    pub async fn purge_trashed(&self, older_than: Duration) -> Result<u64> {
        let cutoff = now_ms().saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
        let mut write = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM conversations WHERE deleted_at IS NOT NULL AND deleted_at <= ?")
            .bind(cutoff)
            .execute(&mut *write.tx)
            .await?;
        write.commit().await?;
        Ok(result.rows_affected())
    }

    /// Deletes a conversation now, with its messages and markers (foreign-key cascade; the FTS triggers follow).
    pub async fn delete_conversation(&self, id: i64) -> Result<()> {
        let mut write = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM conversations WHERE id = ?").bind(id).execute(&mut *write.tx).await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::ConversationNotFound(id));
        }
        write.commit().await
    }

    /// One UPDATE of the conversation `id` in its own write transaction; `set` is the SET clause whose `?`s `bind`
    /// fills, and the id is bound last.
    async fn update_conversation(
        &self,
        id: i64,
        set: &str,
        bind: impl for<'q> FnOnce(SqliteQuery<'q>) -> SqliteQuery<'q>,
    ) -> Result<()> {
        let sql = format!("UPDATE conversations SET {set} WHERE id = ?");
        let mut write = self.begin_write().await?;
        let result = bind(sqlx::query(&sql)).bind(id).execute(&mut *write.tx).await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::ConversationNotFound(id));
        }
        write.commit().await
    }

    // ---- Messages ----

    /// Adds a message under `parent_id` (`None`: a first message) and makes it the conversation's active leaf,
    /// committed in its own transaction before this returns: a user message is on disk before generation starts.
    pub async fn add_message(
        &self,
        conversation_id: i64,
        parent_id: Option<i64>,
        role: Role,
        content: &str,
        status: MessageStatus,
    ) -> Result<Message> {
        let mut write = self.begin_write().await?;
        let message = insert_message(&mut write.tx, conversation_id, parent_id, role, content, status).await?;
        write.commit().await?;
        Ok(message)
    }

    /// Creates the empty assistant reply to `parent_id`, status `streaming`, as the conversation's active leaf.
    /// Regenerating is the same call with the same parent: the new reply is a sibling of the old one.
    pub async fn start_assistant_message(&self, parent_id: i64) -> Result<Message> {
        let mut write = self.begin_write().await?;
        let conversation_id: i64 = sqlx::query_scalar("SELECT conversation_id FROM messages WHERE id = ?")
            .bind(parent_id)
            .fetch_optional(&mut *write.tx)
            .await?
            .ok_or(StoreError::MessageNotFound(parent_id))?;
        let message = insert_message(
            &mut write.tx,
            conversation_id,
            Some(parent_id),
            Role::Assistant,
            "",
            MessageStatus::Streaming,
        )
        .await?;
        write.commit().await?;
        Ok(message)
    }

    /// The periodic flush of a streaming reply: replaces its text (one UPDATE; the FTS trigger re-indexes it).
    /// Returns `false`, changing nothing, when the message is no longer streaming, so a late flush can never
    /// overwrite a finished reply.
    pub async fn update_streaming_text(&self, id: i64, content: &str) -> Result<bool> {
        let mut write = self.begin_write().await?;
        let result =
            sqlx::query("UPDATE messages SET content = ?, updated_at = ? WHERE id = ? AND status = 'streaming'")
                .bind(content)
                .bind(now_ms())
                .bind(id)
                .execute(&mut *write.tx)
                .await?;
        write.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    /// Ends a reply: its final status (not `streaming`), full text, error text and stats. Also bumps the
    /// conversation's `updated_at`.
    pub async fn finish_message(
        &self,
        id: i64,
        status: MessageStatus,
        content: &str,
        error: Option<&str>,
        stats: Option<&MessageStats>,
    ) -> Result<Message> {
        if status == MessageStatus::Streaming {
            return Err(StoreError::FinishAsStreaming(id));
        }
        let stats = json_column(stats, None, "stats")?;
        let now = now_ms();
        let mut write = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "UPDATE messages SET status = ?, content = ?, error = ?, stats = ?, updated_at = ? WHERE id = ? \
             RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(status.as_str())
        .bind(content)
        .bind(error)
        .bind(stats)
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *write.tx)
        .await?
        .ok_or(StoreError::MessageNotFound(id))?;
        let message = message_from_row(&row)?;
        sqlx::query("UPDATE conversations SET updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(message.conversation_id)
            .execute(&mut *write.tx)
            .await?;
        write.commit().await?;
        Ok(message)
    }

    pub async fn get_message(&self, id: i64) -> Result<Message> {
        let row = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::MessageNotFound(id))?;
        Ok(message_from_row(&row)?)
    }

    /// Every message of the conversation, all branches, in id order (parents before children).
    pub async fn messages(&self, conversation_id: i64) -> Result<Vec<Message>> {
        let rows =
            sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id"))
                .bind(conversation_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(decode_rows(&rows, "message", message_from_row))
    }

    /// The path from the root to `leaf_id`, root first: the transcript of one branch.
    pub async fn branch(&self, leaf_id: i64) -> Result<Vec<Message>> {
        // The store cannot create a parent cycle (a parent exists before its child and is never changed); the depth
        // bound only stops the walk on a hand-made one instead of looping forever.
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE path (id, depth) AS ( \
                 SELECT id, 0 FROM messages WHERE id = ?1 \
                 UNION ALL \
                 SELECT m.parent_id, path.depth + 1 FROM path JOIN messages m ON m.id = path.id \
                 WHERE m.parent_id IS NOT NULL AND path.depth < 1000000 \
             ) \
             SELECT {MESSAGE_COLUMNS} FROM path JOIN messages USING (id) ORDER BY path.depth DESC",
            MESSAGE_COLUMNS = qualified(MESSAGE_COLUMNS, "messages")
        ))
        .bind(leaf_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(StoreError::MessageNotFound(leaf_id));
        }
        Ok(decode_rows(&rows, "message", message_from_row))
    }

    /// The messages directly under `parent_id` (`None`: the conversation's first messages), oldest first: the
    /// siblings a regenerate arrow moves between.
    pub async fn children(&self, conversation_id: i64, parent_id: Option<i64>) -> Result<Vec<Message>> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND parent_id IS ? ORDER BY id"
        ))
        .bind(conversation_id)
        .bind(parent_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(decode_rows(&rows, "message", message_from_row))
    }

    /// Stores which branch is on screen: `leaf_id` must be a message of this conversation.
    pub async fn set_active_leaf(&self, conversation_id: i64, leaf_id: i64) -> Result<()> {
        let mut write = self.begin_write().await?;
        check_message_in(&mut write.tx, conversation_id, leaf_id).await?;
        sqlx::query("UPDATE conversations SET active_leaf_id = ? WHERE id = ?")
            .bind(leaf_id)
            .bind(conversation_id)
            .execute(&mut *write.tx)
            .await?;
        write.commit().await
    }

    // ---- Compression markers ----

    /// Records a compression during `marker.message_id`; the conversation is that message's.
    pub async fn add_compression_marker(&self, marker: &NewCompressionMarker) -> Result<CompressionMarker> {
        let mut write = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO compression_markers (message_id, conversation_id, tokens_seen_at, slots_before, slots_after, \
             dropped_separators, dropped_other, bytes_freed, created_at) \
             SELECT id, conversation_id, ?, ?, ?, ?, ?, ?, ? FROM messages WHERE id = ? \
             RETURNING {MARKER_COLUMNS}"
        ))
        .bind(marker.tokens_seen_at)
        .bind(marker.slots_before)
        .bind(marker.slots_after)
        .bind(marker.dropped_separators)
        .bind(marker.dropped_other)
        .bind(marker.bytes_freed)
        .bind(now_ms())
        .bind(marker.message_id)
        .fetch_optional(&mut *write.tx)
        .await?
        .ok_or(StoreError::MessageNotFound(marker.message_id))?;
        let marker = marker_from_row(&row)?;
        write.commit().await?;
        Ok(marker)
    }

    /// The conversation's compression markers in the order they happened.
    pub async fn markers(&self, conversation_id: i64) -> Result<Vec<CompressionMarker>> {
        let rows = sqlx::query(&format!(
            "SELECT {MARKER_COLUMNS} FROM compression_markers WHERE conversation_id = ? ORDER BY id"
        ))
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(decode_rows(&rows, "compression marker", marker_from_row))
    }

    // ---- Whole conversations: export and import ----

    /// The conversation, all its messages and markers, read from one snapshot (a read transaction), so a reply
    /// streaming meanwhile cannot make the parts disagree.
    pub async fn full_conversation(&self, id: i64) -> Result<FullConversation> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::ConversationNotFound(id))?;
        let conversation = conversation_from_row(&row)?;
        let rows =
            sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id"))
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        let messages = decode_rows(&rows, "message", message_from_row);
        let rows = sqlx::query(&format!(
            "SELECT {MARKER_COLUMNS} FROM compression_markers WHERE conversation_id = ? ORDER BY id"
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let markers = decode_rows(&rows, "compression marker", marker_from_row);
        tx.commit().await?;
        Ok(FullConversation { conversation, messages, markers })
    }

    /// Inserts whole conversations in one transaction (all or nothing) and returns their new ids, in order.
    ///
    /// The ids inside `conversations` are the importer's own: the store assigns new ones and maps every
    /// `parent_id`, `active_leaf_id` and marker `message_id` through them (the `conversation_id` fields and marker
    /// ids are ignored). Timestamps, titles, settings, statuses and stats are kept as given, except that a message
    /// given as `streaming` is stored as `interrupted`: nothing is generating it. Messages are inserted in the
    /// given order, parents moved before their children where needed, so an export in id order imports in the
    /// same order. A duplicate id, a parent, leaf or marker message that is not in the conversation, or a parent
    /// cycle rejects the whole import.
    pub async fn import_conversations(&self, conversations: &[FullConversation]) -> Result<Vec<i64>> {
        let mut write = self.begin_write().await?;
        let mut new_ids = Vec::with_capacity(conversations.len());
        for full in conversations {
            new_ids.push(import_one(&mut write.tx, full).await?);
        }
        write.commit().await?;
        Ok(new_ids)
    }

    // ---- Search ----

    /// Full-text search over the titles and message text of conversations not in the trash, best matches first
    /// (FTS5's bm25), at most `limit` hits. Any input is safe: terms are quoted (see the `search` module), and
    /// input with nothing searchable gives no hits rather than an error.
    pub async fn search(&self, query: &str, limit: u32) -> Result<Vec<SearchHit>> {
        let Some(expression) = fts_match_expression(query) else {
            return Ok(Vec::new());
        };
        let start = SNIPPET_MATCH_START.to_string();
        let end = SNIPPET_MATCH_END.to_string();
        let rows = sqlx::query(
            "SELECT c.id AS conversation_id, NULL AS message_id, c.title AS title, \
                    snippet(conversations_fts, 0, ?2, ?3, '…', 16) AS snippet, bm25(conversations_fts) AS rank \
             FROM conversations_fts JOIN conversations c ON c.id = conversations_fts.rowid \
             WHERE conversations_fts MATCH ?1 AND c.deleted_at IS NULL \
             UNION ALL \
             SELECT m.conversation_id, m.id, c.title, \
                    snippet(messages_fts, 0, ?2, ?3, '…', 16), bm25(messages_fts) \
             FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid \
                  JOIN conversations c ON c.id = m.conversation_id \
             WHERE messages_fts MATCH ?1 AND c.deleted_at IS NULL \
             ORDER BY rank, conversation_id DESC, message_id \
             LIMIT ?4",
        )
        .bind(expression)
        .bind(start)
        .bind(end)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in &rows {
            hits.push(SearchHit {
                conversation_id: row.try_get("conversation_id")?,
                message_id: row.try_get("message_id")?,
                conversation_title: row.try_get("title")?,
                snippet: row.try_get::<Option<String>, _>("snippet")?.unwrap_or_default(),
            });
        }
        Ok(hits)
    }

    // ---- Diagnostics ----

    /// The pragmas in effect on one of the pool's connections.
    pub async fn connection_settings(&self) -> Result<ConnectionSettings> {
        let mut conn = self.pool.acquire().await?;
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await?;
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut *conn).await?;
        let busy_timeout_ms: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut *conn).await?;
        Ok(ConnectionSettings { journal_mode, synchronous, foreign_keys: foreign_keys != 0, busy_timeout_ms })
    }

    /// SQLite's `PRAGMA integrity_check` plus FTS5's own check of both indexes against their tables; `["ok"]`
    /// when all is well, otherwise the problems found.
    pub async fn integrity_check(&self) -> Result<Vec<String>> {
        let mut conn = self.pool.acquire().await?;
        let mut problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&mut *conn).await?;
        problems.retain(|line| line != "ok");
        for table in ["conversations_fts", "messages_fts"] {
            // 'integrity-check' with rank 1 also compares the index with the content table's current text; a
            // mismatch is reported as an error (SQLITE_CORRUPT_VTAB), not as rows.
            let check = format!("INSERT INTO {table} ({table}, rank) VALUES ('integrity-check', 1)");
            if let Err(error) = sqlx::query(&check).execute(&mut *conn).await {
                problems.push(format!("{table}: {error}"));
            }
        }
        if problems.is_empty() {
            problems.push("ok".to_owned());
        }
        Ok(problems)
    }
}

/// `a, b` -> `t.a, t.b`, for column lists used where a join makes bare names ambiguous.
fn qualified(columns: &str, table: &str) -> String {
    columns.split(',').map(|column| format!("{table}.{}", column.trim())).collect::<Vec<_>>().join(", ")
}

async fn check_message_in(tx: &mut Transaction<'static, Sqlite>, conversation_id: i64, message_id: i64) -> Result<()> {
    let owner: i64 = sqlx::query_scalar("SELECT conversation_id FROM messages WHERE id = ?")
        .bind(message_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::MessageNotFound(message_id))?;
    if owner != conversation_id {
        return Err(StoreError::WrongConversation { message_id, conversation_id });
    }
    Ok(())
}

/// Inserts a message as the conversation's new active leaf and bumps the conversation's `updated_at`.
async fn insert_message(
    tx: &mut Transaction<'static, Sqlite>,
    conversation_id: i64,
    parent_id: Option<i64>,
    role: Role,
    content: &str,
    status: MessageStatus,
) -> Result<Message> {
    let now = now_ms();
    let bumped = sqlx::query("UPDATE conversations SET updated_at = ? WHERE id = ?")
        .bind(now)
        .bind(conversation_id)
        .execute(&mut **tx)
        .await?;
    if bumped.rows_affected() == 0 {
        return Err(StoreError::ConversationNotFound(conversation_id));
    }
    if let Some(parent_id) = parent_id {
        check_message_in(tx, conversation_id, parent_id).await?;
    }
    let row = sqlx::query(&format!(
        "INSERT INTO messages (conversation_id, parent_id, role, content, status, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {MESSAGE_COLUMNS}"
    ))
    .bind(conversation_id)
    .bind(parent_id)
    .bind(role.as_str())
    .bind(content)
    .bind(status.as_str())
    .bind(now)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let message = message_from_row(&row)?;
    sqlx::query("UPDATE conversations SET active_leaf_id = ? WHERE id = ?")
        .bind(message.id)
        .bind(conversation_id)
        .execute(&mut **tx)
        .await?;
    Ok(message)
}

async fn import_one(tx: &mut Transaction<'static, Sqlite>, full: &FullConversation) -> Result<i64> {
    let order = insertion_order(&full.messages)?;
    let source = &full.conversation;
    let sampling = json_column(source.sampling.as_ref(), source.sampling_raw.as_deref(), "sampling")?;
    let conversation_id: i64 = sqlx::query_scalar(
        "INSERT INTO conversations (title, system_prompt, sampling, cache_profile, model_path, model_sha256, pinned, \
         created_at, updated_at, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&source.title)
    .bind(&source.system_prompt)
    .bind(sampling)
    .bind(&source.cache_profile)
    .bind(&source.model_path)
    .bind(&source.model_sha256)
    .bind(i64::from(source.pinned))
    .bind(source.created_at)
    .bind(source.updated_at)
    .bind(source.deleted_at)
    .fetch_one(&mut **tx)
    .await?;

    let mut new_id_of: HashMap<i64, i64> = HashMap::with_capacity(full.messages.len());
    for index in order {
        let message = &full.messages[index];
        // `insertion_order` guarantees the parent was inserted first.
        let parent_id = match message.parent_id {
            Some(old) => Some(*new_id_of.get(&old).ok_or_else(|| missing("parent", old))?),
            None => None,
        };
        let status = match message.status {
            MessageStatus::Streaming => MessageStatus::Interrupted,
            status => status,
        };
        let stats = json_column(message.stats.as_ref(), message.stats_raw.as_deref(), "stats")?;
        let new_id: i64 = sqlx::query_scalar(
            "INSERT INTO messages (conversation_id, parent_id, role, content, status, error, stats, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(conversation_id)
        .bind(parent_id)
        .bind(message.role.as_str())
        .bind(&message.content)
        .bind(status.as_str())
        .bind(&message.error)
        .bind(stats)
        .bind(message.created_at)
        .bind(message.updated_at)
        .fetch_one(&mut **tx)
        .await?;
        new_id_of.insert(message.id, new_id);
    }

    if let Some(old_leaf) = source.active_leaf_id {
        let leaf = *new_id_of.get(&old_leaf).ok_or_else(|| missing("active leaf", old_leaf))?;
        sqlx::query("UPDATE conversations SET active_leaf_id = ? WHERE id = ?")
            .bind(leaf)
            .bind(conversation_id)
            .execute(&mut **tx)
            .await?;
    }

    for marker in &full.markers {
        let message_id = *new_id_of.get(&marker.message_id).ok_or_else(|| missing("marker", marker.message_id))?;
        sqlx::query(
            "INSERT INTO compression_markers (message_id, conversation_id, tokens_seen_at, slots_before, \
             slots_after, dropped_separators, dropped_other, bytes_freed, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(message_id)
        .bind(conversation_id)
        .bind(marker.tokens_seen_at)
        .bind(marker.slots_before)
        .bind(marker.slots_after)
        .bind(marker.dropped_separators)
        .bind(marker.dropped_other)
        .bind(marker.bytes_freed)
        .bind(marker.created_at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(conversation_id)
}

fn missing(what: &str, old_id: i64) -> StoreError {
    StoreError::InvalidImport(format!("the {what} refers to message {old_id}, which the conversation does not hold"))
}

/// The order to insert `messages` in: the given order, except that a message's missing ancestors are inserted just
/// before it. Fails on duplicate ids, parents that are not in the list, and parent cycles.
fn insertion_order(messages: &[Message]) -> Result<Vec<usize>> {
    let mut index_of: HashMap<i64, usize> = HashMap::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        if index_of.insert(message.id, index).is_some() {
            return Err(StoreError::InvalidImport(format!("message id {} appears twice", message.id)));
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Waiting,
        OnPath,
        Placed,
    }
    let mut state = vec![State::Waiting; messages.len()];
    let mut order = Vec::with_capacity(messages.len());
    let mut path = Vec::new();
    for start in 0..messages.len() {
        // Walk up from `start` until a placed message or a root, then place the walked path root-first.
        let mut current = Some(start);
        while let Some(index) = current {
            match state[index] {
                State::Placed => break,
                State::OnPath => {
                    return Err(StoreError::InvalidImport(format!(
                        "message {} is its own ancestor",
                        messages[index].id
                    )))
                }
                State::Waiting => {
                    state[index] = State::OnPath;
                    path.push(index);
                    current = match messages[index].parent_id {
                        None => None,
                        Some(parent) => Some(*index_of.get(&parent).ok_or_else(|| missing("parent", parent))?),
                    };
                }
            }
        }
        while let Some(index) = path.pop() {
            state[index] = State::Placed;
            order.push(index);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64, parent_id: Option<i64>) -> Message {
        Message {
            id,
            conversation_id: 0,
            parent_id,
            role: Role::User,
            content: String::new(),
            status: MessageStatus::Done,
            error: None,
            stats: None,
            stats_raw: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn sorted_input_keeps_its_order() {
        let messages = [message(1, None), message(2, Some(1)), message(3, None), message(4, Some(2))];
        assert_eq!(insertion_order(&messages).expect("valid"), [0, 1, 2, 3]);
    }

    #[test]
    fn parents_move_before_children() {
        let messages = [message(30, Some(20)), message(20, Some(10)), message(10, None), message(40, Some(10))];
        assert_eq!(insertion_order(&messages).expect("valid"), [2, 1, 0, 3]);
    }

    #[test]
    fn bad_trees_are_rejected() {
        let cycle = [message(1, Some(2)), message(2, Some(1))];
        assert!(matches!(insertion_order(&cycle), Err(StoreError::InvalidImport(_))));
        let self_parent = [message(1, Some(1))];
        assert!(matches!(insertion_order(&self_parent), Err(StoreError::InvalidImport(_))));
        let orphan = [message(1, Some(9))];
        assert!(matches!(insertion_order(&orphan), Err(StoreError::InvalidImport(_))));
        let duplicate = [message(1, None), message(1, None)];
        assert!(matches!(insertion_order(&duplicate), Err(StoreError::InvalidImport(_))));
    }

    #[test]
    fn qualified_columns() {
        assert_eq!(qualified("id, title", "c"), "c.id, c.title");
    }
}
