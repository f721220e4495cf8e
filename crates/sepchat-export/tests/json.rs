//! The JSON export: exact round trips (hand-built and generated trees) and typed errors for bad input.

mod common;

use common::{conversation, empty_conversation, marker, message, rich_conversation, T0};
use proptest::prelude::*;
use sepchat_export::{parse_json_export, render_json, ExportError, FORMAT_VERSION};
use sepchat_store::{FullConversation, MessageStats, MessageStatus, Role, Sampling};
use serde_json::{json, Value};

const EXPORTED_AT: i64 = T0 + 86_400_000;

#[test]
fn export_parse_export_is_byte_identical() {
    let conversations = vec![rich_conversation(), empty_conversation()];
    let first = render_json(&conversations, EXPORTED_AT).expect("renders");
    let parsed = parse_json_export(&first).expect("parses its own output");
    assert_eq!(parsed, conversations, "parsing gives back the rows, ids and all");
    let second = render_json(&parsed, EXPORTED_AT).expect("renders again");
    assert_eq!(first, second);
}

#[test]
fn floats_come_back_exactly() {
    // serde_json's default float parser is off by one ulp for some values; the crate enables `float_roundtrip`.
    let mut full = rich_conversation();
    for value in [9.254739350968033e272, 2.8702636089442763e-61, 0.1 + 0.2, f64::MIN_POSITIVE, f64::MAX, 5e-324] {
        full.messages[3].stats.as_mut().expect("stats").decode_tokens_per_s = Some(value);
        let text = render_json(std::slice::from_ref(&full), 0).expect("renders");
        let parsed = parse_json_export(&text).expect("parses");
        let back = parsed[0].messages[3].stats.as_ref().and_then(|stats| stats.decode_tokens_per_s);
        assert_eq!(back.map(f64::to_bits), Some(value.to_bits()), "{value:e}");
    }
}

#[test]
fn the_document_has_the_documented_shape() {
    let text = render_json(&[rich_conversation()], EXPORTED_AT).expect("renders");
    assert!(text.ends_with("}\n"));
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(doc["format"], "sepchat-export");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["exported_at"], EXPORTED_AT);
    let entry = &doc["conversations"][0];
    let settings = &entry["conversation"];
    assert_eq!(settings["id"], 7);
    assert_eq!(settings["pinned"], true);
    assert_eq!(settings["sampling"]["temperature"], 0.7);
    assert_eq!(settings["sampling"]["x_flag"], true, "unknown sampling fields are kept");
    assert_eq!(settings["cache_profile"], "sep:a=4,s=256,w=1024,c=2048");
    assert_eq!(settings["deleted_at"], Value::Null);
    assert!(settings.get("sampling_raw").is_none(), "absent raw text is left out");
    assert!(settings.get("active_leaf_id").is_none(), "the leaf is the entry's, beside the messages");
    assert_eq!(entry["active_leaf_id"], 14);

    let messages = entry["messages"].as_array().expect("messages array");
    assert_eq!(messages.len(), 8, "every branch, not just the active one");
    let first = &messages[0];
    let mut keys: Vec<&str> = first.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["content", "created_at", "error", "id", "parent_id", "role", "stats", "status", "updated_at"]);
    assert_eq!(first["role"], "system");
    assert_eq!(first["parent_id"], Value::Null);
    assert_eq!(messages[2]["status"], "stopped");
    assert_eq!(messages[3]["stats"]["decode_tokens_per_s"], 41.3);
    assert_eq!(messages[3]["stats"]["x_layer_ms"], json!([1.5, 2.25]));
    assert_eq!(messages[5]["stats_raw"], "{not json");
    assert_eq!(messages[7]["error"], "out of memory: 2 GiB requested");

    let markers = entry["markers"].as_array().expect("markers array");
    assert_eq!(markers.len(), 3);
    assert_eq!(
        markers[0],
        json!({"id": 100, "message_id": 14, "tokens_seen_at": 4096, "slots_before": 2048, "slots_after": 1284,
               "dropped_separators": 12, "dropped_other": 752, "bytes_freed": 18 * 1024 * 1024, "created_at": T0 + 100})
    );
}

#[test]
fn optional_fields_may_be_left_out() {
    let text = r#"{"format": "sepchat-export", "version": 1, "conversations": [
        {"conversation": {"id": 3, "title": "minimal", "created_at": 5, "updated_at": 6},
         "messages": [{"id": 1, "role": "user", "content": "hi", "status": "done", "created_at": 5, "updated_at": 5},
                      {"id": 2, "parent_id": 1, "role": "assistant", "content": "hello", "status": "streaming",
                       "created_at": 6, "updated_at": 6, "some_future_field": {"a": 1}}]}]}"#;
    let parsed = parse_json_export(text).expect("a minimal document parses");
    let full = &parsed[0];
    assert_eq!(full.conversation.title, "minimal");
    assert_eq!(full.conversation.active_leaf_id, None);
    assert_eq!((full.conversation.pinned, full.conversation.sampling.as_ref()), (false, None));
    assert!(full.markers.is_empty());
    assert_eq!(full.messages[1].parent_id, Some(1));
    assert_eq!(full.messages[1].conversation_id, 3, "filled in from the conversation");
    // Kept as written: the store's import turns `streaming` into `interrupted`.
    assert_eq!(full.messages[1].status, MessageStatus::Streaming);
    assert_eq!(parse_json_export(r#"{"format":"sepchat-export","version":1,"conversations":[]}"#).expect("empty"), []);
}

// ---- Generated trees ----

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(0.1),
        -1e12..1e12f64,
        any::<f64>().prop_filter("finite", |x| x.is_finite())
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        "[a-z \\n]{0,40}",
        Just("<script>alert(1)</script> \"quoted\" \\ back\\slash \u{0} \u{2028} 👋🏽 مرحبا".to_owned()),
        (1usize..3000).prop_map(|n| "long ✓ ".repeat(n)),
    ]
}

fn sampling() -> impl Strategy<Value = Option<Sampling>> {
    proptest::option::of(
        (
            proptest::option::of(finite()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::collection::btree_map("x_[a-z]{1,6}", any::<i64>(), 0..3),
        )
            .prop_map(|(temperature, top_k, seed, extra)| Sampling {
                temperature,
                top_k,
                seed,
                extra: extra.into_iter().map(|(k, v)| (k, Value::from(v))).collect(),
                ..Sampling::default()
            }),
    )
}

fn stats() -> impl Strategy<Value = Option<MessageStats>> {
    proptest::option::of(
        (proptest::option::of(finite()), proptest::option::of(any::<u64>()), proptest::option::of(text())).prop_map(
            |(decode, tokens_out, stop_reason)| MessageStats {
                decode_tokens_per_s: decode,
                tokens_out,
                stop_reason,
                ..MessageStats::default()
            },
        ),
    )
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)]
}

fn status() -> impl Strategy<Value = MessageStatus> {
    prop_oneof![
        Just(MessageStatus::Streaming),
        Just(MessageStatus::Done),
        Just(MessageStatus::Stopped),
        Just(MessageStatus::Interrupted),
        Just(MessageStatus::Error),
    ]
}

prop_compose! {
    /// A random tree: message i's parent is `None` or one of the messages before it; ids increase with random
    /// gaps (a store's ids are not dense); markers and the leaf point at random messages.
    fn tree(conversation_id: i64)(
        title in text(),
        sampling in sampling(),
        profile in proptest::option::of("[a-z:=,0-9]{1,20}"),
        timestamps in (any::<i64>(), any::<i64>(), proptest::option::of(any::<i64>())),
        nodes in proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), 1i64..1000, role(), text(), status(),
             proptest::option::of(text()), stats(), proptest::option::of(text())),
            0..12,
        ),
        leaf in any::<prop::sample::Index>(),
        has_leaf in any::<bool>(),
        marker_targets in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) -> FullConversation {
        let mut c = conversation(conversation_id, &title);
        c.sampling = sampling;
        c.cache_profile = profile;
        (c.created_at, c.updated_at, c.deleted_at) = timestamps;
        let mut messages: Vec<sepchat_store::Message> = Vec::new();
        let mut next_id = 0i64;
        for (parent, is_root, gap, role, content, status, error, stats, stats_raw) in nodes {
            next_id += gap;
            let parent_id = if is_root || messages.is_empty() {
                None
            } else {
                Some(messages[parent.index(messages.len())].id)
            };
            let mut m = message(conversation_id, next_id, parent_id, role, &content);
            (m.status, m.error, m.stats, m.stats_raw) = (status, error, stats, stats_raw);
            messages.push(m);
        }
        if has_leaf && !messages.is_empty() {
            c.active_leaf_id = Some(messages[leaf.index(messages.len())].id);
        }
        let markers = if messages.is_empty() {
            Vec::new()
        } else {
            marker_targets
                .iter()
                .enumerate()
                .map(|(i, target)| marker(conversation_id, i as i64 + 1, messages[target.index(messages.len())].id))
                .collect()
        };
        FullConversation { conversation: c, messages, markers }
    }
}

fn conversations() -> impl Strategy<Value = Vec<FullConversation>> {
    (0i64..3).prop_flat_map(|count| (1..=count).map(tree).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn generated_trees_round_trip(conversations in conversations(), exported_at in any::<i64>()) {
        let first = render_json(&conversations, exported_at).expect("renders");
        let parsed = parse_json_export(&first).expect("parses its own output");
        let second = render_json(&parsed, exported_at).expect("renders again");
        // The first difference, not the whole (possibly huge) documents.
        let at = first.bytes().zip(second.bytes()).position(|(a, b)| a != b).unwrap_or(first.len().min(second.len()));
        let context = |text: &str| text.get(at.saturating_sub(80)..(at + 80).min(text.len())).unwrap_or("").to_owned();
        prop_assert!(first == second, "documents differ at byte {}: {:?} vs {:?}", at, context(&first), context(&second));
        prop_assert!(parsed == conversations, "the rows differ although the documents are equal");
    }
}

// ---- Bad input ----

fn valid_document() -> Value {
    serde_json::from_str(&render_json(&[rich_conversation()], EXPORTED_AT).expect("renders")).expect("valid JSON")
}

fn parse_value(doc: &Value) -> Result<Vec<FullConversation>, ExportError> {
    parse_json_export(&doc.to_string())
}

#[test]
fn malformed_json_is_reported_with_its_position() {
    let text = render_json(&[rich_conversation()], EXPORTED_AT).expect("renders");
    let truncated = &text[..text.len() / 2];
    match parse_json_export(truncated) {
        Err(ExportError::MalformedJson { line, .. }) => assert!(line > 1),
        other => panic!("expected MalformedJson, got {other:?}"),
    }
    for bad in ["", "{", "{\"format\": }", "nul", "[1, 2,]", "\u{feff}{}"] {
        assert!(matches!(parse_json_export(bad), Err(ExportError::MalformedJson { .. })), "{bad:?}");
    }
    let error = parse_json_export("{\n  \"format\": \"sepchat-export\",\n  oops\n}").expect_err("malformed");
    assert_eq!(error.to_string(), "the file is not valid JSON (line 3, column 3): key must be a string");
}

#[test]
fn other_documents_are_not_exports() {
    for text in
        ["[]", "42", "\"sepchat-export\"", "null", "{}", r#"{"format": "other-app", "version": 1}"#, r#"{"format": 1}"#]
    {
        assert!(matches!(parse_json_export(text), Err(ExportError::NotAnExport(_))), "{text}");
    }
    let error = parse_json_export(r#"{"format": "chatgpt", "version": 1, "conversations": []}"#).expect_err("foreign");
    assert_eq!(
        error.to_string(),
        "the file is not a sepchat export: its `format` is \"chatgpt\", not \"sepchat-export\""
    );
}

#[test]
fn a_newer_version_is_refused_whatever_it_holds() {
    let mut doc = valid_document();
    doc["version"] = json!(2);
    // A newer version may change anything; it is refused as newer, not for the changes.
    doc["conversations"] = json!("a new layout");
    match parse_value(&doc) {
        Err(ExportError::UnsupportedVersion { found: 2, supported }) => assert_eq!(supported, FORMAT_VERSION),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    let error = parse_value(&doc).expect_err("newer");
    assert!(error.to_string().contains("update sepchat"), "{error}");

    for version in [json!(0), json!(-1), json!(1.5), json!("1"), json!(null)] {
        doc["version"] = version.clone();
        match parse_value(&doc) {
            Err(ExportError::InvalidField { path, .. }) => assert_eq!(path, "version", "{version}"),
            other => panic!("version {version}: expected InvalidField, got {other:?}"),
        }
    }
    doc.as_object_mut().expect("object").remove("version");
    assert!(matches!(parse_value(&doc), Err(ExportError::InvalidField { path, .. }) if path == "version"));
}

fn invalid_field(doc: &Value) -> (String, String) {
    match parse_value(doc) {
        Err(ExportError::InvalidField { path, message }) => (path, message),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

#[test]
fn missing_fields_and_wrong_types_name_the_field() {
    let mut doc = valid_document();
    doc.as_object_mut().expect("object").remove("conversations");
    let (path, message) = invalid_field(&doc);
    assert_eq!((path.as_str(), message.as_str()), (".", "missing field `conversations`"));

    // (what, how the valid document is spoiled, the path reported, the message reported)
    type Case = (&'static str, fn(&mut Value), &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (
            "conversations not a list",
            |d| d["conversations"] = json!({}),
            "conversations",
            "invalid type: map, expected a sequence",
        ),
        (
            "id as a string",
            |d| d["conversations"][0]["messages"][2]["id"] = json!("12"),
            "conversations[0].messages[2].id",
            "invalid type: string \"12\", expected i64",
        ),
        (
            "content as a number",
            |d| d["conversations"][0]["messages"][0]["content"] = json!(5),
            "conversations[0].messages[0].content",
            "invalid type: integer `5`, expected a string",
        ),
        (
            "unknown role",
            |d| d["conversations"][0]["messages"][1]["role"] = json!("tool"),
            "conversations[0].messages[1].role",
            "unknown variant `tool`, expected one of `system`, `user`, `assistant`",
        ),
        (
            "missing title",
            |d| {
                d["conversations"][0]["conversation"].as_object_mut().map(|o| o.remove("title"));
            },
            "conversations[0].conversation",
            "missing field `title`",
        ),
        (
            "missing messages",
            |d| {
                d["conversations"][0].as_object_mut().map(|o| o.remove("messages"));
            },
            "conversations[0]",
            "missing field `messages`",
        ),
        (
            "a float marker count",
            |d| d["conversations"][0]["markers"][1]["slots_after"] = json!(1.5),
            "conversations[0].markers[1].slots_after",
            "invalid type: floating point `1.5`, expected i64",
        ),
        (
            "pinned as a string",
            |d| d["conversations"][0]["conversation"]["pinned"] = json!("yes"),
            "conversations[0].conversation.pinned",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            "stats of the wrong shape",
            |d| d["conversations"][0]["messages"][3]["stats"] = json!([1]),
            "conversations[0].messages[3].stats",
            "invalid type: sequence, expected struct MessageStats",
        ),
    ];
    for (what, change, want_path, want_message) in cases {
        let mut doc = valid_document();
        change(&mut doc);
        let (path, message) = invalid_field(&doc);
        assert_eq!((path.as_str(), message.as_str()), (want_path, want_message), "{what}");
    }
}

#[test]
fn broken_trees_are_refused() {
    let mut doc = valid_document();
    doc["conversations"][0]["messages"][4]["parent_id"] = json!(99);
    assert!(matches!(parse_value(&doc), Err(ExportError::DanglingParent { conversation: 7, message: 13, parent: 99 })));
    let error = parse_value(&doc).expect_err("dangling");
    assert_eq!(
        error.to_string(),
        "conversation 7: message 13 has parent 99, which is not a message of the conversation"
    );

    // A parent in another conversation of the same file is still dangling: parents stay within a conversation.
    let mut two: Value =
        serde_json::from_str(&render_json(&[rich_conversation(), empty_conversation()], 0).expect("renders"))
            .expect("json");
    two["conversations"][1]["messages"] = json!([{"id": 1, "parent_id": 12, "role": "user", "content": "", "status": "done", "created_at": 0, "updated_at": 0}]);
    assert!(matches!(parse_value(&two), Err(ExportError::DanglingParent { conversation: 8, message: 1, parent: 12 })));

    let mut doc = valid_document();
    doc["conversations"][0]["messages"][0]["parent_id"] = json!(13); // 9 → 13 → 12 → 10 → 9
    assert!(matches!(parse_value(&doc), Err(ExportError::ParentCycle { conversation: 7, .. })));
    let mut doc = valid_document();
    doc["conversations"][0]["messages"][6]["parent_id"] = json!(15); // its own parent
    assert!(matches!(parse_value(&doc), Err(ExportError::ParentCycle { conversation: 7, message: 15 })));

    let mut doc = valid_document();
    doc["conversations"][0]["messages"][7]["id"] = json!(14);
    assert!(matches!(parse_value(&doc), Err(ExportError::DuplicateMessageId { conversation: 7, message: 14 })));

    let mut doc = valid_document();
    doc["conversations"][0]["active_leaf_id"] = json!(1000);
    assert!(matches!(parse_value(&doc), Err(ExportError::DanglingActiveLeaf { conversation: 7, leaf: 1000 })));

    let mut doc = valid_document();
    doc["conversations"][0]["markers"][2]["message_id"] = json!(1000);
    assert!(matches!(
        parse_value(&doc),
        Err(ExportError::DanglingMarker { conversation: 7, marker: 102, message: 1000 })
    ));
}

#[test]
fn messages_may_come_in_any_order() {
    // The store inserts parents first whatever the order; the parser only checks the tree.
    let mut full = FullConversation {
        conversation: conversation(1, "reversed"),
        messages: vec![
            message(1, 3, Some(2), Role::User, "c"),
            message(1, 2, Some(1), Role::Assistant, "b"),
            message(1, 1, None, Role::User, "a"),
        ],
        markers: Vec::new(),
    };
    full.conversation.active_leaf_id = Some(3);
    let text = render_json(std::slice::from_ref(&full), 0).expect("renders");
    assert_eq!(parse_json_export(&text).expect("parses"), [full]);
}
