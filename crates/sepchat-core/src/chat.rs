//! Generating replies: send, regenerate, edit, raw completion and chat completion (nothing stored). One turn, step
//! by step:
//!
//! 1. The prompt is the branch up to the user's message, rendered with the model's chat template and tokenized
//!    (before anything is stored, so a template error stores nothing).
//! 2. The user's message is committed; then the session is prepared (warm, restored from a snapshot, or left to
//!    the worker to replay) and the reply's row created as `streaming`.
//! 3. The engine worker runs the request on its thread; its std channel is drained on tokio's blocking pool into
//!    an async channel. Tokens go to the sink at once and to the database every [`FLUSH_INTERVAL`]; cache readouts
//!    go to the sink about ten times a second; compactions become compression markers.
//! 4. The reply is finished with its status and stats; after a finished reply the session is snapshotted to disk
//!    (`<data dir>/snapshots/<conversation>-<reply>.kv`) so the conversation can resume from there later.
//!
//! Each turn runs as its own tokio task: a caller that stops waiting does not leave the reply `streaming`.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sepchat_engine::{CacheConfig, Event, GenerateRequest, GenerationSummary, StopReason};
use sepchat_store::{
    Conversation, Message, MessageStats, MessageStatus, NewCompressionMarker, Role, Store, StoreError,
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{
    self, ApiError, CacheSource, ChatCompletionRequest, ChatEvent, CompleteRequest, CompleteResult, CompressionMarker,
    EditMessageRequest, GenerationReport, RegenerateRequest, SendMessageRequest, SendResult, SnapshotReport,
    StreamOptions,
};
use crate::app::{blocking, lock, App, LoadedModel};
use crate::error::{CoreError, Result};
use crate::prompt;
use crate::session::{self, session_of, SessionState, RAW_SESSION, SNAPSHOTS_KEPT_PER_CONVERSATION};
use crate::tree::message_info;

/// Where a generation's events go. Called on the async side, in order, never concurrently for one generation.
pub type Sink = Arc<dyn Fn(ChatEvent) + Send + Sync>;

/// How often a streaming reply's text is written to the database: a crash loses at most this much of a reply,
/// and a long reply costs a few writes a second rather than one per token.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// The least time between two [`ChatEvent::Kv`]s (about ten a second: a panel redraw rate, not a token rate).
pub const KV_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// The key raw completions hold in the table of running generations (conversation ids start at 1).
const RAW_COMPLETION_KEY: i64 = 0;

enum Turn {
    Send { text: String },
    Edit { message_id: i64, text: String },
    Regenerate { message_id: i64 },
}

/// What a turn answers: the branch before the user's message, and that message.
struct TurnPlan {
    before: Vec<Message>,
    text: String,
    user: UserTurn,
}

enum UserTurn {
    New { parent_id: Option<i64> },
    Existing(i64),
}

/// Where the session's cache comes from, decided before the request is sent.
struct Prepared {
    source: CacheSource,
    detail: Option<String>,
    /// The readout the cache ended the previous reply with, when this turn extends it: a compaction while the new
    /// prompt is fed then shows as a rise of the counter.
    baseline: Option<api::KvStats>,
}

impl App {
    /// Commits `text` as a user message at the end of the active branch and streams the reply to `sink`. Fails
    /// before storing anything when the conversation is missing, in the trash or busy, no model is loaded, the
    /// text is empty or the settings are invalid. A failure of the engine during the reply is not an `Err`: the
    /// reply is stored with status `error`, its partial text and the message, and returned.
    pub async fn send_message(
        &self,
        request: SendMessageRequest,
        sink: impl Fn(ChatEvent) + Send + Sync + 'static,
    ) -> Result<SendResult, ApiError> {
        let turn = Turn::Send { text: request.text };
        self.spawn_turn(request.conversation_id, turn, request.stream, Arc::new(sink)).await
    }

    /// A new reply to the same user message, beside the old one (which stays, as a sibling). `message_id` may be
    /// the reply or the user message. The prompt is the branch up to that user message: a warm cache that never
    /// compacted rolls back; otherwise the snapshot after the previous reply is restored if kept, else it replays.
    pub async fn regenerate(
        &self,
        request: RegenerateRequest,
        sink: impl Fn(ChatEvent) + Send + Sync + 'static,
    ) -> Result<SendResult, ApiError> {
        let turn = Turn::Regenerate { message_id: request.message_id };
        self.spawn_turn(request.conversation_id, turn, request.stream, Arc::new(sink)).await
    }

    /// A new version of a user message (a sibling of it) answered at once; the old version and what followed it
    /// remain another branch.
    pub async fn edit_message(
        &self,
        request: EditMessageRequest,
        sink: impl Fn(ChatEvent) + Send + Sync + 'static,
    ) -> Result<SendResult, ApiError> {
        let turn = Turn::Edit { message_id: request.message_id, text: request.text };
        self.spawn_turn(request.conversation_id, turn, request.stream, Arc::new(sink)).await
    }

    /// Continues `prompt` as plain text (no chat template, nothing stored). The sink gets `Prefill`, `Kv` and
    /// `Token` events; the result is the return value. One completion runs at a time; [`App::stop_completion`]
    /// stops it.
    pub async fn complete(
        &self,
        request: CompleteRequest,
        sink: impl Fn(ChatEvent) + Send + Sync + 'static,
    ) -> Result<CompleteResult, ApiError> {
        let app = self.clone();
        let sink: Sink = Arc::new(sink);
        let task = tokio::spawn(async move { app.run_complete(request, sink).await });
        match task.await {
            Ok(result) => result.map_err(ApiError::from),
            Err(error) => Err(CoreError::Task(error.to_string()).into()),
        }
    }

    /// Renders `request.messages` with the model's chat template (as a conversation's turn would be) and continues
    /// them, storing nothing. The sink gets `Prefill`, `Kv` and `Token` events; the result is the return value. It
    /// is a raw completion whose prompt is the rendered chat: it shares [`App::complete`]'s slot (one at a time,
    /// `busy` otherwise) and engine session, and [`App::stop_completion`] stops it.
    pub async fn chat_completion(
        &self,
        request: ChatCompletionRequest,
        sink: impl Fn(ChatEvent) + Send + Sync + 'static,
    ) -> Result<CompleteResult, ApiError> {
        let app = self.clone();
        let sink: Sink = Arc::new(sink);
        let task = tokio::spawn(async move { app.run_chat_completion(request, sink).await });
        match task.await {
            Ok(result) => result.map_err(ApiError::from),
            Err(error) => Err(CoreError::Task(error.to_string()).into()),
        }
    }

    /// Stops the raw completion in progress; `false` when none runs.
    pub fn stop_completion(&self) -> bool {
        self.stop(RAW_COMPLETION_KEY)
    }

    async fn spawn_turn(
        &self,
        conversation_id: i64,
        turn: Turn,
        stream: StreamOptions,
        sink: Sink,
    ) -> Result<SendResult, ApiError> {
        let app = self.clone();
        // Its own task: if the caller stops waiting (a closed connection), the reply still finishes and is stored
        // rather than left `streaming` until the next start.
        let task = tokio::spawn(async move { app.run_turn(conversation_id, turn, stream, sink).await });
        match task.await {
            Ok(result) => result.map_err(ApiError::from),
            Err(error) => Err(CoreError::Task(error.to_string()).into()),
        }
    }

    async fn run_turn(
        &self,
        conversation_id: i64,
        turn: Turn,
        stream: StreamOptions,
        sink: Sink,
    ) -> Result<SendResult> {
        let inner = &self.inner;
        let store = &inner.store;
        let model = inner.loaded()?;
        let claim = inner.claim(conversation_id)?;
        let conversation = store.get_conversation(conversation_id).await?;
        if conversation.deleted_at.is_some() {
            return Err(CoreError::Trashed(conversation_id));
        }
        let config = prompt::cache_config(conversation.cache_profile.as_deref(), model.info.context_length)?;
        let (sampling, max_tokens) = prompt::sampling_params(&conversation.sampling.clone().unwrap_or_default())?;
        let plan = self.plan_turn(&conversation, turn).await?;
        let turns = plan
            .before
            .iter()
            .map(|message| (message.role, message.content.as_str()))
            .chain(std::iter::once((Role::User, plan.text.as_str())));
        let messages = prompt::chat_messages(conversation.system_prompt.as_deref(), turns);
        let built = prompt::build_prompt(model.model(), &messages)?;

        // The user's words are on disk before anything is generated.
        let user_message_id = match plan.user {
            UserTurn::Existing(id) => id,
            UserTurn::New { parent_id } => {
                let message =
                    store.add_message(conversation_id, parent_id, Role::User, &plan.text, MessageStatus::Done).await?;
                if conversation.title.trim().is_empty() {
                    let title = prompt::auto_title(&plan.text);
                    if !title.is_empty() {
                        store.rename(conversation_id, &title).await?;
                    }
                }
                message.id
            }
        };
        if conversation.model_sha256.as_deref() != Some(model.info.sha256.as_str())
            || conversation.model_path.as_deref() != Some(model.info.path.as_str())
        {
            store.set_model(conversation_id, Some(&model.info.path), Some(&model.info.sha256)).await?;
        }

        let replies_before: Vec<i64> =
            plan.before.iter().rev().filter(|message| message.role == Role::Assistant).map(|m| m.id).collect();
        let has_history = !plan.before.is_empty();
        let prepared = self.prepare_session(&model, conversation_id, &replies_before, has_history, &config).await;
        let reply = store.start_assistant_message(user_message_id).await?;
        sink(ChatEvent::Started { conversation_id, user_message_id, assistant_message_id: reply.id });
        sink(ChatEvent::Session { source: prepared.source, detail: prepared.detail.clone() });

        let session = session_of(conversation_id);
        let (events, receiver) = mpsc::channel();
        let mut request = GenerateRequest::new(session, built.tokens, sampling, max_tokens, events);
        request.cache = Some(config.clone());
        request.protected_tokens = built.protected_tokens;
        request.cancel = claim.cancel.clone();
        lock(&inner.sessions).touch(session);
        if let Err(error) = model.engine.submit(request) {
            lock(&inner.sessions).forget(session);
            store.finish_message(reply.id, MessageStatus::Error, "", Some(&error.to_string()), None).await?;
            return Err(error.into());
        }
        let mut streamer = Streamer {
            sink: &sink,
            kv: KvThrottle::new(stream.kv_every_step),
            reply: Some(ReplyRow {
                store,
                message_id: reply.id,
                last_flush: Instant::now(),
                previous_stats: prepared.baseline.clone(),
                markers: Vec::new(),
            }),
        };
        let ending = streamer.run(bridge(receiver)).await;
        let markers = streamer.reply.map(|row| row.markers).unwrap_or_default();

        let (finished, report, snapshot, source, detail) = match ending {
            Ending::Finished(summary) => {
                let status = if summary.stop_reason == StopReason::Cancelled {
                    MessageStatus::Stopped
                } else {
                    MessageStatus::Done
                };
                let stats = message_stats(&summary, &config);
                let finished = store.finish_message(reply.id, status, &summary.text, None, Some(&stats)).await?;
                let snapshot = self.snapshot(&model, conversation_id, reply.id).await;
                let kv = api::KvStats::from(&summary.kv);
                lock(&inner.sessions).set_state(
                    session,
                    SessionState {
                        config: config.clone(),
                        last_reply: Some(reply.id),
                        compacted: kv.compactions > 0,
                        last_stats: Some(kv),
                    },
                );
                let (source, detail) = corrected_source(prepared, summary.reused_tokens, has_history);
                (finished, generation_report(&summary, &config), snapshot, source, detail)
            }
            Ending::Failed { message, partial_text } => {
                // The worker dropped the session's cache (it may hold part of a chunk).
                lock(&inner.sessions).forget(session);
                let stats = MessageStats { stop_reason: Some("error".into()), ..MessageStats::default() };
                let finished = store
                    .finish_message(reply.id, MessageStatus::Error, &partial_text, Some(&message), Some(&stats))
                    .await?;
                (finished, failed_report(&config), None, prepared.source, prepared.detail)
            }
        };
        let siblings = store.children(conversation_id, finished.parent_id).await?;
        let result = SendResult {
            conversation_id,
            user_message_id,
            message: message_info(&finished, siblings.iter().map(|message| message.id).collect()),
            cache_source: source,
            cache_detail: detail,
            report,
            compressions: markers,
            snapshot,
        };
        drop(claim);
        sink(ChatEvent::Finished { result: Box::new(result.clone()) });
        Ok(result)
    }

    async fn plan_turn(&self, conversation: &Conversation, turn: Turn) -> Result<TurnPlan> {
        let store = &self.inner.store;
        match turn {
            Turn::Send { text } => {
                check_text(&text)?;
                let parent_id = conversation.active_leaf_id;
                let before = match parent_id {
                    Some(id) => store.branch(id).await?,
                    None => Vec::new(),
                };
                Ok(TurnPlan { before, text, user: UserTurn::New { parent_id } })
            }
            Turn::Edit { message_id, text } => {
                check_text(&text)?;
                let message = self.message_in(conversation.id, message_id).await?;
                if message.role != Role::User {
                    return Err(CoreError::InvalidInput(format!(
                        "message {message_id} is not a user message: only the user's messages can be edited"
                    )));
                }
                let before = match message.parent_id {
                    Some(id) => store.branch(id).await?,
                    None => Vec::new(),
                };
                Ok(TurnPlan { before, text, user: UserTurn::New { parent_id: message.parent_id } })
            }
            Turn::Regenerate { message_id } => {
                let message = self.message_in(conversation.id, message_id).await?;
                let user = match (message.role, message.parent_id) {
                    (Role::User, _) => message,
                    (Role::Assistant, Some(parent)) => self.message_in(conversation.id, parent).await?,
                    _ => {
                        return Err(CoreError::InvalidInput(format!(
                            "message {message_id} is neither a reply nor a user message to answer"
                        )))
                    }
                };
                if user.role != Role::User {
                    return Err(CoreError::InvalidInput(format!(
                        "message {message_id} does not answer a user message"
                    )));
                }
                let mut before = store.branch(user.id).await?;
                before.pop();
                Ok(TurnPlan { before, text: user.content, user: UserTurn::Existing(user.id) })
            }
        }
    }

    /// The message, if it belongs to the conversation (one of another conversation is "not found" here).
    async fn message_in(&self, conversation_id: i64, message_id: i64) -> Result<Message> {
        let message = self.inner.store.get_message(message_id).await?;
        if message.conversation_id != conversation_id {
            return Err(StoreError::MessageNotFound(message_id).into());
        }
        Ok(message)
    }

    /// Decides where the session's cache comes from. `replies_before` are the replies on the branch before the
    /// new user message, newest first: the newest one with a snapshot on disk is the best place to resume.
    async fn prepare_session(
        &self,
        model: &Arc<LoadedModel>,
        conversation_id: i64,
        replies_before: &[i64],
        has_history: bool,
        config: &CacheConfig,
    ) -> Prepared {
        let session = session_of(conversation_id);
        let state = lock(&self.inner.sessions).state(session).cloned();
        if let Some(state) = state.filter(|state| &state.config == config) {
            if state.last_reply.is_some() && state.last_reply == replies_before.first().copied() {
                return Prepared { source: CacheSource::Warm, detail: None, baseline: state.last_stats };
            }
            if !state.compacted {
                let detail = Some("rolled back to where the branches part".to_string());
                return Prepared { source: CacheSource::Warm, detail, baseline: None };
            }
            // A compacted cache cannot roll back to an earlier turn: better a snapshot than the worker's rebuild.
        }
        if !has_history {
            return Prepared { source: CacheSource::Fresh, detail: None, baseline: None };
        }
        let dir = &self.inner.snapshot_dir;
        let found = replies_before.iter().find_map(|&reply_id| {
            let path = session::snapshot_path(dir, conversation_id, reply_id);
            path.is_file().then_some((reply_id, path))
        });
        let Some((reply_id, path)) = found else {
            let detail = Some("no snapshot of this branch: replaying it".to_string());
            return Prepared { source: CacheSource::Replayed, detail, baseline: None };
        };
        let engine = model.engine.clone();
        let fingerprint = model.info.sha256.clone();
        let restore_config = config.clone();
        lock(&self.inner.sessions).touch(session);
        let restored = blocking(move || {
            engine.restore_session(session, &path, &fingerprint, restore_config).map_err(CoreError::from)
        })
        .await;
        match restored {
            Ok(info) => {
                lock(&self.inner.sessions).set_state(
                    session,
                    SessionState {
                        config: config.clone(),
                        last_reply: Some(reply_id),
                        compacted: info.tokens_seen > info.slots,
                        last_stats: None,
                    },
                );
                let detail = format!(
                    "{} tokens in {} slots from the snapshot after reply {reply_id}",
                    info.tokens_seen, info.slots
                );
                Prepared { source: CacheSource::RestoredFromSnapshot, detail: Some(detail), baseline: None }
            }
            Err(error) => {
                // A refused restore leaves the worker without the session.
                lock(&self.inner.sessions).forget(session);
                let detail = format!("snapshot refused ({}): replaying", ApiError::from(error).message);
                Prepared { source: CacheSource::Replayed, detail: Some(detail), baseline: None }
            }
        }
    }

    /// Writes the session's cache after `reply_id` and drops the conversation's older snapshots. A failure only
    /// costs a replay later, so it is logged, not returned.
    async fn snapshot(&self, model: &Arc<LoadedModel>, conversation_id: i64, reply_id: i64) -> Option<SnapshotReport> {
        let dir = self.inner.snapshot_dir.clone();
        let path = session::snapshot_path(&dir, conversation_id, reply_id);
        let engine = model.engine.clone();
        let fingerprint = model.info.sha256.clone();
        let write_path = path.clone();
        let written = blocking(move || {
            let info = engine
                .snapshot_session(session_of(conversation_id), &write_path, &fingerprint)
                .map_err(CoreError::from)?;
            session::prune_snapshots(&dir, conversation_id, SNAPSHOTS_KEPT_PER_CONVERSATION);
            Ok(info)
        })
        .await;
        match written {
            Ok(info) => Some(SnapshotReport {
                path: path.to_string_lossy().into_owned(),
                slots: info.slots,
                tokens_seen: info.tokens_seen,
                bytes: info.bytes,
            }),
            Err(error) => {
                tracing::warn!(conversation_id, reply_id, %error, "cannot write the KV snapshot");
                None
            }
        }
    }

    async fn run_complete(&self, request: CompleteRequest, sink: Sink) -> Result<CompleteResult> {
        if request.prompt.is_empty() {
            return Err(CoreError::InvalidInput("the prompt is empty".into()));
        }
        let model = self.inner.loaded()?;
        let tokens = model.model().tokenizer().encode(&request.prompt)?;
        let prompt = prompt::Prompt { tokens, protected_tokens: 0 };
        self.run_raw(&model, prompt, &request.sampling, request.cache_profile.as_deref(), request.stream, sink).await
    }

    async fn run_chat_completion(&self, request: ChatCompletionRequest, sink: Sink) -> Result<CompleteResult> {
        let mut turns = request.messages.as_slice();
        if turns.is_empty() {
            return Err(CoreError::InvalidInput("there are no messages to answer".into()));
        }
        // A leading system message takes the place of a conversation's system prompt, so that without one the
        // app's default applies (and an empty one means none), as in a new conversation.
        let system_prompt = match turns.split_first() {
            Some((first, rest)) if first.role == Role::System => {
                turns = rest;
                Some(first.content.as_str())
            }
            _ => None,
        };
        let model = self.inner.loaded()?;
        let messages =
            prompt::chat_messages(system_prompt, turns.iter().map(|turn| (turn.role, turn.content.as_str())));
        let built = prompt::build_prompt(model.model(), &messages)?;
        self.run_raw(&model, built, &request.sampling, request.cache_profile.as_deref(), request.stream, sink).await
    }

    /// Generates from `prompt` in the raw completions' session, storing nothing.
    async fn run_raw(
        &self,
        model: &Arc<LoadedModel>,
        prompt: prompt::Prompt,
        sampling: &api::Sampling,
        cache_profile: Option<&str>,
        stream: StreamOptions,
        sink: Sink,
    ) -> Result<CompleteResult> {
        let claim = self.inner.claim(RAW_COMPLETION_KEY)?;
        let config = prompt::cache_config(cache_profile, model.info.context_length)?;
        let (sampling, max_tokens) = prompt::sampling_params(sampling)?;
        let (events, receiver) = mpsc::channel();
        let mut generate = GenerateRequest::new(RAW_SESSION, prompt.tokens, sampling, max_tokens, events);
        generate.cache = Some(config.clone());
        generate.protected_tokens = prompt.protected_tokens;
        generate.cancel = claim.cancel.clone();
        lock(&self.inner.sessions).touch(RAW_SESSION);
        model.engine.submit(generate)?;
        let mut streamer = Streamer { sink: &sink, kv: KvThrottle::new(stream.kv_every_step), reply: None };
        Ok(match streamer.run(bridge(receiver)).await {
            Ending::Finished(summary) => {
                CompleteResult { text: summary.text.clone(), error: None, report: generation_report(&summary, &config) }
            }
            Ending::Failed { message, partial_text } => {
                lock(&self.inner.sessions).forget(RAW_SESSION);
                CompleteResult { text: partial_text, error: Some(message), report: failed_report(&config) }
            }
        })
    }
}

fn check_text(text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(CoreError::InvalidInput("the message is empty".into()));
    }
    Ok(())
}

/// The engine's std channel, drained on tokio's blocking pool into an async one. The drain ends when the worker
/// drops the request (after its last event) or when the async side stops listening.
fn bridge(receiver: mpsc::Receiver<Event>) -> UnboundedReceiver<Event> {
    let (sender, events) = tokio::sync::mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || {
        for event in receiver {
            if sender.send(event).is_err() {
                break;
            }
        }
    });
    events
}

enum Ending {
    Finished(Box<GenerationSummary>),
    Failed { message: String, partial_text: String },
}

/// Forwards one generation's events to the sink, and for a chat reply keeps its row up to date.
struct Streamer<'a> {
    sink: &'a Sink,
    kv: KvThrottle,
    reply: Option<ReplyRow<'a>>,
}

impl Streamer<'_> {
    async fn run(&mut self, mut events: UnboundedReceiver<Event>) -> Ending {
        let mut text = String::new();
        let ending = loop {
            let Some(event) = events.recv().await else {
                let message = "the engine stopped without finishing the reply".to_string();
                break Ending::Failed { message, partial_text: text };
            };
            match event {
                Event::Token { text: piece } => {
                    text.push_str(&piece);
                    // The sink first: what is stored is never ahead of what the user was shown.
                    (self.sink)(ChatEvent::Token { text: piece });
                    if let Some(row) = &mut self.reply {
                        row.flush_if_due(&text).await;
                    }
                }
                Event::Prefill { done, total } => (self.sink)(ChatEvent::Prefill { done, total }),
                Event::Stats(stats) => {
                    let stats = api::KvStats::from(&stats);
                    if let Some(row) = &mut self.reply {
                        if let Some(marker) = row.observe(&stats).await {
                            (self.sink)(ChatEvent::Compression { marker });
                        }
                    }
                    if let Some(stats) = self.kv.offer(stats) {
                        (self.sink)(ChatEvent::Kv { stats });
                    }
                }
                Event::Done(summary) => break Ending::Finished(Box::new(summary)),
                Event::Error { message, partial_text } => break Ending::Failed { message, partial_text },
            }
        };
        if let Some(stats) = self.kv.take_pending() {
            (self.sink)(ChatEvent::Kv { stats });
        }
        ending
    }
}

/// The row of the reply being streamed.
struct ReplyRow<'a> {
    store: &'a Store,
    message_id: i64,
    last_flush: Instant,
    previous_stats: Option<api::KvStats>,
    markers: Vec<CompressionMarker>,
}

impl ReplyRow<'_> {
    async fn flush_if_due(&mut self, text: &str) {
        if self.last_flush.elapsed() < FLUSH_INTERVAL {
            return;
        }
        self.last_flush = Instant::now();
        // A failed flush loses at most one interval of text if the app then crashes; the final write still
        // comes, so the reply goes on.
        if let Err(error) = self.store.update_streaming_text(self.message_id, text).await {
            tracing::warn!(message_id = self.message_id, %error, "cannot flush the streaming reply");
        }
    }

    /// Stores a compression marker when the compaction counter rose since the previous readout. Several
    /// compactions between two readouts (a long prompt fed in chunks) make one marker with their totals.
    async fn observe(&mut self, stats: &api::KvStats) -> Option<CompressionMarker> {
        let previous = self.previous_stats.replace(stats.clone())?;
        if stats.compactions <= previous.compactions {
            return None;
        }
        let new = compression_marker(self.message_id, &previous, stats);
        match self.store.add_compression_marker(&new).await {
            Ok(marker) => {
                self.markers.push(marker.clone());
                Some(marker)
            }
            Err(error) => {
                tracing::warn!(message_id = self.message_id, %error, "cannot store a compression marker");
                None
            }
        }
    }
}

/// The marker for the compactions between two readouts: `slots_before` is what the cache would hold without them
/// (the earlier readout's slots plus the tokens appended since), `slots_after` what it holds now.
fn compression_marker(message_id: i64, previous: &api::KvStats, now: &api::KvStats) -> NewCompressionMarker {
    let appended = now.tokens_seen.saturating_sub(previous.tokens_seen);
    let slots_before = previous.slots_held + appended;
    let bytes_per_slot = now.bytes_held.checked_div(now.slots_held).unwrap_or(0);
    let as_i64 = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
    NewCompressionMarker {
        message_id,
        tokens_seen_at: as_i64(now.tokens_seen),
        slots_before: as_i64(slots_before),
        slots_after: as_i64(now.slots_held),
        dropped_separators: as_i64(now.dropped_separators.saturating_sub(previous.dropped_separators)),
        dropped_other: as_i64(now.dropped_other.saturating_sub(previous.dropped_other)),
        bytes_freed: as_i64(slots_before.saturating_sub(now.slots_held) * bytes_per_slot),
    }
}

/// At most one readout per [`KV_EVENT_INTERVAL`] (or every one, on request); the newest held back is sent at the
/// end, so the last readout a face sees is the final state.
struct KvThrottle {
    every_step: bool,
    last_sent: Option<Instant>,
    pending: Option<api::KvStats>,
}

impl KvThrottle {
    fn new(every_step: bool) -> Self {
        KvThrottle { every_step, last_sent: None, pending: None }
    }

    fn offer(&mut self, stats: api::KvStats) -> Option<api::KvStats> {
        let due = self.every_step || self.last_sent.is_none_or(|sent| sent.elapsed() >= KV_EVENT_INTERVAL);
        if due {
            self.last_sent = Some(Instant::now());
            self.pending = None;
            Some(stats)
        } else {
            self.pending = Some(stats);
            None
        }
    }

    fn take_pending(&mut self) -> Option<api::KvStats> {
        self.pending.take()
    }
}

/// The stored report of a finished reply. Besides the fixed fields, `kv` holds the whole cache readout after the
/// reply and `cache_spec` the setting it ran with, so a face opening the conversation later can show the KV panel
/// as it was (the fixed fields alone have no tokens seen, blocks or compressions).
fn message_stats(summary: &GenerationSummary, config: &CacheConfig) -> MessageStats {
    let mut extra = serde_json::Map::new();
    if let Ok(kv) = serde_json::to_value(api::KvStats::from(&summary.kv)) {
        extra.insert("kv".to_string(), kv);
    }
    extra.insert("cache_spec".to_string(), serde_json::Value::String(config.to_string()));
    MessageStats {
        time_to_first_token_ms: Some(milliseconds(summary.time_to_first_token)),
        prefill_tokens_per_s: Some(summary.prefill_tokens_per_second()),
        decode_tokens_per_s: Some(summary.decode_tokens_per_second()),
        tokens_in: Some(summary.prompt_tokens as u64),
        tokens_out: Some(summary.generated_tokens as u64),
        stop_reason: Some(summary.stop_reason.as_str().to_string()),
        kv_slots: Some(summary.kv.slots_held as u64),
        kv_bytes: Some(summary.kv.bytes_held as u64),
        extra,
    }
}

fn generation_report(summary: &GenerationSummary, config: &CacheConfig) -> GenerationReport {
    GenerationReport {
        stop_reason: summary.stop_reason.as_str().to_string(),
        prompt_tokens: summary.prompt_tokens,
        reused_tokens: summary.reused_tokens,
        generated_tokens: summary.generated_tokens,
        prefill_ms: milliseconds(summary.prefill_time),
        time_to_first_token_ms: milliseconds(summary.time_to_first_token),
        decode_ms: milliseconds(summary.decode_time),
        prefill_tokens_per_s: summary.prefill_tokens_per_second(),
        decode_tokens_per_s: summary.decode_tokens_per_second(),
        kv: Some(api::KvStats::from(&summary.kv)),
        cache_spec: config.to_string(),
        cache_evicts: config.policy.evicts(),
    }
}

fn failed_report(config: &CacheConfig) -> GenerationReport {
    GenerationReport {
        stop_reason: "error".to_string(),
        cache_spec: config.to_string(),
        cache_evicts: config.policy.evicts(),
        ..GenerationReport::default()
    }
}

/// The prediction made before the reply, checked against what the worker reused: a cache it did not hold after
/// all (evicted meanwhile, or a restored one that did not match the prompt) was rebuilt.
fn corrected_source(prepared: Prepared, reused_tokens: usize, has_history: bool) -> (CacheSource, Option<String>) {
    match prepared.source {
        CacheSource::Warm | CacheSource::RestoredFromSnapshot if has_history && reused_tokens == 0 => (
            CacheSource::Replayed,
            Some("the engine's cache did not hold this branch after all: it was rebuilt".to_string()),
        ),
        CacheSource::Replayed if reused_tokens > 0 => (CacheSource::Warm, prepared.detail),
        source => (source, prepared.detail),
    }
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(tokens_seen: usize, slots_held: usize, compactions: usize, dropped: (usize, usize)) -> api::KvStats {
        api::KvStats {
            tokens_seen,
            slots_held,
            bytes_held: slots_held * 10,
            compactions,
            dropped_separators: dropped.0,
            dropped_other: dropped.1,
            ..api::KvStats::default()
        }
    }

    #[test]
    fn a_marker_counts_what_the_compactions_between_two_readouts_dropped() {
        let marker = compression_marker(9, &stats(100, 40, 1, (2, 30)), &stats(101, 25, 2, (3, 45)));
        assert_eq!(marker.message_id, 9);
        assert_eq!(marker.tokens_seen_at, 101);
        assert_eq!((marker.slots_before, marker.slots_after), (41, 25));
        assert_eq!((marker.dropped_separators, marker.dropped_other), (1, 15));
        assert_eq!(marker.bytes_freed, 160);
    }

    #[test]
    fn the_throttle_holds_back_readouts_and_releases_the_last() {
        let mut throttle = KvThrottle::new(false);
        assert!(throttle.offer(stats(1, 1, 0, (0, 0))).is_some(), "the first readout goes at once");
        assert!(throttle.offer(stats(2, 2, 0, (0, 0))).is_none());
        assert!(throttle.offer(stats(3, 3, 0, (0, 0))).is_none());
        assert_eq!(throttle.take_pending().map(|stats| stats.tokens_seen), Some(3));
        assert!(throttle.take_pending().is_none());
        let mut every = KvThrottle::new(true);
        assert!((0..5).all(|n| every.offer(stats(n, n, 0, (0, 0))).is_some()));
    }

    #[test]
    fn a_prediction_is_corrected_by_what_was_reused() {
        let prepared = |source| Prepared { source, detail: None, baseline: None };
        assert_eq!(corrected_source(prepared(CacheSource::Warm), 0, true).0, CacheSource::Replayed);
        assert_eq!(corrected_source(prepared(CacheSource::Warm), 10, true).0, CacheSource::Warm);
        assert_eq!(corrected_source(prepared(CacheSource::RestoredFromSnapshot), 0, true).0, CacheSource::Replayed);
        assert_eq!(corrected_source(prepared(CacheSource::Fresh), 0, false).0, CacheSource::Fresh);
        assert_eq!(corrected_source(prepared(CacheSource::Replayed), 5, true).0, CacheSource::Warm);
    }
}
