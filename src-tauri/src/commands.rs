//! The commands: one per `App` method, named as the method and as the server's route, taking the same JSON
//! arguments as that route's body ([`Body`]) and answering the method's return value or its `ApiError`
//! (`{code, message}`). Each command extracts its arguments, calls the one method, and at most emits a notice;
//! nothing else happens here. The generating commands take one more argument, `on_event`, a channel that gets
//! every `ChatEvent` in order; the command resolves with the method's result when the generation ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::{AppHandle, State};

use sepchat_core::api::{
    ApiError, CacheMap, ChatEvent, CompleteRequest, CompleteResult, ConversationInfo, ConversationView,
    EditMessageRequest, ExportFormat, ExportRequest, ExportResult, ImportRequest, ImportResult, LoadModelRequest,
    ModelInfo, NewConversationRequest, RegenerateRequest, Sampling, SearchHit, SendMessageRequest, SendResult,
};

use crate::body::Body;
use crate::events;
use crate::Desktop;

type Answer<T> = Result<T, ApiError>;

// The argument objects of the methods without a request type: the same structs (names, optional fields, and the
// refusal of unknown keys) as the server's in rpc.rs, so one JSON object fits both.

/// `{"conversation_id": ...}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationArgs {
    pub conversation_id: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameArgs {
    pub conversation_id: i64,
    pub title: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinArgs {
    pub conversation_id: i64,
    pub pinned: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    pub query: String,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemPromptArgs {
    pub conversation_id: i64,
    /// Absent or `null`: the app's default; `""`: none.
    #[serde(default)]
    pub system_prompt: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingArgs {
    pub conversation_id: i64,
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheProfileArgs {
    pub conversation_id: i64,
    #[serde(default)]
    pub cache_profile: Option<String>,
}

/// `{"conversation_id": ..., "cache": "dense"}` (`cache` absent: the conversation's own setting).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheMapArgs {
    pub conversation_id: i64,
    #[serde(default)]
    pub cache: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchArgs {
    pub conversation_id: i64,
    pub message_id: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderExportArgs {
    #[serde(default)]
    pub conversation_ids: Option<Vec<i64>>,
    pub format: ExportFormat,
}

/// `{"document": "<the JSON export's text>"}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportDocumentArgs {
    pub document: String,
}

/// What `health` answers: the server's `GET /api/health` fields, plus the state of model loading, which the
/// window needs and the server does not (`sepchat serve` loads the model before it answers; the window opens at
/// once and loads the model behind it).
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    /// The model loaded now (`null`: none yet).
    pub model: Option<ModelInfo>,
    /// A model is being loaded (at start, or by `load_model`).
    pub model_loading: bool,
    /// Why the last load failed, until a load succeeds (`null`: it did not fail).
    pub model_error: Option<ApiError>,
}

// ---- Outside the server's table ----

#[tauri::command(rename_all = "snake_case")]
pub async fn health(desktop: State<'_, Desktop>) -> Answer<Health> {
    Ok(desktop.health())
}

// ---- Model ----

#[tauri::command(rename_all = "snake_case")]
pub async fn load_model(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    request: Body<LoadModelRequest>,
) -> Answer<ModelInfo> {
    desktop.load_model(&handle, request.0).await
}

#[tauri::command(rename_all = "snake_case")]
pub async fn model_info(desktop: State<'_, Desktop>) -> Answer<Option<ModelInfo>> {
    Ok(desktop.app.model_info())
}

// ---- Conversations ----

#[tauri::command(rename_all = "snake_case")]
pub async fn create_conversation(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    request: Body<NewConversationRequest>,
) -> Answer<ConversationInfo> {
    changed(&handle, "create_conversation", desktop.app.create_conversation(request.0).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn list_conversations(desktop: State<'_, Desktop>) -> Answer<Vec<ConversationInfo>> {
    desktop.app.list_conversations().await
}

#[tauri::command(rename_all = "snake_case")]
pub async fn list_trash(desktop: State<'_, Desktop>) -> Answer<Vec<ConversationInfo>> {
    desktop.app.list_trash().await
}

#[tauri::command(rename_all = "snake_case")]
pub async fn get_conversation(desktop: State<'_, Desktop>, args: Body<ConversationArgs>) -> Answer<ConversationView> {
    desktop.app.get_conversation(args.0.conversation_id).await
}

#[tauri::command(rename_all = "snake_case")]
pub async fn rename_conversation(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<RenameArgs>,
) -> Answer<ConversationInfo> {
    let Body(args) = args;
    changed(&handle, "rename_conversation", desktop.app.rename_conversation(args.conversation_id, &args.title).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn pin_conversation(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<PinArgs>,
) -> Answer<ConversationInfo> {
    let Body(args) = args;
    changed(&handle, "pin_conversation", desktop.app.pin_conversation(args.conversation_id, args.pinned).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn delete_conversation(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<ConversationArgs>,
) -> Answer<ConversationInfo> {
    changed(&handle, "delete_conversation", desktop.app.delete_conversation(args.0.conversation_id).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn restore_conversation(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<ConversationArgs>,
) -> Answer<ConversationInfo> {
    changed(&handle, "restore_conversation", desktop.app.restore_conversation(args.0.conversation_id).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn purge_conversation(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<ConversationArgs>,
) -> Answer<()> {
    changed(&handle, "purge_conversation", desktop.app.purge_conversation(args.0.conversation_id).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn empty_trash(handle: AppHandle, desktop: State<'_, Desktop>) -> Answer<u64> {
    changed(&handle, "empty_trash", desktop.app.empty_trash().await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn search(desktop: State<'_, Desktop>, args: Body<SearchArgs>) -> Answer<Vec<SearchHit>> {
    let Body(args) = args;
    desktop.app.search(&args.query, args.limit).await
}

// ---- Settings ----

#[tauri::command(rename_all = "snake_case")]
pub async fn set_system_prompt(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<SystemPromptArgs>,
) -> Answer<ConversationInfo> {
    let Body(args) = args;
    changed(&handle, "set_system_prompt", desktop.app.set_system_prompt(args.conversation_id, args.system_prompt).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn set_sampling(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<SamplingArgs>,
) -> Answer<ConversationInfo> {
    let Body(args) = args;
    changed(&handle, "set_sampling", desktop.app.set_sampling(args.conversation_id, args.sampling).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn set_cache_profile(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<CacheProfileArgs>,
) -> Answer<ConversationInfo> {
    let Body(args) = args;
    changed(&handle, "set_cache_profile", desktop.app.set_cache_profile(args.conversation_id, args.cache_profile).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn cache_map(desktop: State<'_, Desktop>, args: Body<CacheMapArgs>) -> Answer<CacheMap> {
    let Body(args) = args;
    desktop.app.cache_map(args.conversation_id, args.cache).await
}

// ---- Chat ----

#[tauri::command(rename_all = "snake_case")]
pub async fn send_message(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    request: Body<SendMessageRequest>,
    on_event: Channel<ChatEvent>,
) -> Answer<SendResult> {
    let sink = ChatSink::new(&handle, on_event, "send_message");
    let result = desktop.app.send_message(request.0, sink.forwarder()).await;
    sink.finish();
    result
}

#[tauri::command(rename_all = "snake_case")]
pub async fn regenerate(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    request: Body<RegenerateRequest>,
    on_event: Channel<ChatEvent>,
) -> Answer<SendResult> {
    let sink = ChatSink::new(&handle, on_event, "regenerate");
    let result = desktop.app.regenerate(request.0, sink.forwarder()).await;
    sink.finish();
    result
}

#[tauri::command(rename_all = "snake_case")]
pub async fn edit_message(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    request: Body<EditMessageRequest>,
    on_event: Channel<ChatEvent>,
) -> Answer<SendResult> {
    let sink = ChatSink::new(&handle, on_event, "edit_message");
    let result = desktop.app.edit_message(request.0, sink.forwarder()).await;
    sink.finish();
    result
}

/// A raw completion stores nothing, so it changes no conversation and sends no notice.
#[tauri::command(rename_all = "snake_case")]
pub async fn complete(
    desktop: State<'_, Desktop>,
    request: Body<CompleteRequest>,
    on_event: Channel<ChatEvent>,
) -> Answer<CompleteResult> {
    desktop.app.complete(request.0, move |event| send_event(&on_event, event)).await
}

#[tauri::command(rename_all = "snake_case")]
pub async fn stop(desktop: State<'_, Desktop>, args: Body<ConversationArgs>) -> Answer<bool> {
    Ok(desktop.app.stop(args.0.conversation_id))
}

#[tauri::command(rename_all = "snake_case")]
pub async fn stop_completion(desktop: State<'_, Desktop>) -> Answer<bool> {
    Ok(desktop.app.stop_completion())
}

#[tauri::command(rename_all = "snake_case")]
pub async fn is_generating(desktop: State<'_, Desktop>, args: Body<ConversationArgs>) -> Answer<bool> {
    Ok(desktop.app.is_generating(args.0.conversation_id))
}

#[tauri::command(rename_all = "snake_case")]
pub async fn switch_branch(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<BranchArgs>,
) -> Answer<ConversationView> {
    let Body(args) = args;
    changed(&handle, "switch_branch", desktop.app.switch_branch(args.conversation_id, args.message_id).await)
}

// ---- Export and import ----

#[tauri::command(rename_all = "snake_case")]
pub async fn export(desktop: State<'_, Desktop>, request: Body<ExportRequest>) -> Answer<ExportResult> {
    desktop.app.export(request.0).await
}

#[tauri::command(rename_all = "snake_case")]
pub async fn render_export(desktop: State<'_, Desktop>, args: Body<RenderExportArgs>) -> Answer<String> {
    let Body(args) = args;
    desktop.app.render_export(args.conversation_ids, args.format).await
}

#[tauri::command(rename_all = "snake_case")]
pub async fn import(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    request: Body<ImportRequest>,
) -> Answer<ImportResult> {
    changed(&handle, "import", desktop.app.import(request.0).await)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn import_document(
    handle: AppHandle,
    desktop: State<'_, Desktop>,
    args: Body<ImportDocumentArgs>,
) -> Answer<ImportResult> {
    changed(&handle, "import_document", desktop.app.import_document(&args.0.document).await)
}

// ---- Helpers ----

/// Passes a method's answer through, first telling the windows the list changed when the method succeeded (a
/// refused call changed nothing).
fn changed<T>(handle: &AppHandle, method: &'static str, answer: Answer<T>) -> Answer<T> {
    if answer.is_ok() {
        events::conversations_changed(handle, method);
    }
    answer
}

/// One event to the caller's channel. A failed send means the window that asked is gone (closed or reloaded): the
/// reply still finishes and is stored, as when a browser tab goes away, so this is only logged.
fn send_event(channel: &Channel<ChatEvent>, event: ChatEvent) {
    if let Err(error) = channel.send(event) {
        tracing::debug!(%error, "cannot send a chat event to the window");
    }
}

/// A generation's events: forwarded to the caller's channel, and a `conversations-changed` notice as soon as the
/// user's message is committed (`Started`: a new conversation now has its title and a place in the list) and again
/// when the reply is stored.
struct ChatSink {
    handle: AppHandle,
    channel: Channel<ChatEvent>,
    method: &'static str,
    started: Arc<AtomicBool>,
}

impl ChatSink {
    fn new(handle: &AppHandle, channel: Channel<ChatEvent>, method: &'static str) -> ChatSink {
        ChatSink { handle: handle.clone(), channel, method, started: Arc::new(AtomicBool::new(false)) }
    }

    /// The sink the App's method takes.
    fn forwarder(&self) -> impl Fn(ChatEvent) + Send + Sync + 'static {
        let handle = self.handle.clone();
        let channel = self.channel.clone();
        let method = self.method;
        let started = self.started.clone();
        move |event: ChatEvent| {
            let is_start = matches!(event, ChatEvent::Started { .. });
            send_event(&channel, event);
            if is_start {
                started.store(true, Ordering::Release);
                events::conversations_changed(&handle, method);
            }
        }
    }

    /// After the method returned: a generation that stored anything changed the list once more (its reply).
    fn finish(self) {
        if self.started.load(Ordering::Acquire) {
            events::conversations_changed(&self.handle, self.method);
        }
    }
}
