//! `POST /rpc/<method>`: one route per [`App`] method, named as the method. The table at the bottom is the only
//! place routes are listed; each handler below has the method's name and calls that method, so a route cannot
//! drift from what it calls. Methods that take plain arguments read them from a JSON object of the same names
//! (`{"conversation_id": 3, "title": "Trip"}`); methods without arguments ignore the body (which must still be
//! JSON, like every POST).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sepchat_core::api::{
    CacheMap, CompleteRequest, ConversationInfo, ConversationView, EditMessageRequest, ErrorCode, ExportFormat,
    ExportRequest, ExportResult, ImportRequest, ImportResult, LoadModelRequest, ModelInfo, NewConversationRequest,
    RegenerateRequest, Sampling, SearchHit, SendMessageRequest,
};
use serde::{Deserialize, Serialize};

use crate::error::{Body, Failure};
use crate::stream::{self, Target};
use crate::AppState;

type Answer<T> = Result<Json<T>, Failure>;

/// `{"conversation_id": ...}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversationArgs {
    conversation_id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameArgs {
    conversation_id: i64,
    title: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinArgs {
    conversation_id: i64,
    pinned: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemPromptArgs {
    conversation_id: i64,
    /// Absent or `null`: the app's default; `""`: none.
    #[serde(default)]
    system_prompt: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplingArgs {
    conversation_id: i64,
    sampling: Sampling,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheProfileArgs {
    conversation_id: i64,
    #[serde(default)]
    cache_profile: Option<String>,
}

/// `{"conversation_id": 3, "cache": "dense"}`; `cache` absent or `null`: the conversation's own setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheMapArgs {
    conversation_id: i64,
    #[serde(default)]
    cache: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchArgs {
    conversation_id: i64,
    message_id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderExportArgs {
    #[serde(default)]
    conversation_ids: Option<Vec<i64>>,
    format: ExportFormat,
}

// ---- Model ----

async fn load_model(State(state): State<AppState>, Body(request): Body<LoadModelRequest>) -> Answer<ModelInfo> {
    Ok(Json(state.app.load_model(request).await?))
}

async fn model_info(State(state): State<AppState>) -> Json<Option<ModelInfo>> {
    Json(state.app.model_info())
}

// ---- Conversations ----

async fn create_conversation(
    State(state): State<AppState>,
    Body(request): Body<NewConversationRequest>,
) -> Answer<ConversationInfo> {
    Ok(Json(state.app.create_conversation(request).await?))
}

async fn list_conversations(State(state): State<AppState>) -> Answer<Vec<ConversationInfo>> {
    Ok(Json(state.app.list_conversations().await?))
}

async fn list_trash(State(state): State<AppState>) -> Answer<Vec<ConversationInfo>> {
    Ok(Json(state.app.list_trash().await?))
}

async fn get_conversation(
    State(state): State<AppState>,
    Body(args): Body<ConversationArgs>,
) -> Answer<ConversationView> {
    Ok(Json(state.app.get_conversation(args.conversation_id).await?))
}

async fn rename_conversation(State(state): State<AppState>, Body(args): Body<RenameArgs>) -> Answer<ConversationInfo> {
    Ok(Json(state.app.rename_conversation(args.conversation_id, &args.title).await?))
}

async fn pin_conversation(State(state): State<AppState>, Body(args): Body<PinArgs>) -> Answer<ConversationInfo> {
    Ok(Json(state.app.pin_conversation(args.conversation_id, args.pinned).await?))
}

async fn delete_conversation(
    State(state): State<AppState>,
    Body(args): Body<ConversationArgs>,
) -> Answer<ConversationInfo> {
    Ok(Json(state.app.delete_conversation(args.conversation_id).await?))
}

async fn restore_conversation(
    State(state): State<AppState>,
    Body(args): Body<ConversationArgs>,
) -> Answer<ConversationInfo> {
    Ok(Json(state.app.restore_conversation(args.conversation_id).await?))
}

async fn purge_conversation(State(state): State<AppState>, Body(args): Body<ConversationArgs>) -> Answer<()> {
    Ok(Json(state.app.purge_conversation(args.conversation_id).await?))
}

async fn empty_trash(State(state): State<AppState>) -> Answer<u64> {
    Ok(Json(state.app.empty_trash().await?))
}

async fn search(State(state): State<AppState>, Body(args): Body<SearchArgs>) -> Answer<Vec<SearchHit>> {
    Ok(Json(state.app.search(&args.query, args.limit).await?))
}

// ---- Settings ----

async fn set_system_prompt(
    State(state): State<AppState>,
    Body(args): Body<SystemPromptArgs>,
) -> Answer<ConversationInfo> {
    Ok(Json(state.app.set_system_prompt(args.conversation_id, args.system_prompt).await?))
}

async fn set_sampling(State(state): State<AppState>, Body(args): Body<SamplingArgs>) -> Answer<ConversationInfo> {
    Ok(Json(state.app.set_sampling(args.conversation_id, args.sampling).await?))
}

async fn set_cache_profile(
    State(state): State<AppState>,
    Body(args): Body<CacheProfileArgs>,
) -> Answer<ConversationInfo> {
    Ok(Json(state.app.set_cache_profile(args.conversation_id, args.cache_profile).await?))
}

async fn cache_map(State(state): State<AppState>, Body(args): Body<CacheMapArgs>) -> Answer<CacheMap> {
    Ok(Json(state.app.cache_map(args.conversation_id, args.cache).await?))
}

// ---- Chat ----

async fn send_message(State(state): State<AppState>, Body(request): Body<SendMessageRequest>) -> Response {
    let target = Target::Conversation(request.conversation_id);
    stream::generate(&state, target, |app, sink| async move { app.send_message(request, sink).await }).await
}

async fn regenerate(State(state): State<AppState>, Body(request): Body<RegenerateRequest>) -> Response {
    let target = Target::Conversation(request.conversation_id);
    stream::generate(&state, target, |app, sink| async move { app.regenerate(request, sink).await }).await
}

async fn edit_message(State(state): State<AppState>, Body(request): Body<EditMessageRequest>) -> Response {
    let target = Target::Conversation(request.conversation_id);
    stream::generate(&state, target, |app, sink| async move { app.edit_message(request, sink).await }).await
}

async fn complete(State(state): State<AppState>, Body(request): Body<CompleteRequest>) -> Response {
    stream::generate(&state, Target::Completion, |app, sink| async move { app.complete(request, sink).await }).await
}

async fn stop(State(state): State<AppState>, Body(args): Body<ConversationArgs>) -> Json<bool> {
    Json(state.app.stop(args.conversation_id))
}

async fn stop_completion(State(state): State<AppState>) -> Json<bool> {
    Json(state.app.stop_completion())
}

async fn is_generating(State(state): State<AppState>, Body(args): Body<ConversationArgs>) -> Json<bool> {
    Json(state.app.is_generating(args.conversation_id))
}

async fn switch_branch(State(state): State<AppState>, Body(args): Body<BranchArgs>) -> Answer<ConversationView> {
    Ok(Json(state.app.switch_branch(args.conversation_id, args.message_id).await?))
}

// ---- Export and import ----

async fn export(State(state): State<AppState>, Body(request): Body<ExportRequest>) -> Answer<ExportResult> {
    Ok(Json(state.app.export(request).await?))
}

async fn render_export(State(state): State<AppState>, Body(args): Body<RenderExportArgs>) -> Answer<String> {
    Ok(Json(state.app.render_export(args.conversation_ids, args.format).await?))
}

async fn import(State(state): State<AppState>, Body(request): Body<ImportRequest>) -> Answer<ImportResult> {
    Ok(Json(state.app.import(request).await?))
}

/// `{"document": "<the JSON export's text>"}`: what a browser that read the chosen file sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportDocumentArgs {
    document: String,
}

async fn import_document(State(state): State<AppState>, Body(args): Body<ImportDocumentArgs>) -> Answer<ImportResult> {
    Ok(Json(state.app.import_document(&args.document).await?))
}

// ---- Outside the table ----

/// `GET /api/health`: the server answers, and which model is loaded (`null`: none yet).
#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    model: Option<ModelInfo>,
}

async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION"), model: state.app.model_info() })
}

/// A method name that is not in the table: JSON like every other RPC answer, not the UI's 404 page.
async fn unknown_method() -> Response {
    Failure::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such method").into_response()
}

/// The route table: each name is an App method and the handler of the same name above. `uploads` are the methods
/// whose body is a whole file (a JSON export), served with the larger upload body limit.
macro_rules! rpc_table {
    (methods: [$($method:ident),* $(,)?], uploads: [$($upload:ident),* $(,)?] $(,)?) => {
        /// Every method served under `/rpc/`, as named in the App.
        pub const METHODS: &[&str] = &[$(stringify!($method),)* $(stringify!($upload)),*];

        /// The routes of ordinary requests, and those of uploads, apart so each can get its body limit.
        pub(crate) fn routers(state: AppState) -> (Router, Router) {
            let requests = Router::new()
                $(.route(concat!("/rpc/", stringify!($method)), post($method)))*
                .route("/rpc/{method}", axum::routing::any(unknown_method))
                .route("/api/health", get(health))
                .with_state(state.clone());
            let uploads = Router::new()
                $(.route(concat!("/rpc/", stringify!($upload)), post($upload)))*
                .with_state(state);
            (requests, uploads)
        }
    };
}

rpc_table! {
    methods: [
        load_model,
        model_info,
        create_conversation,
        list_conversations,
        list_trash,
        get_conversation,
        rename_conversation,
        pin_conversation,
        delete_conversation,
        restore_conversation,
        purge_conversation,
        empty_trash,
        search,
        set_system_prompt,
        set_sampling,
        set_cache_profile,
        cache_map,
        send_message,
        regenerate,
        edit_message,
        complete,
        stop,
        stop_completion,
        is_generating,
        switch_branch,
        export,
        render_export,
        import,
    ],
    uploads: [import_document],
}
