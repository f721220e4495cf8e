-- sepchat history schema, version 1.
--
-- This file is shipped: never edit it. Change the schema by adding 0002_*.sql and its sha256 to
-- crates/sepchat-store/tests/migrations.rs.
--
-- Timestamps are unix milliseconds (UTC) in INTEGER columns. Ids are AUTOINCREMENT so that an id is never reused
-- after a delete: the UI, undo windows and exported files may still hold an old id.

CREATE TABLE conversations (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    title          TEXT    NOT NULL DEFAULT '',
    system_prompt  TEXT,
    -- JSON object (temperature, top_p, top_k, min_p, repeat_penalty, max_tokens, seed, ...); NULL: app defaults.
    sampling       TEXT,
    -- A cache spec string such as 'sep:a=4,s=256,w=1024,c=2048'; NULL: app default.
    cache_profile  TEXT,
    model_path     TEXT,
    model_sha256   TEXT,
    pinned         INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    -- The leaf of the branch the user last looked at, so branch switching survives a restart.
    active_leaf_id INTEGER REFERENCES messages (id) ON DELETE SET NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    -- Set when the conversation is moved to the trash (undo window); purged later.
    deleted_at     INTEGER
);

CREATE INDEX conversations_listing ON conversations (deleted_at, pinned DESC, updated_at DESC);

-- Messages form a tree: regenerating adds a sibling, editing a user message starts a branch.
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    parent_id       INTEGER REFERENCES messages (id) ON DELETE CASCADE,
    role            TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content         TEXT    NOT NULL DEFAULT '',
    status          TEXT    NOT NULL CHECK (status IN ('streaming', 'done', 'stopped', 'interrupted', 'error')),
    error           TEXT,
    -- JSON object: time to first token, prefill/decode tokens per second, tokens in/out, stop reason, KV slots
    -- and bytes after the turn. NULL for messages without a generation (user, system, imported without stats).
    stats           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX messages_by_parent ON messages (parent_id);
-- Crash recovery looks for rows left streaming on every start; this keeps that lookup off a table scan.
CREATE INDEX messages_streaming ON messages (status) WHERE status = 'streaming';

-- A parent must belong to the same conversation; the store checks this too, the triggers keep raw SQL honest.
CREATE TRIGGER messages_parent_same_conversation_insert
BEFORE INSERT ON messages
WHEN NEW.parent_id IS NOT NULL
    AND (SELECT conversation_id FROM messages WHERE id = NEW.parent_id) IS NOT NEW.conversation_id
BEGIN
    SELECT RAISE(ABORT, 'message parent belongs to another conversation');
END;

CREATE TRIGGER messages_parent_same_conversation_update
BEFORE UPDATE OF parent_id, conversation_id ON messages
WHEN NEW.parent_id IS NOT NULL
    AND (SELECT conversation_id FROM messages WHERE id = NEW.parent_id) IS NOT NEW.conversation_id
BEGIN
    SELECT RAISE(ABORT, 'message parent belongs to another conversation');
END;

CREATE TRIGGER conversations_active_leaf_same_conversation
BEFORE UPDATE OF active_leaf_id ON conversations
WHEN NEW.active_leaf_id IS NOT NULL
    AND (SELECT conversation_id FROM messages WHERE id = NEW.active_leaf_id) IS NOT NEW.id
BEGIN
    SELECT RAISE(ABORT, 'active leaf belongs to another conversation');
END;

-- Where SepCache compressed the conversation's KV cache, shown as a marker in the transcript.
CREATE TABLE compression_markers (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The message being generated (or prefilled) when the compression happened.
    message_id         INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    conversation_id    INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    tokens_seen_at     INTEGER NOT NULL,
    slots_before       INTEGER NOT NULL,
    slots_after        INTEGER NOT NULL,
    dropped_separators INTEGER NOT NULL,
    dropped_other      INTEGER NOT NULL,
    bytes_freed        INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL
);

CREATE INDEX compression_markers_by_conversation ON compression_markers (conversation_id, id);
CREATE INDEX compression_markers_by_message ON compression_markers (message_id);

-- Full-text search. External-content FTS5 tables index the text without storing a second copy; the triggers below
-- are the only writers. An external-content index must be told the exact old text to remove it, so every change
-- of the indexed column deletes the old row (with OLD's text) and inserts the new one; updates that do not touch
-- the text (status, timestamps, streaming flushes of other columns) do not fire them.
CREATE VIRTUAL TABLE conversations_fts USING fts5(
    title,
    content = 'conversations',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER conversations_fts_insert AFTER INSERT ON conversations
BEGIN
    INSERT INTO conversations_fts (rowid, title) VALUES (NEW.id, NEW.title);
END;

CREATE TRIGGER conversations_fts_delete AFTER DELETE ON conversations
BEGIN
    INSERT INTO conversations_fts (conversations_fts, rowid, title) VALUES ('delete', OLD.id, OLD.title);
END;

CREATE TRIGGER conversations_fts_update AFTER UPDATE OF title ON conversations
BEGIN
    INSERT INTO conversations_fts (conversations_fts, rowid, title) VALUES ('delete', OLD.id, OLD.title);
    INSERT INTO conversations_fts (rowid, title) VALUES (NEW.id, NEW.title);
END;

CREATE VIRTUAL TABLE messages_fts USING fts5(
    content,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (NEW.id, NEW.content);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', OLD.id, OLD.content);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', OLD.id, OLD.content);
    INSERT INTO messages_fts (rowid, content) VALUES (NEW.id, NEW.content);
END;
