//! The App with the real default model and a history in a temporary directory: sessions (reuse, restore from a
//! snapshot, refused snapshot), the message tree (regenerate, edit, switch branch), stop and busy, compression
//! markers, and the export/import round trip.
//!
//! Every test needs the default model and fails (never skips) without it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sepchat_core::api::{
    CacheSource, ChatEvent, EditMessageRequest, ErrorCode, ExportFormat, ExportRequest, ImportRequest, KvStats,
    MessageStatus, NewConversationRequest, RegenerateRequest, Role, Sampling, SendMessageRequest, SendResult,
    StreamOptions,
};
use sepchat_core::App;
use sepchat_store::FullConversation;

mod support;
use support::greedy;

async fn app() -> (tempfile::TempDir, App) {
    support::app_with_model().await
}

async fn conversation(app: &App, max_tokens: u64, cache_profile: Option<&str>) -> i64 {
    let request = NewConversationRequest {
        sampling: Some(greedy(max_tokens)),
        cache_profile: cache_profile.map(str::to_owned),
        ..NewConversationRequest::default()
    };
    app.create_conversation(request).await.expect("create a conversation").id
}

/// Collects a generation's events.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<ChatEvent>>>);

impl Events {
    fn sink(&self) -> impl Fn(ChatEvent) + Send + Sync + 'static {
        let events = self.0.clone();
        move |event| events.lock().expect("events lock").push(event)
    }

    fn take(&self) -> Vec<ChatEvent> {
        std::mem::take(&mut *self.0.lock().expect("events lock"))
    }
}

async fn send(app: &App, conversation_id: i64, text: &str) -> (SendResult, Vec<ChatEvent>) {
    let events = Events::default();
    let request = SendMessageRequest { conversation_id, text: text.into(), stream: StreamOptions::default() };
    let result = app.send_message(request, events.sink()).await.expect("send a message");
    assert_eq!(result.message.status, MessageStatus::Done, "{:?}", result.message);
    (result, events.take())
}

fn session_event(events: &[ChatEvent]) -> (CacheSource, Option<String>) {
    events
        .iter()
        .find_map(|event| match event {
            ChatEvent::Session { source, detail } => Some((*source, detail.clone())),
            _ => None,
        })
        .expect("a session event")
}

/// The second turn feeds only its own tokens; a conversation pushed out of the engine's four warm sessions comes
/// back from its snapshot; a snapshot taken under another cache profile is refused and the branch replayed, with
/// progress events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_reused_restored_from_snapshots_and_replayed_when_refused() {
    let (_dir, app) = app().await;
    let first = conversation(&app, 8, None).await;
    let (turn_1, events) = send(&app, first, "Hello").await;
    assert_eq!(session_event(&events).0, CacheSource::Fresh);
    assert_eq!(turn_1.cache_source, CacheSource::Fresh);
    assert!(turn_1.snapshot.is_some(), "a snapshot after each finished reply");
    let (turn_2, events) = send(&app, first, "What is 2+2?").await;
    assert_eq!(session_event(&events).0, CacheSource::Warm);
    assert!(
        turn_2.report.reused_tokens >= turn_1.report.prompt_tokens,
        "the second turn should reuse at least the first turn's prompt: {:?} then {:?}",
        turn_1.report,
        turn_2.report
    );

    // Four more conversations: the first is the least recently used of five, so the engine dropped it.
    let mut others = Vec::new();
    for text in ["Hi", "Name a colour.", "Name a fruit.", "Name an animal."] {
        let id = conversation(&app, 4, None).await;
        send(&app, id, text).await;
        others.push(id);
    }
    let (turn_3, events) = send(&app, first, "And 3+3?").await;
    let (source, detail) = session_event(&events);
    assert_eq!(source, CacheSource::RestoredFromSnapshot, "{detail:?}");
    assert_eq!(turn_3.cache_source, CacheSource::RestoredFromSnapshot, "{:?}", turn_3.cache_detail);
    assert!(
        turn_3.report.reused_tokens >= turn_2.report.prompt_tokens,
        "the restored cache holds the conversation so far: {:?}",
        turn_3.report
    );

    // The second conversation is cold too; its snapshot was taken under the default profile.
    let second = others[0];
    app.set_cache_profile(second, Some("low".into())).await.expect("set the cache profile");
    let (turn, events) = send(&app, second, "Another one?").await;
    let (source, detail) = session_event(&events);
    assert_eq!(source, CacheSource::Replayed, "{detail:?}");
    let detail = detail.expect("a reason for the replay");
    assert!(detail.contains("refused") && detail.contains("cache setting"), "{detail}");
    assert_eq!(turn.cache_source, CacheSource::Replayed);
    assert_eq!(turn.report.reused_tokens, 0);
    assert!(turn.report.cache_spec.starts_with("sep:a=4,s=128,w=256,c=512"), "{}", turn.report.cache_spec);
    let progress: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|event| match event {
            ChatEvent::Prefill { done, total } => Some((*done, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(progress.last(), Some(&(turn.report.prompt_tokens, turn.report.prompt_tokens)), "{progress:?}");
}

/// Regenerate adds a sibling and keeps the old reply; editing a user message starts a branch; switching branches
/// moves the active leaf; a second message while one streams is refused as busy; stop keeps the text as `stopped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regenerate_edit_switch_branch_busy_and_stop() {
    let (_dir, app) = app().await;
    let id = conversation(&app, 6, None).await;
    let (first, _) = send(&app, id, "Hello").await;
    let user_1 = first.user_message_id;
    let reply_1 = first.message.clone();

    let events = Events::default();
    let request = RegenerateRequest { conversation_id: id, message_id: reply_1.id, stream: StreamOptions::default() };
    let regenerated = app.regenerate(request, events.sink()).await.expect("regenerate");
    assert_eq!(regenerated.user_message_id, user_1);
    assert_eq!(regenerated.message.parent_id, Some(user_1));
    assert_eq!(regenerated.message.sibling_ids, [reply_1.id, regenerated.message.id]);
    assert_eq!(regenerated.message.sibling_index, 1);
    let view = app.get_conversation(id).await.expect("view");
    assert_eq!(view.branch.iter().map(|m| m.id).collect::<Vec<_>>(), [user_1, regenerated.message.id]);
    assert_eq!(view.conversation.title, "Hello", "titled from the first message");

    let events = Events::default();
    let request = EditMessageRequest {
        conversation_id: id,
        message_id: user_1,
        text: "Hi there".into(),
        stream: StreamOptions::default(),
    };
    let edited = app.edit_message(request, events.sink()).await.expect("edit");
    assert_ne!(edited.user_message_id, user_1);
    let view = app.get_conversation(id).await.expect("view");
    assert_eq!(view.branch.len(), 2);
    assert_eq!(view.branch[0].id, edited.user_message_id);
    assert_eq!(view.branch[0].content, "Hi there");
    assert_eq!(view.branch[0].sibling_ids, [user_1, edited.user_message_id]);
    assert_eq!(view.branch[1].id, edited.message.id);

    // Back to the first prompt: its newest reply is the regenerated one; the old reply is untouched.
    let view = app.switch_branch(id, user_1).await.expect("switch branch");
    assert_eq!(view.conversation.active_leaf_id, Some(regenerated.message.id));
    let view = app.switch_branch(id, reply_1.id).await.expect("switch to the first reply");
    assert_eq!(view.branch.last().map(|m| (m.id, m.content.clone())), Some((reply_1.id, reply_1.content.clone())));
    assert_eq!(view.branch.last().map(|m| m.status), Some(MessageStatus::Done));
    let error = app.switch_branch(id, 999_999).await.expect_err("no such message");
    assert_eq!(error.code, ErrorCode::NotFound);

    // A long reply, stopped after a few tokens; a second message meanwhile is refused.
    app.set_sampling(id, greedy(400)).await.expect("set sampling");
    let (first_tokens, mut tokens_seen) = tokio::sync::mpsc::unbounded_channel::<()>();
    let streamed = Arc::new(Mutex::new(String::new()));
    let sink = {
        let streamed = streamed.clone();
        move |event: ChatEvent| {
            if let ChatEvent::Token { text } = event {
                streamed.lock().expect("lock").push_str(&text);
                let _ = first_tokens.send(());
            }
        }
    };
    let long = {
        let app = app.clone();
        let request = SendMessageRequest {
            conversation_id: id,
            text: "Write a long story about a dragon who learns to read.".into(),
            stream: StreamOptions::default(),
        };
        tokio::spawn(async move { app.send_message(request, sink).await })
    };
    for _ in 0..3 {
        tokens_seen.recv().await.expect("tokens stream");
    }
    assert!(app.is_generating(id));
    let busy = app
        .send_message(
            SendMessageRequest { conversation_id: id, text: "Wait".into(), stream: StreamOptions::default() },
            |_| {},
        )
        .await
        .expect_err("busy while a reply streams");
    assert_eq!(busy.code, ErrorCode::Busy);
    assert!(app.stop(id), "a reply was running");
    let stopped = long.await.expect("the task finishes").expect("the stopped reply is a result");
    assert_eq!(stopped.message.status, MessageStatus::Stopped);
    assert_eq!(stopped.report.stop_reason, "cancelled");
    let streamed = streamed.lock().expect("lock").clone();
    assert!(!streamed.is_empty());
    assert_eq!(stopped.message.content, streamed, "the stored text is what was streamed");
    assert!(stopped.report.generated_tokens < 400);
    assert!(!app.is_generating(id));
    assert!(!app.stop(id), "nothing to stop any more");
    let view = app.get_conversation(id).await.expect("view");
    let last = view.branch.last().expect("a branch");
    assert_eq!((last.id, last.status, last.role), (stopped.message.id, MessageStatus::Stopped, Role::Assistant));
    assert_eq!(last.content, streamed);
}

/// A small SepCache compacts during a reply: the compressions are stored as markers on that reply and reported.
/// Then: export to JSON, import, export again: the same document, ids aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressions_are_stored_and_export_import_export_round_trips() {
    let (dir, app) = app().await;
    let id = conversation(&app, 30, Some("sep:a=4,s=8,w=16,c=40")).await;
    let (first, events) = send(&app, id, "Tell me about the sea.").await;
    let markers: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            ChatEvent::Compression { marker } => Some(marker.clone()),
            _ => None,
        })
        .collect();
    assert!(!markers.is_empty(), "a 40-slot cache compacts during 30 tokens after a long prompt");
    assert_eq!(markers, first.compressions);
    for marker in &markers {
        assert_eq!(marker.message_id, first.message.id);
        assert!(marker.slots_after < marker.slots_before, "{marker:?}");
        assert!(marker.slots_after <= 40, "{marker:?}");
    }
    let kv_events = events.iter().filter(|event| matches!(event, ChatEvent::Kv { .. })).count();
    assert!(kv_events >= 1);
    let last_kv = events.iter().rev().find_map(|event| match event {
        ChatEvent::Kv { stats } => Some(stats.clone()),
        _ => None,
    });
    assert_eq!(last_kv, first.report.kv, "the last readout sent is the final state");
    let stats = first.message.stats.clone().expect("stats stored with the reply");
    assert!(stats.time_to_first_token_ms.is_some_and(|ms| ms > 0.0));
    assert_eq!(stats.tokens_out, Some(first.report.generated_tokens as u64));
    assert_eq!(stats.kv_slots, first.report.kv.as_ref().map(|kv| kv.slots_held as u64));
    // The whole readout is stored too, so a face can show the KV panel of a conversation it did not stream.
    let stored_kv: KvStats = serde_json::from_value(stats.extra["kv"].clone()).expect("stored readout parses");
    assert_eq!(Some(stored_kv), first.report.kv);
    assert_eq!(stats.extra["cache_spec"], serde_json::json!(first.report.cache_spec));
    let view = app.get_conversation(id).await.expect("view");
    assert_eq!(view.markers, markers);

    // A tree with two branches, then the round trip.
    let request =
        RegenerateRequest { conversation_id: id, message_id: first.message.id, stream: StreamOptions::default() };
    app.regenerate(request, |_| {}).await.expect("regenerate");
    send(&app, id, "Thanks").await;
    let first_path = dir.path().join("first.json");
    let exported = app
        .export(ExportRequest {
            conversation_ids: Some(vec![id]),
            format: ExportFormat::Json,
            path: first_path.to_string_lossy().into_owned(),
        })
        .await
        .expect("export");
    assert_eq!(exported.conversations, 1);
    let imported = app.import(ImportRequest { path: first_path.to_string_lossy().into_owned() }).await.expect("import");
    assert_eq!(imported.conversation_ids.len(), 1);
    assert_ne!(imported.conversation_ids[0], id);
    let second_path = dir.path().join("second.json");
    app.export(ExportRequest {
        conversation_ids: Some(imported.conversation_ids.clone()),
        format: ExportFormat::Json,
        path: second_path.to_string_lossy().into_owned(),
    })
    .await
    .expect("export again");
    let read = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).expect("read the export");
        sepchat_export::parse_json_export(&text).expect("a valid export")
    };
    let first_doc = sepchat_export::render_json(&without_ids(read(&first_path)), 0).expect("renders");
    let second_doc = sepchat_export::render_json(&without_ids(read(&second_path)), 0).expect("renders");
    assert_eq!(first_doc, second_doc, "export, import, export gives the same document, ids aside");

    // Every other format writes too.
    for format in [ExportFormat::Markdown, ExportFormat::Html, ExportFormat::Text] {
        let path = dir.path().join(format!("all.{}", format.extension()));
        let result = app
            .export(ExportRequest { conversation_ids: None, format, path: path.to_string_lossy().into_owned() })
            .await
            .expect("export");
        assert_eq!(result.conversations, 2);
        assert!(std::fs::read_to_string(&path).expect("written").contains("Tell me about the sea."));
    }
}

/// Trash with undo, purge, rename, pin and search through the App (no model needed).
#[tokio::test]
async fn history_actions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = App::open(dir.path()).await.expect("open");
    let error = app
        .send_message(
            SendMessageRequest { conversation_id: 1, text: "hi".into(), stream: StreamOptions::default() },
            |_| {},
        )
        .await
        .expect_err("no model");
    assert_eq!(error.code, ErrorCode::Model);
    let bad = NewConversationRequest {
        sampling: Some(Sampling { temperature: Some(-1.0), ..Sampling::default() }),
        ..Default::default()
    };
    assert_eq!(app.create_conversation(bad).await.expect_err("invalid").code, ErrorCode::InvalidInput);
    let bad = NewConversationRequest { cache_profile: Some("lru".into()), ..Default::default() };
    assert_eq!(app.create_conversation(bad).await.expect_err("invalid").code, ErrorCode::InvalidInput);

    let a = app.create_conversation(NewConversationRequest::default()).await.expect("create").id;
    let b = app
        .create_conversation(NewConversationRequest { title: Some("Dragons".into()), ..Default::default() })
        .await
        .expect("create")
        .id;
    app.rename_conversation(a, "Sea voyages").await.expect("rename");
    app.pin_conversation(a, true).await.expect("pin");
    let list = app.list_conversations().await.expect("list");
    assert_eq!(list.iter().map(|c| c.id).collect::<Vec<_>>(), [a, b], "pinned first");
    let hits = app.search("voyag", None).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].conversation_id, a);

    app.delete_conversation(b).await.expect("trash");
    assert_eq!(app.list_conversations().await.expect("list").len(), 1);
    assert_eq!(app.list_trash().await.expect("trash").len(), 1);
    app.restore_conversation(b).await.expect("undo");
    assert_eq!(app.list_conversations().await.expect("list").len(), 2);
    app.purge_conversation(b).await.expect("purge");
    assert_eq!(app.get_conversation(b).await.expect_err("gone").code, ErrorCode::NotFound);
    app.delete_conversation(a).await.expect("trash");
    assert_eq!(app.empty_trash().await.expect("empty the trash"), 1);
    assert!(app.list_conversations().await.expect("list").is_empty());
}

/// Every id replaced by its position, links mapped through the same renumbering (as sepchat-export's own
/// round-trip test does), so two exports that differ only in ids compare equal.
fn without_ids(conversations: Vec<FullConversation>) -> Vec<FullConversation> {
    conversations
        .into_iter()
        .enumerate()
        .map(|(c_index, mut full)| {
            let new_id: HashMap<i64, i64> =
                full.messages.iter().enumerate().map(|(index, message)| (message.id, index as i64)).collect();
            let map = |id: i64| new_id.get(&id).copied().unwrap_or(-1);
            full.conversation.id = c_index as i64;
            full.conversation.active_leaf_id = full.conversation.active_leaf_id.map(map);
            for message in &mut full.messages {
                (message.id, message.conversation_id) = (map(message.id), c_index as i64);
                message.parent_id = message.parent_id.map(map);
            }
            for (index, marker) in full.markers.iter_mut().enumerate() {
                (marker.id, marker.conversation_id, marker.message_id) =
                    (index as i64, c_index as i64, map(marker.message_id));
            }
            full
        })
        .collect()
}
