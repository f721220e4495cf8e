//! `App::cache_map` with the real default model: the simulation of a conversation's own cache setting gives the
//! readout the engine stored with the last reply, the segments spell every message, dense evicts nothing, and bad
//! requests fail with the codes the other actions use.
//!
//! Needs the default model and fails (never skips) without it.

use sepchat_core::api::{
    CacheMapSegment, ErrorCode, KvStats, LoadModelRequest, MessageStatus, NewConversationRequest, Role,
    SendMessageRequest, StreamOptions, TokenState,
};
use sepchat_core::App;

mod support;
use support::{default_model, greedy};

const SMALL_CACHE: &str = "sep:a=4,s=16,w=32,c=64";

async fn send(app: &App, conversation_id: i64, text: &str) {
    let request = SendMessageRequest { conversation_id, text: text.into(), stream: StreamOptions::default() };
    let result = app.send_message(request, |_| {}).await.expect("send a message");
    assert_eq!(result.message.status, MessageStatus::Done, "{:?}", result.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_cache_matches_the_engine_and_maps_every_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = App::open(dir.path()).await.expect("open the app");

    // Before a model is loaded there is nothing to tokenize with.
    let request = NewConversationRequest {
        sampling: Some(greedy(48)),
        cache_profile: Some(SMALL_CACHE.into()),
        ..NewConversationRequest::default()
    };
    let id = app.create_conversation(request).await.expect("create a conversation").id;
    let error = app.cache_map(id, None).await.expect_err("no model");
    assert_eq!(error.code, ErrorCode::Model, "{error:?}");

    app.load_model(LoadModelRequest { path: Some(default_model()), device: Some("cpu".into()), ..Default::default() })
        .await
        .expect("load the default model");
    send(&app, id, "Tell me a long story about a lighthouse keeper named Oleander and her cat.").await;
    send(&app, id, "What was the cat's name? Answer in one sentence.").await;

    let view = app.get_conversation(id).await.expect("the conversation");
    let last = view.branch.iter().rev().find(|message| message.role == Role::Assistant).expect("a reply");
    let stats = last.stats.as_ref().expect("the reply's stats");
    let live: KvStats = serde_json::from_value(stats.extra["kv"].clone()).expect("the stored readout");
    assert!(live.compactions > 0, "the small cache never compressed: {live:?}");

    let map = app.cache_map(id, None).await.expect("the conversation's own setting");
    assert_eq!(map.conversation_id, id);
    assert_eq!(Some(&serde_json::Value::String(map.cache_spec.clone())), stats.extra.get("cache_spec"));
    assert!(map.exact, "a reply re-tokenized to another length than generated");
    assert_eq!(
        (map.stats.tokens_seen, map.stats.slots_held, map.stats.compactions),
        (live.tokens_seen, live.slots_held, live.compactions),
        "simulated {:?} vs live {live:?}",
        map.stats
    );
    assert_eq!(map.stats, live, "every field of the readout, the averages included");

    assert_eq!(
        map.messages.iter().map(|message| message.message_id).collect::<Vec<_>>(),
        view.branch.iter().map(|message| message.id).collect::<Vec<_>>()
    );
    for (message, mapped) in view.branch.iter().zip(&map.messages) {
        let text: String = mapped.segments.iter().map(|segment| segment.text.as_str()).collect();
        assert_eq!(text, message.content, "message {}", message.id);
        assert!(mapped.segments.iter().all(|segment| !segment.text.is_empty()));
        assert!(mapped.segments.windows(2).all(|pair| pair[0].state != pair[1].state), "segments not merged");
    }
    let states: Vec<TokenState> =
        map.messages.iter().flat_map(|message| message.segments.iter().map(|segment| segment.state)).collect();
    for state in [TokenState::Evicted, TokenState::Local, TokenState::Separator] {
        assert!(states.contains(&state), "no {state:?} text in {states:?}");
    }
    // The last reply's end is in the local window (or never fed, the last token of a reply cut at its limit);
    // the first message was mostly evicted long ago.
    let last_map = map.messages.last().expect("mapped messages");
    let tail = last_map.segments.iter().rev().find(|segment| segment.state != TokenState::Unseen);
    assert_eq!(tail.map(|segment| segment.state), Some(TokenState::Local));
    assert!(map.messages[0].segments.iter().any(|segment| segment.state == TokenState::Evicted));

    let dense = app.cache_map(id, Some("dense".into())).await.expect("dense");
    assert!(dense.cache_spec.starts_with("dense"), "{}", dense.cache_spec);
    assert_eq!(dense.stats.compactions, 0);
    assert_eq!(dense.stats.tokens_seen, live.tokens_seen);
    assert_eq!(dense.stats.bytes_held, dense.stats.bytes_dense);
    // Dense keeps everything it was fed; the one thing it never saw is the last token of a reply cut at its limit
    // (the worker stops before feeding it).
    let not_local: Vec<(i64, &CacheMapSegment)> = dense
        .messages
        .iter()
        .flat_map(|message| message.segments.iter().map(move |segment| (message.message_id, segment)))
        .filter(|(_, segment)| segment.state != TokenState::Local)
        .collect();
    assert_eq!(stats.stop_reason.as_deref(), Some("max_tokens"));
    assert_eq!(not_local.len(), 1, "{not_local:?}");
    let (message_id, segment) = not_local[0];
    assert_eq!((message_id, segment.state), (last.id, TokenState::Unseen));
    assert!(last.content.ends_with(&segment.text));

    let streaming = app.cache_map(id, Some("streaming:a=4,c=64".into())).await.expect("streaming");
    assert_eq!(streaming.stats.separators_held, 0);
    assert!(streaming.stats.compactions > 0);

    let error = app.cache_map(id, Some("sep:zz".into())).await.expect_err("a bad spec");
    let settings_error = app.set_cache_profile(id, Some("sep:zz".into())).await.expect_err("the same spec");
    assert_eq!(error, settings_error);
    assert_eq!(error.code, ErrorCode::InvalidInput);
    let error = app.cache_map(id + 1000, None).await.expect_err("no such conversation");
    assert_eq!(error.code, ErrorCode::NotFound);
}
