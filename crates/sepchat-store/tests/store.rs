//! The store against real SQLite files in a temporary directory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sepchat_store::{
    FullConversation, MessageStats, MessageStatus, NewCompressionMarker, NewConversation, Role, Sampling, Store,
    StoreError, SNIPPET_MATCH_END, SNIPPET_MATCH_START,
};
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// Every shipped migration and its sha256. Migrations are append-only: adding one means adding its line here;
/// changing a shipped file is forbidden (databases in the field already ran it, and sqlx refuses to open a
/// database whose applied migration no longer matches its file).
const SHIPPED_MIGRATIONS: &[(&str, &str)] =
    &[("0001_init.sql", "24726e225a1d89b112050ce232a912c4e11492e89a365bd94c9ec56d5e729713")];

fn migrations_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
}

async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("nested/dir/sepchat.sqlite3")).await.expect("open store");
    (dir, store)
}

/// A connection of our own, as a hand-editing user or another program would have, bypassing the store's API.
async fn raw_connection(path: &Path) -> sqlx::SqliteConnection {
    SqliteConnectOptions::new().filename(path).connect().await.expect("raw connection")
}

async fn assert_integrity(store: &Store) {
    assert_eq!(store.integrity_check().await.expect("integrity check"), ["ok"]);
}

fn new_conversation(title: &str) -> NewConversation {
    NewConversation { title: title.to_owned(), ..NewConversation::default() }
}

#[tokio::test]
async fn migrations_apply_and_shipped_files_never_change() {
    let mut on_disk = BTreeMap::new();
    for entry in std::fs::read_dir(migrations_dir()).expect("migrations dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|name| name.to_str()).expect("utf-8 name").to_owned();
        let digest = Sha256::digest(std::fs::read(&path).expect("read migration"));
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        on_disk.insert(name, hex);
    }
    let pinned: BTreeMap<String, String> =
        SHIPPED_MIGRATIONS.iter().map(|(name, hash)| (name.to_string(), hash.to_string())).collect();
    assert_eq!(on_disk, pinned, "a shipped migration changed, or a new one lacks its hash in SHIPPED_MIGRATIONS");

    let (dir, store) = temp_store().await;
    let path = store.path().to_path_buf();
    store.close().await;
    let mut conn = raw_connection(&path).await;
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .expect("query");
    assert_eq!(applied, [(1, true)]);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN \
         ('conversations', 'messages', 'compression_markers', 'conversations_fts', 'messages_fts') ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .expect("query");
    assert_eq!(tables, ["compression_markers", "conversations", "conversations_fts", "messages", "messages_fts"]);
    conn.close().await.expect("close");
    // Opening again finds everything applied and changes nothing.
    let store = Store::open(&path).await.expect("reopen");
    assert_integrity(&store).await;
    drop(dir);
}

#[tokio::test]
async fn connection_settings_are_in_effect() {
    let (_dir, store) = temp_store().await;
    let settings = store.connection_settings().await.expect("settings");
    assert_eq!(settings.journal_mode, "wal");
    assert_eq!(settings.synchronous, 1, "NORMAL");
    assert!(settings.foreign_keys);
    assert_eq!(settings.busy_timeout_ms, 5000);
}

#[tokio::test]
async fn default_data_dir_honours_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::env::set_var("SEPCHAT_DATA_DIR", dir.path());
    assert_eq!(sepchat_store::default_data_dir().as_deref(), Some(dir.path()));
    assert_eq!(sepchat_store::default_database_path(), Some(dir.path().join("sepchat.sqlite3")));
    std::env::remove_var("SEPCHAT_DATA_DIR");
    let fallback = sepchat_store::default_data_dir().expect("a home directory");
    assert!(fallback.ends_with("sepchat"), "{}", fallback.display());
}

#[tokio::test]
async fn streaming_rows_become_interrupted_on_open_with_text_kept() {
    let (_dir, store) = temp_store().await;
    let path = store.path().to_path_buf();
    assert_eq!(store.recovered_on_open(), 0);
    let conversation = store.create_conversation(new_conversation("crash")).await.expect("create");
    let user = store
        .add_message(conversation.id, None, Role::User, "Tell me a story", MessageStatus::Done)
        .await
        .expect("user message");
    let reply = store.start_assistant_message(user.id).await.expect("start reply");
    assert_eq!(reply.status, MessageStatus::Streaming);
    assert!(store.update_streaming_text(reply.id, "Once upon a").await.expect("flush"));
    // The app dies here: the pool is dropped without finishing the reply.
    drop(store);

    let store = Store::open(&path).await.expect("reopen");
    assert_eq!(store.recovered_on_open(), 1);
    let recovered = store.get_message(reply.id).await.expect("message");
    assert_eq!(recovered.status, MessageStatus::Interrupted);
    assert_eq!(recovered.content, "Once upon a");
    assert_eq!(store.get_message(user.id).await.expect("message").status, MessageStatus::Done);
    // A late flush from the dead generation could not touch it any more.
    assert!(!store.update_streaming_text(reply.id, "Once upon a time").await.expect("flush"));
    drop(store);
    assert_eq!(Store::open(&path).await.expect("reopen").recovered_on_open(), 0);
}

#[tokio::test]
async fn finished_messages_keep_status_text_and_stats() {
    let (_dir, store) = temp_store().await;
    let conversation = store.create_conversation(new_conversation("stats")).await.expect("create");
    let user =
        store.add_message(conversation.id, None, Role::User, "Hi", MessageStatus::Done).await.expect("user message");
    let reply = store.start_assistant_message(user.id).await.expect("start");
    let stats = MessageStats {
        time_to_first_token_ms: Some(12.5),
        prefill_tokens_per_s: Some(400.0),
        decode_tokens_per_s: Some(45.6),
        tokens_in: Some(20),
        tokens_out: Some(3),
        stop_reason: Some("eos".into()),
        kv_slots: Some(23),
        kv_bytes: Some(23 * 30 * 2 * 3 * 64 * 2),
        ..MessageStats::default()
    };
    let finished =
        store.finish_message(reply.id, MessageStatus::Stopped, "Hello!", None, Some(&stats)).await.expect("finish");
    assert_eq!(finished.status, MessageStatus::Stopped);
    assert_eq!(finished.content, "Hello!");
    assert_eq!(store.get_message(reply.id).await.expect("read").stats, Some(stats));
    assert!(!store.update_streaming_text(reply.id, "late").await.expect("late flush"));
    assert_eq!(store.get_message(reply.id).await.expect("read").content, "Hello!");

    let failed = store.start_assistant_message(user.id).await.expect("start");
    let failed = store
        .finish_message(failed.id, MessageStatus::Error, "Hel", Some("the worker panicked"), None)
        .await
        .expect("finish");
    assert_eq!((failed.status, failed.error.as_deref()), (MessageStatus::Error, Some("the worker panicked")));
    assert!(matches!(
        store.finish_message(failed.id, MessageStatus::Streaming, "", None, None).await,
        Err(StoreError::FinishAsStreaming(_))
    ));
    assert!(matches!(
        store.finish_message(9999, MessageStatus::Done, "", None, None).await,
        Err(StoreError::MessageNotFound(9999))
    ));
}

#[tokio::test]
async fn the_message_tree_branches_and_remembers_the_active_leaf() {
    let (_dir, store) = temp_store().await;
    let conversation = store.create_conversation(new_conversation("tree")).await.expect("create");
    let id = conversation.id;
    let system = store.add_message(id, None, Role::System, "Be brief.", MessageStatus::Done).await.expect("system");
    let user = store.add_message(id, Some(system.id), Role::User, "2+2?", MessageStatus::Done).await.expect("user");
    let first = store.start_assistant_message(user.id).await.expect("reply");
    store.finish_message(first.id, MessageStatus::Done, "4", None, None).await.expect("finish");
    // Regenerate: a sibling reply, which becomes the active leaf.
    let second = store.start_assistant_message(user.id).await.expect("regenerate");
    store.finish_message(second.id, MessageStatus::Done, "Four.", None, None).await.expect("finish");
    assert_eq!(store.get_conversation(id).await.expect("read").active_leaf_id, Some(second.id));
    // Edit the user message: a new branch under the system message.
    let edited = store.add_message(id, Some(system.id), Role::User, "3+3?", MessageStatus::Done).await.expect("edit");
    let third = store.start_assistant_message(edited.id).await.expect("reply");

    let ids = |messages: Vec<sepchat_store::Message>| messages.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(store.children(id, Some(user.id)).await.expect("children")), [first.id, second.id]);
    assert_eq!(ids(store.children(id, Some(system.id)).await.expect("children")), [user.id, edited.id]);
    assert_eq!(ids(store.children(id, None).await.expect("roots")), [system.id]);
    assert_eq!(ids(store.branch(second.id).await.expect("branch")), [system.id, user.id, second.id]);
    assert_eq!(ids(store.branch(third.id).await.expect("branch")), [system.id, edited.id, third.id]);
    assert_eq!(ids(store.branch(system.id).await.expect("branch")), [system.id]);
    assert_eq!(store.messages(id).await.expect("all").len(), 6);

    assert_eq!(store.get_conversation(id).await.expect("read").active_leaf_id, Some(third.id));
    store.set_active_leaf(id, first.id).await.expect("switch branch");
    assert_eq!(store.get_conversation(id).await.expect("read").active_leaf_id, Some(first.id));

    // Ids from another conversation or nowhere are refused, and change nothing.
    let other = store.create_conversation(new_conversation("other")).await.expect("create");
    assert!(matches!(
        store.set_active_leaf(other.id, first.id).await,
        Err(StoreError::WrongConversation { message_id, conversation_id }) if message_id == first.id && conversation_id == other.id
    ));
    assert!(matches!(
        store.add_message(other.id, Some(user.id), Role::User, "x", MessageStatus::Done).await,
        Err(StoreError::WrongConversation { .. })
    ));
    assert!(matches!(
        store.add_message(4242, None, Role::User, "x", MessageStatus::Done).await,
        Err(StoreError::ConversationNotFound(4242))
    ));
    assert!(matches!(store.start_assistant_message(4242).await, Err(StoreError::MessageNotFound(4242))));
    assert!(matches!(store.branch(4242).await, Err(StoreError::MessageNotFound(4242))));
    assert!(store.messages(other.id).await.expect("read").is_empty());
    assert_integrity(&store).await;
}

#[tokio::test]
async fn conversations_list_pinned_first_then_most_recent() {
    let (_dir, store) = temp_store().await;
    let sampling = Sampling { temperature: Some(0.7), seed: Some(42), ..Sampling::default() };
    let first = store
        .create_conversation(NewConversation {
            title: "first".into(),
            system_prompt: Some("You are a helpful assistant".into()),
            sampling: Some(sampling.clone()),
            cache_profile: Some("sep:a=4,s=256,w=1024,c=2048".into()),
            model_path: Some("/models/smol.gguf".into()),
            model_sha256: Some("b179c9".into()),
        })
        .await
        .expect("create");
    assert_eq!(first.sampling, Some(sampling));
    assert_eq!(first.cache_profile.as_deref(), Some("sep:a=4,s=256,w=1024,c=2048"));
    tokio::time::sleep(Duration::from_millis(3)).await;
    let second = store.create_conversation(new_conversation("second")).await.expect("create");
    tokio::time::sleep(Duration::from_millis(3)).await;
    let third = store.create_conversation(new_conversation("third")).await.expect("create");
    let titles = |list: Vec<sepchat_store::Conversation>| list.into_iter().map(|c| c.title).collect::<Vec<_>>();
    assert_eq!(titles(store.list_conversations().await.expect("list")), ["third", "second", "first"]);

    store.set_pinned(first.id, true).await.expect("pin");
    assert_eq!(titles(store.list_conversations().await.expect("list")), ["first", "third", "second"]);
    tokio::time::sleep(Duration::from_millis(3)).await;
    store.add_message(second.id, None, Role::User, "bump", MessageStatus::Done).await.expect("message");
    assert_eq!(titles(store.list_conversations().await.expect("list")), ["first", "second", "third"]);

    store.rename(third.id, "renamed").await.expect("rename");
    store.set_system_prompt(third.id, Some("Answer in French.")).await.expect("prompt");
    let new_sampling = Sampling { top_k: Some(40), max_tokens: Some(256), ..Sampling::default() };
    store.set_sampling(third.id, Some(&new_sampling)).await.expect("sampling");
    store.set_cache_profile(third.id, Some("dense")).await.expect("cache");
    store.set_model(third.id, Some("/m.gguf"), Some("abc")).await.expect("model");
    let third = store.get_conversation(third.id).await.expect("read");
    assert_eq!(third.title, "renamed");
    assert_eq!(third.system_prompt.as_deref(), Some("Answer in French."));
    assert_eq!(third.sampling, Some(new_sampling));
    assert_eq!(third.cache_profile.as_deref(), Some("dense"));
    assert_eq!((third.model_path.as_deref(), third.model_sha256.as_deref()), (Some("/m.gguf"), Some("abc")));
    store.set_sampling(third.id, None).await.expect("clear sampling");
    assert_eq!(store.get_conversation(third.id).await.expect("read").sampling, None);
    assert!(matches!(store.rename(777, "x").await, Err(StoreError::ConversationNotFound(777))));
}

#[tokio::test]
async fn trash_restore_and_purge() {
    let (_dir, store) = temp_store().await;
    let keep = store.create_conversation(new_conversation("keep")).await.expect("create");
    let undo = store.create_conversation(new_conversation("undo me")).await.expect("create");
    let gone = store.create_conversation(new_conversation("gone")).await.expect("create");
    store.add_message(gone.id, None, Role::User, "zebra", MessageStatus::Done).await.expect("message");

    store.trash_conversation(undo.id).await.expect("trash");
    store.trash_conversation(gone.id).await.expect("trash");
    let listed: Vec<i64> = store.list_conversations().await.expect("list").iter().map(|c| c.id).collect();
    assert_eq!(listed, [keep.id]);
    let trashed: Vec<i64> = store.list_trashed().await.expect("trash").iter().map(|c| c.id).collect();
    assert_eq!(trashed.len(), 2);
    assert!(store.get_conversation(undo.id).await.expect("still readable").deleted_at.is_some());
    assert!(store.search("zebra", 10).await.expect("search").is_empty(), "trashed conversations are not searched");

    store.restore_conversation(undo.id).await.expect("restore");
    let restored = store.get_conversation(undo.id).await.expect("read");
    assert_eq!((restored.deleted_at, restored.updated_at), (None, undo.updated_at));

    // Nothing was trashed an hour ago; everything trashed is at least zero old.
    assert_eq!(store.purge_trashed(Duration::from_secs(3600)).await.expect("purge"), 0);
    assert_eq!(store.purge_trashed(Duration::ZERO).await.expect("purge"), 1);
    assert!(matches!(store.get_conversation(gone.id).await, Err(StoreError::ConversationNotFound(_))));
    assert_eq!(store.list_conversations().await.expect("list").len(), 2);
    assert_integrity(&store).await;
}

#[tokio::test]
async fn deleting_a_conversation_cascades_to_messages_markers_and_search() {
    let (_dir, store) = temp_store().await;
    let path = store.path().to_path_buf();
    let doomed = store.create_conversation(new_conversation("doomed platypus")).await.expect("create");
    let survivor = store.create_conversation(new_conversation("survivor")).await.expect("create");
    let user =
        store.add_message(doomed.id, None, Role::User, "platypus facts", MessageStatus::Done).await.expect("msg");
    let reply = store.start_assistant_message(user.id).await.expect("reply");
    store.update_streaming_text(reply.id, "The platypus lays eggs").await.expect("flush");
    let marker = NewCompressionMarker {
        message_id: reply.id,
        tokens_seen_at: 2100,
        slots_before: 2048,
        slots_after: 1300,
        dropped_separators: 40,
        dropped_other: 708,
        bytes_freed: 748 * 30 * 2 * 3 * 64 * 2,
    };
    let stored = store.add_compression_marker(&marker).await.expect("marker");
    assert_eq!((stored.conversation_id, stored.message_id, stored.slots_after), (doomed.id, reply.id, 1300));
    assert_eq!(store.markers(doomed.id).await.expect("markers"), [stored]);
    store.add_message(survivor.id, None, Role::User, "platypus too", MessageStatus::Done).await.expect("msg");
    assert_eq!(store.search("platypus", 10).await.expect("search").len(), 4);

    store.delete_conversation(doomed.id).await.expect("delete");
    assert!(matches!(store.delete_conversation(doomed.id).await, Err(StoreError::ConversationNotFound(_))));
    assert!(store.messages(doomed.id).await.expect("read").is_empty());
    assert!(store.markers(doomed.id).await.expect("read").is_empty());
    let hits = store.search("platypus", 10).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].conversation_id, survivor.id);

    let mut conn = raw_connection(&path).await;
    let orphans: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM messages WHERE conversation_id = ?1) \
              + (SELECT count(*) FROM compression_markers WHERE conversation_id = ?1)",
    )
    .bind(doomed.id)
    .fetch_one(&mut conn)
    .await
    .expect("count");
    assert_eq!(orphans, 0);
    conn.close().await.expect("close");
    assert_integrity(&store).await;
}

#[tokio::test]
async fn search_finds_titles_and_text_including_streaming_updates() {
    let (_dir, store) = temp_store().await;
    let travel = store.create_conversation(new_conversation("Trip to Lisbon")).await.expect("create");
    let cooking = store.create_conversation(new_conversation("Dinner ideas")).await.expect("create");
    let user = store
        .add_message(cooking.id, None, Role::User, "How do I cook risotto?", MessageStatus::Done)
        .await
        .expect("msg");

    let hits = store.search("lisbon", 10).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].conversation_id, hits[0].message_id), (travel.id, None));
    assert_eq!(hits[0].snippet, format!("Trip to {SNIPPET_MATCH_START}Lisbon{SNIPPET_MATCH_END}"));

    // Prefix and diacritic-insensitive matching, ANDed terms.
    let hits = store.search("RISOT cook", 10).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].conversation_id, hits[0].message_id), (cooking.id, Some(user.id)));
    assert_eq!(hits[0].conversation_title, "Dinner ideas");
    assert!(store.search("risotto lisbon", 10).await.expect("search").is_empty());

    // Text flushed while streaming is searchable right after the flush, and the old text no longer matches.
    let reply = store.start_assistant_message(user.id).await.expect("reply");
    store.update_streaming_text(reply.id, "Toast the arborio").await.expect("flush");
    assert_eq!(store.search("arborio", 10).await.expect("search").len(), 1);
    store.update_streaming_text(reply.id, "Toast the carnaroli rice").await.expect("flush");
    assert!(store.search("arborio", 10).await.expect("search").is_empty());
    let hits = store.search("carnaroli", 10).await.expect("search");
    assert_eq!(hits.iter().map(|hit| hit.message_id).collect::<Vec<_>>(), [Some(reply.id)]);
    store.finish_message(reply.id, MessageStatus::Done, "Use café-style saffron", None, None).await.expect("finish");
    assert!(store.search("carnaroli", 10).await.expect("search").is_empty());
    assert_eq!(store.search("cafe", 10).await.expect("search").len(), 1);

    // Renaming re-indexes the title.
    store.rename(travel.id, "Trip to Porto").await.expect("rename");
    assert!(store.search("lisbon", 10).await.expect("search").is_empty());
    assert_eq!(store.search("porto", 10).await.expect("search").len(), 1);

    // The limit applies to titles and messages together.
    for n in 0..5 {
        store
            .add_message(cooking.id, None, Role::User, &format!("porto wine {n}"), MessageStatus::Done)
            .await
            .expect("msg");
    }
    assert_eq!(store.search("porto", 3).await.expect("search").len(), 3);
    assert_eq!(store.search("porto", 100).await.expect("search").len(), 6);
    assert_integrity(&store).await;
}

#[tokio::test]
async fn hostile_search_input_never_errors() {
    let (_dir, store) = temp_store().await;
    let conversation = store.create_conversation(new_conversation("quotes \"and\" stuff")).await.expect("create");
    store
        .add_message(conversation.id, None, Role::User, r#"He said "AND OR NOT" near(the) end*"#, MessageStatus::Done)
        .await
        .expect("msg");
    for query in [
        "\"",
        "\"\"",
        "AND OR",
        "AND",
        "OR",
        "NOT",
        "*",
        "NEAR(",
        "NEAR(a b",
        "a NEAR/2 b",
        "(",
        ")",
        "-",
        "+",
        "^",
        "title:quotes",
        "{title content}: x",
        "'",
        "\\",
        "%",
        "\u{0}",
        "a\"b",
        "\"unterminated",
        "emoji 🦀",
        "",
        "   ",
    ] {
        if let Err(error) = store.search(query, 10).await {
            panic!("search for {query:?} failed: {error:?}");
        }
    }
    // Operator words are ordinary words.
    assert_eq!(store.search("AND OR", 10).await.expect("search").len(), 1);
    assert_eq!(store.search("near(the", 10).await.expect("search").len(), 1);
    assert_eq!(store.search("\"and\"", 10).await.expect("search").len(), 2, "title and message");
}

#[tokio::test]
async fn import_remaps_ids_and_keeps_everything_else() {
    let (_dir, store) = temp_store().await;
    let original = store
        .create_conversation(NewConversation {
            title: "exported".into(),
            sampling: Some(Sampling { temperature: Some(0.2), ..Sampling::default() }),
            cache_profile: Some("sep:a=4,s=256,w=1024,c=2048".into()),
            ..NewConversation::default()
        })
        .await
        .expect("create");
    let user = store.add_message(original.id, None, Role::User, "Q", MessageStatus::Done).await.expect("msg");
    let first = store.start_assistant_message(user.id).await.expect("reply");
    let stats = MessageStats { tokens_out: Some(1), stop_reason: Some("eos".into()), ..MessageStats::default() };
    store.finish_message(first.id, MessageStatus::Done, "A", None, Some(&stats)).await.expect("finish");
    let second = store.start_assistant_message(user.id).await.expect("regenerate");
    store.finish_message(second.id, MessageStatus::Stopped, "B", None, None).await.expect("finish");
    store
        .add_compression_marker(&NewCompressionMarker { message_id: second.id, slots_before: 9, ..Default::default() })
        .await
        .expect("marker");
    store.set_active_leaf(original.id, first.id).await.expect("leaf");
    store.set_pinned(original.id, true).await.expect("pin");
    let exported = store.full_conversation(original.id).await.expect("export");
    assert_eq!(exported.messages.len(), 3);

    // An importer's own ids: arbitrary numbers, children listed before parents.
    let mut document = exported.clone();
    let renumber: HashMap<i64, i64> = [(user.id, 900), (first.id, 500), (second.id, 700)].into();
    for message in &mut document.messages {
        message.id = renumber[&message.id];
        message.parent_id = message.parent_id.map(|parent| renumber[&parent]);
    }
    document.messages.reverse();
    document.conversation.active_leaf_id = Some(500);
    document.markers[0].message_id = 700;
    // A message exported mid-stream is imported as interrupted.
    document.messages[0].status = MessageStatus::Streaming;

    let ids = store.import_conversations(&[document.clone(), exported.clone()]).await.expect("import");
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| *id != original.id));

    for (new_id, source) in ids.iter().zip([&document, &exported]) {
        let imported = store.full_conversation(*new_id).await.expect("read import");
        assert_eq!(normalized(&imported), normalized(source));
        assert!(imported.messages.iter().all(|m| m.conversation_id == *new_id));
        assert!(imported.messages.iter().all(|m| !exported.messages.iter().any(|e| e.id == m.id)));
    }
    // Re-exporting the import of an export gives the same document, ids aside.
    let again = store.full_conversation(ids[1]).await.expect("read import");
    assert_eq!(normalized(&again), normalized(&exported));
    assert_eq!(again.conversation.created_at, exported.conversation.created_at);
    assert_eq!(again.messages[1].stats, Some(stats));

    // A broken document is refused as a whole: the valid conversation before it is not kept either.
    let before = store.list_conversations().await.expect("list").len();
    let mut broken = exported.clone();
    broken.messages[1].parent_id = Some(123_456);
    assert!(matches!(store.import_conversations(&[exported.clone(), broken]).await, Err(StoreError::InvalidImport(_))));
    let mut bad_leaf = exported.clone();
    bad_leaf.conversation.active_leaf_id = Some(-1);
    assert!(matches!(store.import_conversations(&[bad_leaf]).await, Err(StoreError::InvalidImport(_))));
    assert_eq!(store.list_conversations().await.expect("list").len(), before);
    assert_integrity(&store).await;
}

/// A conversation with every id replaced by its position, so two copies with different ids compare equal, and
/// `streaming` read as the `interrupted` an import stores.
fn normalized(full: &FullConversation) -> FullConversation {
    let mut full = full.clone();
    let mut order: Vec<usize> = (0..full.messages.len()).collect();
    // Tree order that does not depend on ids: by depth, then content.
    let depth_of = |index: usize| {
        let mut depth = 0;
        let mut parent = full.messages[index].parent_id;
        while let Some(id) = parent {
            depth += 1;
            parent = full.messages.iter().find(|m| m.id == id).and_then(|m| m.parent_id);
        }
        depth
    };
    order.sort_by_key(|&index| (depth_of(index), full.messages[index].content.clone()));
    let position: HashMap<i64, i64> =
        order.iter().enumerate().map(|(position, &index)| (full.messages[index].id, position as i64)).collect();
    let mut messages: Vec<_> = order.iter().map(|&index| full.messages[index].clone()).collect();
    for message in &mut messages {
        message.id = position[&message.id];
        message.parent_id = message.parent_id.map(|parent| position[&parent]);
        message.conversation_id = 0;
        if message.status == MessageStatus::Streaming {
            message.status = MessageStatus::Interrupted;
        }
    }
    full.messages = messages;
    for marker in &mut full.markers {
        marker.id = 0;
        marker.conversation_id = 0;
        marker.message_id = position[&marker.message_id];
    }
    full.conversation.id = 0;
    full.conversation.active_leaf_id = full.conversation.active_leaf_id.map(|leaf| position[&leaf]);
    full
}

#[tokio::test]
async fn a_corrupt_row_does_not_hide_the_others() {
    let (_dir, store) = temp_store().await;
    let path = store.path().to_path_buf();
    let conversation = store.create_conversation(new_conversation("survives")).await.expect("create");
    let good = store.add_message(conversation.id, None, Role::User, "fine", MessageStatus::Done).await.expect("msg");

    let mut conn = raw_connection(&path).await;
    // A newer app's status and broken JSON: the CHECK constraint has to be switched off to write them at all.
    sqlx::query("PRAGMA ignore_check_constraints = ON").execute(&mut conn).await.expect("pragma");
    sqlx::query(
        "INSERT INTO messages (conversation_id, parent_id, role, content, status, stats, created_at, updated_at) \
         VALUES (?1, ?2, 'assistant', 'odd reply', 'exploded', '{not json', 1, 1), \
                (?1, ?2, 'narrator', 'odd role', 'done', '[1, 2]', 2, 2), \
                (?1, ?2, 'assistant', X'FF00', 'done', NULL, 3, 3)",
    )
    .bind(conversation.id)
    .bind(good.id)
    .execute(&mut conn)
    .await
    .expect("insert corrupt rows");
    sqlx::query("UPDATE conversations SET sampling = 'temperature=hot' WHERE id = ?")
        .bind(conversation.id)
        .execute(&mut conn)
        .await
        .expect("corrupt sampling");
    conn.close().await.expect("close");

    let messages = store.messages(conversation.id).await.expect("messages still readable");
    // The row whose text is a blob cannot be decoded and is skipped; the others are all there.
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0].content, "fine");
    let odd = &messages[1];
    assert_eq!((odd.content.as_str(), odd.status), ("odd reply", MessageStatus::Error));
    assert_eq!((odd.stats.as_ref(), odd.stats_raw.as_deref()), (None, Some("{not json")));
    let odd_role = &messages[2];
    assert_eq!((odd_role.role, odd_role.stats_raw.as_deref()), (Role::User, Some("[1, 2]")));
    assert_eq!(store.branch(odd.id).await.expect("branch").len(), 2);
    assert_eq!(store.children(conversation.id, Some(good.id)).await.expect("children").len(), 2);

    let listed = store.list_conversations().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].sampling.as_ref(), listed[0].sampling_raw.as_deref()), (None, Some("temperature=hot")));
    // Export keeps the raw text and an import writes it back unchanged.
    let exported = store.full_conversation(conversation.id).await.expect("export");
    let imported = store.import_conversations(&[exported]).await.expect("import");
    let again = store.get_conversation(imported[0]).await.expect("read");
    assert_eq!(again.sampling_raw.as_deref(), Some("temperature=hot"));
}

#[tokio::test]
async fn integrity_check_reports_a_stale_search_index() {
    let (_dir, store) = temp_store().await;
    let path = store.path().to_path_buf();
    let conversation = store.create_conversation(new_conversation("index")).await.expect("create");
    store.add_message(conversation.id, None, Role::User, "indexed text", MessageStatus::Done).await.expect("msg");
    assert_integrity(&store).await;
    // Without its trigger, an edit leaves the index describing the old text.
    let mut conn = raw_connection(&path).await;
    sqlx::query("DROP TRIGGER messages_fts_update").execute(&mut conn).await.expect("drop trigger");
    sqlx::query("UPDATE messages SET content = 'other words'").execute(&mut conn).await.expect("update");
    conn.close().await.expect("close");
    let problems = store.integrity_check().await.expect("integrity check");
    assert!(problems.len() == 1 && problems[0].starts_with("messages_fts"), "{problems:?}");
}

/// The acceptance test: 32 tasks writing through one `Store` and 4 more with their own `Store` on the same file
/// finish without `database is locked`, and every row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_see_database_is_locked() {
    const SHARED_WRITERS: usize = 32;
    const OWN_STORE_WRITERS: usize = 4;
    const MESSAGES_PER_WRITER: usize = 50;

    let (_dir, store) = temp_store().await;
    let path = store.path().to_path_buf();
    let started = Instant::now();

    async fn write_conversation(store: Store, writer: usize) -> Result<(i64, i64), StoreError> {
        let conversation = store.create_conversation(new_conversation(&format!("writer {writer}"))).await?;
        let mut parent = None;
        for n in 0..MESSAGES_PER_WRITER {
            let message = if n % 2 == 0 {
                store
                    .add_message(conversation.id, parent, Role::User, &format!("question {n}"), MessageStatus::Done)
                    .await?
            } else {
                // A reply the way the app writes one: start, a flush, finish.
                let reply = store.start_assistant_message(parent.unwrap_or_default()).await?;
                store.update_streaming_text(reply.id, "partial").await?;
                store.finish_message(reply.id, MessageStatus::Done, &format!("answer {n}"), None, None).await?
            };
            parent = Some(message.id);
        }
        Ok((conversation.id, parent.unwrap_or_default()))
    }

    let mut tasks = Vec::new();
    for writer in 0..SHARED_WRITERS {
        tasks.push(tokio::spawn(write_conversation(store.clone(), writer)));
    }
    for writer in SHARED_WRITERS..SHARED_WRITERS + OWN_STORE_WRITERS {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let own = Store::open(&path).await?;
            let result = write_conversation(own.clone(), writer).await;
            own.close().await;
            result
        }));
    }
    let mut leaves = Vec::new();
    for task in tasks {
        match task.await.expect("task panicked") {
            Ok(leaf) => leaves.push(leaf),
            Err(error) => panic!("a writer failed: {error:?} ({})", error_chain(&error)),
        }
    }
    let elapsed = started.elapsed();

    let conversations = store.list_conversations().await.expect("list");
    assert_eq!(conversations.len(), SHARED_WRITERS + OWN_STORE_WRITERS);
    for (conversation_id, leaf) in leaves {
        let messages = store.messages(conversation_id).await.expect("messages");
        assert_eq!(messages.len(), MESSAGES_PER_WRITER);
        assert!(messages.iter().all(|m| m.status == MessageStatus::Done));
        assert_eq!(store.branch(leaf).await.expect("branch").len(), MESSAGES_PER_WRITER);
        assert_eq!(store.get_conversation(conversation_id).await.expect("read").active_leaf_id, Some(leaf));
    }
    let total = (SHARED_WRITERS + OWN_STORE_WRITERS) * MESSAGES_PER_WRITER;
    assert_eq!(store.search("answer", 10_000).await.expect("search").len(), total / 2);
    assert_integrity(&store).await;
    eprintln!("{total} messages from {} writers in {elapsed:?}", SHARED_WRITERS + OWN_STORE_WRITERS);
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
