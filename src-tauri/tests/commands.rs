//! The desktop's commands are the server's routes: the same names (tests against the server's own table) and the
//! same argument objects (the bodies the UI would POST are read by the desktop's argument types).

use std::collections::BTreeSet;

use sepchat_desktop::commands::{
    BranchArgs, CacheProfileArgs, ConversationArgs, ImportDocumentArgs, PinArgs, RenameArgs, RenderExportArgs,
    SamplingArgs, SearchArgs, SystemPromptArgs,
};
use sepchat_desktop::COMMANDS;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Commands the desktop has beyond the server's `/rpc/` table (the server answers `GET /api/health` instead).
const DESKTOP_ONLY: &[&str] = &["health"];

#[test]
fn the_commands_are_the_server_routes() {
    let desktop: Vec<&str> = COMMANDS.iter().copied().filter(|command| !DESKTOP_ONLY.contains(command)).collect();
    let unique: BTreeSet<&str> = COMMANDS.iter().copied().collect();
    assert_eq!(unique.len(), COMMANDS.len(), "a command is listed twice: {COMMANDS:?}");
    // Same order too, so a diff of the two lists reads as the change.
    assert_eq!(desktop, sepchat_server::METHODS, "src-tauri/src/command_list.rs and rpc.rs's table differ");
    for command in DESKTOP_ONLY {
        assert!(COMMANDS.contains(command), "{command} is missing");
    }
}

fn reads<T: DeserializeOwned + std::fmt::Debug>(body: Value) -> T {
    serde_json::from_value(body.clone()).unwrap_or_else(|error| panic!("{body} is refused: {error}"))
}

fn refuses<T: DeserializeOwned + std::fmt::Debug>(body: Value) {
    let parsed = serde_json::from_value::<T>(body.clone());
    assert!(parsed.is_err(), "{body} should be refused, got {parsed:?}");
}

#[test]
fn the_argument_objects_are_the_server_bodies() {
    let args: ConversationArgs = reads(json!({"conversation_id": 3}));
    assert_eq!(args.conversation_id, 3);
    let args: RenameArgs = reads(json!({"conversation_id": 3, "title": "Trip"}));
    assert_eq!((args.conversation_id, args.title.as_str()), (3, "Trip"));
    let args: PinArgs = reads(json!({"conversation_id": 3, "pinned": true}));
    assert!(args.pinned);
    let args: SearchArgs = reads(json!({"query": "kv"}));
    assert_eq!((args.query.as_str(), args.limit), ("kv", None));
    let args: SearchArgs = reads(json!({"query": "kv", "limit": 5}));
    assert_eq!(args.limit, Some(5));
    let args: SystemPromptArgs = reads(json!({"conversation_id": 3, "system_prompt": null}));
    assert_eq!(args.system_prompt, None);
    let args: SystemPromptArgs = reads(json!({"conversation_id": 3, "system_prompt": ""}));
    assert_eq!(args.system_prompt.as_deref(), Some(""));
    let args: SamplingArgs = reads(json!({"conversation_id": 3, "sampling": {"temperature": 0.2}}));
    assert_eq!(args.conversation_id, 3);
    let args: CacheProfileArgs = reads(json!({"conversation_id": 3, "cache_profile": "low"}));
    assert_eq!(args.cache_profile.as_deref(), Some("low"));
    let args: BranchArgs = reads(json!({"conversation_id": 3, "message_id": 9}));
    assert_eq!(args.message_id, 9);
    let args: RenderExportArgs = reads(json!({"conversation_ids": null, "format": "md"}));
    assert_eq!(args.conversation_ids, None);
    let args: ImportDocumentArgs = reads(json!({"document": "{}"}));
    assert_eq!(args.document, "{}");

    // As on the server, a misspelt key is an error rather than a silently missing argument.
    refuses::<ConversationArgs>(json!({"conversationId": 3}));
    refuses::<RenameArgs>(json!({"conversation_id": 3, "title": "Trip", "extra": 1}));
}

#[test]
fn the_generating_bodies_carry_the_channel_beside_the_request() {
    // What `invoke('send_message', {conversation_id, text, on_event: channel})` delivers: Tauri writes the channel
    // as a string; the request type reads its own fields and leaves that one.
    let body = json!({"conversation_id": 4, "text": "hello", "on_event": "__CHANNEL__:7"});
    let request: sepchat_core::api::SendMessageRequest = reads(body);
    assert_eq!((request.conversation_id, request.text.as_str()), (4, "hello"));
    let body =
        json!({"conversation_id": 4, "message_id": 8, "stream": {"kv_every_step": true}, "on_event": "__CHANNEL__:7"});
    let request: sepchat_core::api::RegenerateRequest = reads(body);
    assert!(request.stream.kv_every_step);
    let body = json!({"conversation_id": 4, "message_id": 8, "text": "again", "on_event": "__CHANNEL__:7"});
    let request: sepchat_core::api::EditMessageRequest = reads(body);
    assert_eq!(request.text, "again");
    let body = json!({"prompt": "Once", "on_event": "__CHANNEL__:7"});
    let request: sepchat_core::api::CompleteRequest = reads(body);
    assert_eq!(request.prompt, "Once");
}
