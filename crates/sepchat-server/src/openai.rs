//! The OpenAI-compatible API, for existing clients (the `openai` Python package, curl scripts): `GET /v1/models`
//! and `POST /v1/chat/completions`, streamed or not. It exists only when the server is started with an
//! [`ApiToken`], and every request under `/v1` must carry it as `Authorization: Bearer <token>` (compared in
//! constant time); errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`.
//!
//! A chat completion is [`App::chat_completion`](sepchat_core::App::chat_completion): the messages rendered with the
//! model's own chat template, continued, and stored nowhere. It takes a permit of the server's generation queue
//! like every generation (none left: `429`), then waits for its turn behind the other API requests (the App runs
//! one completion at a time). A client that closes its event stream stops its generation, and so does a shutdown.
//!
//! Parameters: `messages` (`system` or `developer`, `user`, `assistant`; content as a string or as `text` parts),
//! `temperature`, `top_p`, `max_completion_tokens` (or the older `max_tokens`), `seed`, `stream` (with
//! `stream_options.include_usage`), `stop` (up to four sequences: the reply ends before the first one), `n` (only
//! 1). Unset parameters take the app's defaults, as a new conversation does; the filters OpenAI does not have
//! (top-k, min-p, the repeat penalty) are off, so `temperature: 0` is plain greedy decoding. Other fields are
//! ignored, as OpenAI-compatible servers usually do.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use sepchat_core::api::{
    ApiError, ChatCompletionRequest, ChatEvent, ChatTurn, CompleteResult, ErrorCode, Role, Sampling,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Mutex;

use crate::stream::{self, Item, Refused, Running, StopOnDrop, Target, KEEP_ALIVE};
use crate::AppState;

/// The shortest token accepted from the user: anyone on this machine can reach the port, so the token is all
/// that keeps other local users and programs out.
pub const MIN_API_TOKEN_CHARS: usize = 16;

/// Random bytes in a generated token (hex-encoded, so twice as many characters).
const GENERATED_TOKEN_BYTES: usize = 32;

/// OpenAI allows up to four stop sequences.
const MAX_STOP_SEQUENCES: usize = 4;

/// The bearer token of the OpenAI-compatible API. Its `Debug` does not show it, so a logged config cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    #[error("cannot draw a random API token from the operating system: {0}")]
    Random(getrandom::Error),
    #[error("the API token must be at least {MIN_API_TOKEN_CHARS} characters long")]
    TooShort,
    #[error("the API token may only contain visible ASCII characters (no spaces), as an HTTP header must")]
    NotVisibleAscii,
}

impl ApiToken {
    /// A new token from the operating system's random source: `sepchat-` and 64 hex digits.
    pub fn generate() -> Result<ApiToken, ApiTokenError> {
        let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(ApiTokenError::Random)?;
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        Ok(ApiToken(format!("sepchat-{hex}")))
    }

    /// A token chosen by the user, checked: long enough, and sendable in a header.
    pub fn new(token: impl Into<String>) -> Result<ApiToken, ApiTokenError> {
        let token = token.into();
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ApiTokenError::NotVisibleAscii);
        }
        if token.len() < MIN_API_TOKEN_CHARS {
            return Err(ApiTokenError::TooShort);
        }
        Ok(ApiToken(token))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token. Constant time in the bytes compared, so the answer's timing does not tell
    /// how much of a guess was right.
    fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq::constant_time_eq(self.0.as_bytes(), presented)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<hidden>)")
    }
}

/// Whether a request path belongs to the API (and so gets its errors in OpenAI's format).
pub(crate) fn is_api_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

#[derive(Clone)]
struct ApiState {
    state: AppState,
    /// API generations wait here for their turn: the App runs one completion at a time and refuses the rest as
    /// busy, while an OpenAI client expects its request to be served (within the generation queue's bound).
    turn: Arc<Mutex<()>>,
}

pub(crate) fn router(state: AppState, token: ApiToken) -> Router {
    let api = ApiState { state, turn: Arc::new(Mutex::new(())) };
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(retrieve_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1", any(unknown_endpoint))
        .route("/v1/{*rest}", any(unknown_endpoint))
        // On every route above, unknown ones included: without the token, nothing tells what exists.
        .layer(middleware::from_fn_with_state(Arc::new(token), require_token))
        .with_state(api)
}

async fn require_token(State(token): State<Arc<ApiToken>>, request: Request, next: Next) -> Response {
    let verdict =
        request.headers().get(header::AUTHORIZATION).and_then(bearer).map(|presented| token.matches(presented));
    match verdict {
        Some(true) => next.run(request).await,
        Some(false) => {
            tracing::warn!("refused an API request with a wrong token");
            OpenAiError::unauthorized("Incorrect API key provided.").into_response()
        }
        None => OpenAiError::unauthorized(
            "Missing API key: send `Authorization: Bearer <token>` with the token `sepchat serve --api` printed.",
        )
        .into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme's case does not matter).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    Some(value[scheme.len()..].trim_ascii())
}

// ---- Errors ----

/// An error as OpenAI's clients read it: `{"error": {"message", "type", "param", "code"}}` with a status.
#[derive(Debug)]
pub(crate) struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: Option<&'static str>,
}

impl OpenAiError {
    /// A refusal of the request as sent (OpenAI's `invalid_request_error`).
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> OpenAiError {
        OpenAiError { status, message: message.into(), kind: "invalid_request_error", code: None }
    }

    fn invalid(message: impl Into<String>) -> OpenAiError {
        OpenAiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthorized(message: &str) -> OpenAiError {
        OpenAiError { code: Some("invalid_api_key"), ..OpenAiError::new(StatusCode::UNAUTHORIZED, message) }
    }

    /// Too many generations running or waiting. 429 is what OpenAI's clients retry after a pause.
    fn busy(message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "requests",
            code: Some("rate_limit_exceeded"),
        }
    }

    fn server(status: StatusCode, code: &'static str, message: impl Into<String>) -> OpenAiError {
        OpenAiError { status, message: message.into(), kind: "server_error", code: Some(code) }
    }

    fn no_model() -> OpenAiError {
        OpenAiError::server(StatusCode::SERVICE_UNAVAILABLE, "model_not_loaded", "no model is loaded")
    }

    fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        match error.code {
            ErrorCode::InvalidInput => OpenAiError::invalid(error.message),
            ErrorCode::NotFound => OpenAiError::new(StatusCode::NOT_FOUND, error.message),
            // The completion slot is taken (the UI's raw completion, say): a retry shortly succeeds.
            ErrorCode::Busy => OpenAiError::busy(error.message),
            ErrorCode::Model => OpenAiError::server(StatusCode::SERVICE_UNAVAILABLE, "model_not_loaded", error.message),
            ErrorCode::Storage | ErrorCode::Engine | ErrorCode::Io | ErrorCode::Internal => {
                OpenAiError::server(StatusCode::INTERNAL_SERVER_ERROR, error.code.as_str(), error.message)
            }
        }
    }
}

impl From<Refused> for OpenAiError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::QueueFull => {
                OpenAiError::busy("too many replies are being generated or waiting; try again shortly")
            }
            Refused::Closing => {
                OpenAiError::server(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
            }
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self.status {
            // A generation takes seconds: a sooner retry would be refused again.
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// A JSON body whose refusals (malformed, a wrong field type, over the size limit) are OpenAI errors.
struct OpenAiJson<T>(T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = OpenAiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(OpenAiJson(value)),
            Err(rejection) => Err(OpenAiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

async fn unknown_endpoint() -> OpenAiError {
    OpenAiError { code: Some("unknown_url"), ..OpenAiError::new(StatusCode::NOT_FOUND, "no such endpoint") }
}

// ---- Models ----

#[derive(Serialize)]
struct ModelObject {
    id: String,
    object: &'static str,
    /// Unix seconds: the model file's modification time (0 when unknown).
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

/// The loaded model, named by its file name.
fn loaded_model(state: &AppState) -> Option<ModelObject> {
    let info = state.app.model_info()?;
    let created = std::fs::metadata(&info.path)
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|modified| modified.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |age| age.as_secs());
    Some(ModelObject { id: info.file_name, object: "model", created, owned_by: "sepchat" })
}

/// `GET /v1/models`: the loaded model (none loaded: an empty list).
async fn list_models(State(api): State<ApiState>) -> Json<ModelList> {
    Json(ModelList { object: "list", data: loaded_model(&api.state).into_iter().collect() })
}

/// `GET /v1/models/{model}`: the loaded model, when that is the one named.
async fn retrieve_model(State(api): State<ApiState>, Path(model): Path<String>) -> Response {
    match loaded_model(&api.state) {
        Some(loaded) if loaded.id == model => Json(loaded).into_response(),
        _ => OpenAiError {
            code: Some("model_not_found"),
            ..OpenAiError::new(StatusCode::NOT_FOUND, format!("the model `{model}` is not loaded"))
        }
        .into_response(),
    }
}

// ---- Chat completions ----

/// `POST /v1/chat/completions` as OpenAI documents it, the fields this server honours.
#[derive(Debug, Deserialize)]
struct ChatCompletionBody {
    /// Accepted and not checked: the loaded model answers whatever name is sent (clients often insist on one of
    /// their own, such as `gpt-4o-mini`); the answer's `model` names the loaded one.
    #[allow(dead_code)]
    model: Option<String>,
    messages: Vec<MessageBody>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    /// The older name of `max_completion_tokens`; the newer one wins when both are given.
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    /// Negative seeds are taken as their two's-complement bits: any integer is a valid, reproducible seed.
    seed: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptionsBody>,
    stop: Option<StopBody>,
    n: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct StreamOptionsBody {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopBody {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct MessageBody {
    role: String,
    /// Absent or `null` for an assistant message that only called tools: no text.
    content: Option<ContentBody>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ContentBody {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// A request checked and translated for the App.
struct Plan {
    request: ChatCompletionRequest,
    stream: bool,
    include_usage: bool,
    stops: Vec<String>,
}

impl ChatCompletionBody {
    fn plan(self) -> Result<Plan, OpenAiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(OpenAiError::invalid("only n = 1 is supported: one choice per request"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            return Err(OpenAiError::invalid("max_completion_tokens must be at least 1"));
        }
        let messages = self.messages.into_iter().map(chat_turn).collect::<Result<Vec<_>, _>>()?;
        if messages.is_empty() {
            return Err(OpenAiError::invalid("messages is empty"));
        }
        let stops: Vec<String> = match self.stop {
            None => Vec::new(),
            Some(StopBody::One(stop)) => vec![stop],
            Some(StopBody::Many(stops)) => stops,
        }
        .into_iter()
        .filter(|stop| !stop.is_empty())
        .collect();
        if stops.len() > MAX_STOP_SEQUENCES {
            return Err(OpenAiError::invalid(format!("at most {MAX_STOP_SEQUENCES} stop sequences are supported")));
        }
        let sampling = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: Some(0),
            min_p: Some(0.0),
            repeat_penalty: Some(1.0),
            max_tokens,
            seed: self.seed.map(|seed| seed as u64),
            extra: serde_json::Map::new(),
        };
        let request = ChatCompletionRequest { messages, sampling, ..ChatCompletionRequest::default() };
        let stream = self.stream.unwrap_or(false);
        let include_usage = stream && self.stream_options.and_then(|options| options.include_usage).unwrap_or(false);
        Ok(Plan { request, stream, include_usage, stops })
    }
}

fn chat_turn(message: MessageBody) -> Result<ChatTurn, OpenAiError> {
    let role = match message.role.as_str() {
        // `developer` is OpenAI's newer name for the system message.
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(OpenAiError::invalid(format!(
                "messages of role `{other}` are not supported (only system, developer, user and assistant)"
            )))
        }
    };
    let content = match message.content {
        None => String::new(),
        Some(ContentBody::Text(text)) => text,
        Some(ContentBody::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(text)) => texts.push(text),
                    ("text", None) => return Err(OpenAiError::invalid("a text content part has no `text`")),
                    (other, _) => {
                        return Err(OpenAiError::invalid(format!(
                            "content parts of type `{other}` are not supported (only text)"
                        )))
                    }
                }
            }
            // Parts are separate blocks of the message: a line break keeps their words apart.
            texts.join("\n")
        }
    };
    Ok(ChatTurn { role, content })
}

/// What every answer of one completion shares.
struct Identity {
    id: String,
    created: u64,
    model: String,
}

impl Identity {
    fn new(model: String) -> Identity {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Random where the OS allows (ids are unique across restarts), a counter otherwise.
        let number = getrandom::u64().unwrap_or_else(|_| NEXT.fetch_add(1, Ordering::Relaxed));
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        Identity { id: format!("chatcmpl-{number:016x}"), created, model }
    }

    fn chunk(&self, delta: serde_json::Value, finish_reason: Option<&str>) -> serde_json::Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

async fn chat_completions(State(api): State<ApiState>, OpenAiJson(body): OpenAiJson<ChatCompletionBody>) -> Response {
    match answer(&api, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn answer(api: &ApiState, body: ChatCompletionBody) -> Result<Response, OpenAiError> {
    let plan = body.plan()?;
    let model = loaded_model(&api.state).ok_or_else(OpenAiError::no_model)?;
    let permit = stream::admit(&api.state)?;
    let request = plan.request;
    let running =
        stream::start(&api.state, Target::Completion, permit, Some(api.turn.clone()), |app, sink| async move {
            app.chat_completion(request, sink).await
        });
    let mut reply = Reply::new(running, plan.stops);
    // The status is decided by the first item: a refusal (busy, a template error, no model) is an error answer
    // with its status rather than a stream that fails at once.
    reply.wait_for_start().await?;
    let identity = Identity::new(model.id);
    if plan.stream {
        let chunks = ChunkStream::new(reply, identity, plan.include_usage);
        let events = futures_util::stream::unfold(chunks, |mut chunks| async move {
            let event = chunks.next_event().await?;
            Some((Ok::<_, Infallible>(event), chunks))
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response());
    }
    let mut content = String::new();
    loop {
        match reply.next().await {
            Step::Text(text) => content.push_str(&text),
            Step::Done { finish_reason, usage } => {
                let body = json!({
                    "id": identity.id,
                    "object": "chat.completion",
                    "created": identity.created,
                    "model": identity.model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": null,
                        "finish_reason": finish_reason,
                    }],
                    "usage": usage,
                });
                return Ok(Json(body).into_response());
            }
            Step::Failed(error) => return Err(error),
        }
    }
}

/// One step of a reply as a client sees it.
enum Step {
    Text(String),
    Done { finish_reason: &'static str, usage: Usage },
    Failed(OpenAiError),
}

/// A running chat completion, read as text pieces cut at the first stop sequence.
struct Reply {
    items: UnboundedReceiver<Item<CompleteResult>>,
    /// Stops the generation when the reply is dropped unfinished (the client left) or a stop sequence came.
    guard: StopOnDrop,
    first: Option<Item<CompleteResult>>,
    stops: StopSequences,
    reached_stop_sequence: bool,
    /// What comes after the text still held back.
    done: Option<Step>,
}

impl Reply {
    fn new(running: Running<CompleteResult>, stops: Vec<String>) -> Reply {
        Reply {
            items: running.items,
            guard: running.guard,
            first: None,
            stops: StopSequences::new(stops),
            reached_stop_sequence: false,
            done: None,
        }
    }

    /// Waits for the generation's first item, and fails if that is an error.
    async fn wait_for_start(&mut self) -> Result<(), OpenAiError> {
        match self.items.recv().await {
            Some(Item::End(Err(error))) => Err(error.into()),
            Some(item) => {
                self.first = Some(item);
                Ok(())
            }
            None => Err(ended_without_answer()),
        }
    }

    async fn next(&mut self) -> Step {
        if let Some(done) = self.done.take() {
            return done;
        }
        loop {
            let item = match self.first.take() {
                Some(item) => Some(item),
                None => self.items.recv().await,
            };
            match item {
                Some(Item::Event(ChatEvent::Token { text })) => {
                    if self.reached_stop_sequence {
                        continue;
                    }
                    let (shown, reached) = self.stops.push(&text);
                    if reached {
                        self.reached_stop_sequence = true;
                        // The rest would be cut anyway: the engine can stop now.
                        self.guard.abandon();
                    }
                    if !shown.is_empty() {
                        return Step::Text(shown);
                    }
                }
                Some(Item::Event(_)) => {}
                Some(Item::End(Ok(result))) => {
                    if let Some(error) = result.error {
                        return Step::Failed(OpenAiError::server(StatusCode::INTERNAL_SERVER_ERROR, "engine", error));
                    }
                    let finish_reason = if !self.reached_stop_sequence && result.report.stop_reason == "max_tokens" {
                        "length"
                    } else {
                        "stop"
                    };
                    let prompt_tokens = result.report.prompt_tokens;
                    let completion_tokens = result.report.generated_tokens;
                    let usage =
                        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
                    let done = Step::Done { finish_reason, usage };
                    let held = self.stops.finish();
                    if held.is_empty() {
                        return done;
                    }
                    self.done = Some(done);
                    return Step::Text(held);
                }
                Some(Item::End(Err(error))) => return Step::Failed(error.into()),
                None => return Step::Failed(ended_without_answer()),
            }
        }
    }
}

fn ended_without_answer() -> OpenAiError {
    OpenAiError::server(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the generation ended without an answer")
}

/// A streamed answer's events: a first chunk with the role, one per text piece, a last one with the finish reason,
/// the usage when asked for, then `[DONE]`. A failure after the start is one `data: {"error": ...}` event (which
/// OpenAI's clients raise), with no `[DONE]`.
struct ChunkStream {
    reply: Reply,
    identity: Identity,
    include_usage: bool,
    queued: VecDeque<Event>,
    ended: bool,
}

impl ChunkStream {
    fn new(reply: Reply, identity: Identity, include_usage: bool) -> ChunkStream {
        let first = data(&identity.chunk(json!({"role": "assistant", "content": ""}), None));
        ChunkStream { reply, identity, include_usage, queued: VecDeque::from([first]), ended: false }
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match self.reply.next().await {
                Step::Text(text) => self.queued.push_back(data(&self.identity.chunk(json!({"content": text}), None))),
                Step::Done { finish_reason, usage } => {
                    self.queued.push_back(data(&self.identity.chunk(json!({}), Some(finish_reason))));
                    if self.include_usage {
                        let mut chunk = self.identity.chunk(json!({}), None);
                        chunk["choices"] = json!([]);
                        chunk["usage"] = json!(usage);
                        self.queued.push_back(data(&chunk));
                    }
                    self.queued.push_back(Event::default().data("[DONE]"));
                    self.ended = true;
                }
                Step::Failed(error) => {
                    tracing::warn!(message = %error.message, "a streamed API completion failed");
                    self.queued.push_back(data(&error.body()));
                    self.ended = true;
                }
            }
        }
    }
}

fn data(value: &serde_json::Value) -> Event {
    Event::default().data(value.to_string())
}

/// Cuts a streamed text before the first stop sequence. Text that might be the start of one is held back until
/// the next piece tells, so no part of a stop sequence is ever shown.
struct StopSequences {
    stops: Vec<String>,
    held: String,
}

impl StopSequences {
    fn new(stops: Vec<String>) -> StopSequences {
        StopSequences { stops, held: String::new() }
    }

    /// Adds a piece; returns the text that can be shown now, and whether a stop sequence was reached (the text
    /// shown then ends just before it, and nothing more should be added).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        let reached = self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min();
        if let Some(at) = reached {
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        let keep = self.stops.iter().map(|stop| partial_overlap(&self.held, stop)).max().unwrap_or(0);
        let shown = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (shown, false)
    }

    /// The text held back when the reply ended without reaching a stop sequence.
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The length of the longest end of `text` that is a proper beginning of `stop`.
fn partial_overlap(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&length| stop.is_char_boundary(length) && text.ends_with(&stop[..length]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut sequences = StopSequences::new(stops.iter().map(|stop| stop.to_string()).collect());
        let mut shown = String::new();
        for piece in pieces {
            let (text, reached) = sequences.push(piece);
            shown.push_str(&text);
            if reached {
                return (shown, true);
            }
        }
        shown.push_str(&sequences.finish());
        (shown, false)
    }

    #[test]
    fn the_text_ends_before_the_first_stop_sequence_even_across_pieces() {
        assert_eq!(run(&["\n\n"], &["Paris", ".\n", "\nMore"]), ("Paris.".to_string(), true));
        assert_eq!(run(&["END", "stop"], &["one st", "op two END"]), ("one ".to_string(), true));
        assert_eq!(run(&["END"], &["a END b END"]), ("a ".to_string(), true));
        assert_eq!(run(&[], &["all ", "of it"]), ("all of it".to_string(), false));
    }

    #[test]
    fn a_possible_start_of_a_stop_sequence_is_held_back_then_shown() {
        let mut sequences = StopSequences::new(vec!["<end>".to_string()]);
        assert_eq!(sequences.push("text <e"), ("text ".to_string(), false));
        assert_eq!(sequences.push("nd"), (String::new(), false));
        assert_eq!(sequences.push("less"), ("<endless".to_string(), false));
        assert_eq!(sequences.push(" <"), (" ".to_string(), false));
        assert_eq!(sequences.finish(), "<");
        assert_eq!(partial_overlap("été", "tél"), "té".len());
        assert_eq!(partial_overlap("abc", "xyz"), 0);
        assert_eq!(partial_overlap("ab é", "éclair"), 2);
    }

    #[test]
    fn tokens_are_checked_and_hidden() {
        assert!(matches!(ApiToken::new("short"), Err(ApiTokenError::TooShort)));
        assert!(matches!(ApiToken::new("with a space in it!"), Err(ApiTokenError::NotVisibleAscii)));
        let token = ApiToken::new("a-long-enough-token").expect("valid");
        assert!(token.matches(b"a-long-enough-token"));
        assert!(!token.matches(b"a-long-enough-tokeN"));
        assert!(!token.matches(b"a-long-enough"));
        assert_eq!(format!("{token:?}"), "ApiToken(<hidden>)");
        let generated = ApiToken::generate().expect("the OS has a random source");
        assert_eq!(generated.as_str().len(), "sepchat-".len() + 2 * GENERATED_TOKEN_BYTES);
        assert_ne!(generated, ApiToken::generate().expect("random"));
        assert!(ApiToken::new(generated.as_str()).is_ok());
    }

    #[test]
    fn bearer_headers() {
        let value = |text: &'static str| HeaderValue::from_static(text);
        assert_eq!(bearer(&value("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&value("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&value("Basic abc")), None);
        assert_eq!(bearer(&value("Bearer")), None);
    }

    #[test]
    fn requests_translate_to_the_app() {
        let body: ChatCompletionBody = serde_json::from_value(json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "Be brief"},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
            ],
            "temperature": 0,
            "max_tokens": 9,
            "max_completion_tokens": 7,
            "seed": -1,
            "stop": "\n",
            "stream": true,
            "stream_options": {"include_usage": true},
            "frequency_penalty": 0,
        }))
        .expect("parses");
        let plan = body.plan().expect("valid");
        assert_eq!(plan.request.messages[0], ChatTurn { role: Role::System, content: "Be brief".into() });
        assert_eq!(plan.request.messages[1].content, "Hello\nthere");
        assert_eq!(plan.request.sampling.max_tokens, Some(7));
        assert_eq!(plan.request.sampling.seed, Some(u64::MAX));
        assert_eq!(plan.request.sampling.repeat_penalty, Some(1.0));
        assert_eq!(plan.stops, ["\n"]);
        assert!(plan.stream && plan.include_usage);

        let refused = |body: serde_json::Value| {
            let body: ChatCompletionBody = serde_json::from_value(body).expect("parses");
            body.plan().err().map(|error| error.message)
        };
        let user = json!([{"role": "user", "content": "hi"}]);
        assert!(refused(json!({"messages": []})).is_some_and(|message| message.contains("empty")));
        assert!(refused(json!({"messages": user, "n": 2})).is_some_and(|message| message.contains("n = 1")));
        assert!(refused(json!({"messages": [{"role": "tool", "content": "x"}]})).is_some_and(|m| m.contains("tool")));
        let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]);
        assert!(refused(json!({"messages": image})).is_some_and(|message| message.contains("image_url")));
        assert!(refused(json!({"messages": user, "max_tokens": 0})).is_some());
        assert!(refused(json!({"messages": user, "stop": ["a", "b", "c", "d", "e"]})).is_some());
        assert!(refused(json!({"messages": user})).is_none());
    }
}
