//! The product promise end to end: export from a real store, import into another, export again, and the two
//! documents are the same once ids are set aside (the importing store assigns its own).

mod common;

use std::collections::HashMap;

use sepchat_export::{parse_json_export, render_json};
use sepchat_store::{FullConversation, Store};

const EXPORTED_AT: i64 = common::T0;

/// Replaces every id by its position (conversations in order, messages and markers in list order) and maps the
/// links through the same renumbering, so two exports that differ only in ids become equal.
fn without_ids(conversations: &[FullConversation]) -> Vec<FullConversation> {
    conversations
        .iter()
        .enumerate()
        .map(|(c_index, full)| {
            let mut full = full.clone();
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

async fn read_all(store: &Store, ids: &[i64]) -> Vec<FullConversation> {
    let mut conversations = Vec::new();
    for &id in ids {
        conversations.push(store.full_conversation(id).await.expect("reads back"));
    }
    conversations
}

#[tokio::test(flavor = "current_thread")]
async fn export_import_export_gives_the_same_document() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first_store = Store::open(dir.path().join("first.sqlite3")).await.expect("opens");
    let second_store = Store::open(dir.path().join("second.sqlite3")).await.expect("opens");

    // Fill the first store (through its own import, the only way to write whole trees with given timestamps).
    let ids = first_store
        .import_conversations(&[common::rich_conversation(), common::empty_conversation()])
        .await
        .expect("fills the first store");
    let first_export = render_json(&read_all(&first_store, &ids).await, EXPORTED_AT).expect("renders");

    let parsed = parse_json_export(&first_export).expect("parses");
    // Occupy some ids first, so the second store's ids really differ from the first's.
    second_store.import_conversations(&[common::empty_conversation()]).await.expect("imports");
    let new_ids = second_store.import_conversations(&parsed).await.expect("imports");
    assert_ne!(new_ids, ids);
    let second = read_all(&second_store, &new_ids).await;
    let second_export = render_json(&second, EXPORTED_AT).expect("renders");
    assert_ne!(first_export, second_export, "the ids differ");

    let first_doc = render_json(&without_ids(&parsed), EXPORTED_AT).expect("renders");
    let second_doc = render_json(&without_ids(&second), EXPORTED_AT).expect("renders");
    assert_eq!(first_doc, second_doc, "everything but the ids survives the trip through a store");

    first_store.close().await;
    second_store.close().await;
}
