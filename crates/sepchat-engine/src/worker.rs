//! The engine worker: one thread owns the conversations' KV caches and runs every generation.
//!
//! Requests arrive over a channel and carry their own event sender, so any number of callers
//! (CLI, server, desktop) can share one model without locks around the hot loop. Each request
//! names a session; the worker keeps that session's cache between requests and feeds only the
//! tokens the cache does not already hold (a new chat turn prefills only its own tokens).
//! A cancel flag is checked between steps, and a panic inside a generation is caught, reported
//! with the partial text, and the session's cache is discarded (it may be half-written).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sepchat_text::StreamingDetokenizer;

use crate::cache_policy::CacheConfig;
use crate::error::{EngineError, Result};
use crate::kv_cache::{KvCache, KvStats, SnapshotInfo};
use crate::model::{LlamaModel, DEFAULT_PREFILL_CHUNK};
use crate::sampling::{Sampler, SamplingParams};

/// Identifies a conversation whose cache the worker keeps between requests.
pub type SessionId = u64;

/// How many conversations keep a warm cache; the least recently used is dropped beyond it.
const MAX_WARM_SESSIONS: usize = 4;

/// One generation: a prompt already rendered and tokenized by the caller.
pub struct GenerateRequest {
    pub session: SessionId,
    /// The whole conversation so far, as tokens; the worker skips the prefix its cache holds.
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// `None` keeps the session's cache settings (the default SepCache profile for a new
    /// session); different settings start the session's cache afresh.
    pub cache: Option<CacheConfig>,
    /// Leading prompt tokens the cache must never evict (a chat's system turn).
    pub protected_tokens: usize,
    pub cancel: Arc<AtomicBool>,
    pub events: Sender<Event>,
    #[cfg(test)]
    pub(crate) panic_after_tokens: Option<usize>,
}

impl GenerateRequest {
    pub fn new(
        session: SessionId,
        prompt_tokens: Vec<u32>,
        sampling: SamplingParams,
        max_tokens: usize,
        events: Sender<Event>,
    ) -> Self {
        Self {
            session,
            prompt_tokens,
            sampling,
            max_tokens,
            cache: None,
            protected_tokens: 0,
            cancel: Arc::new(AtomicBool::new(false)),
            events,
            #[cfg(test)]
            panic_after_tokens: None,
        }
    }
}

/// What a generation reports, in order: Stats after the prompt, then Token (and Stats) per
/// step, then exactly one Done or Error.
#[derive(Debug, Clone)]
pub enum Event {
    /// New text; never splits a UTF-8 character.
    Token {
        text: String,
    },
    Stats(KvStats),
    /// Prompt tokens fed so far of those this request must feed (sent after each prefill chunk,
    /// so replaying a long conversation can show progress).
    Prefill {
        done: usize,
        total: usize,
    },
    Done(GenerationSummary),
    Error {
        message: String,
        partial_text: String,
    },
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-turn token.
    EndOfTurn,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The cancel flag was raised.
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndOfTurn => "end_of_turn",
            Self::MaxTokens => "max_tokens",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Statistics of one finished generation.
#[derive(Debug, Clone)]
pub struct GenerationSummary {
    pub text: String,
    pub stop_reason: StopReason,
    /// Tokens of the prompt, and how many of them were already in the cache.
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_time: Duration,
    pub time_to_first_token: Duration,
    pub decode_time: Duration,
    pub kv: KvStats,
}

impl GenerationSummary {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        per_second(self.prompt_tokens - self.reused_tokens, self.prefill_time)
    }

    /// Decode speed over the tokens after the first (the first one's cost is the prefill's).
    pub fn decode_tokens_per_second(&self) -> f64 {
        per_second(self.generated_tokens.saturating_sub(1), self.decode_time)
    }
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

enum Command {
    Generate(Box<GenerateRequest>),
    ForgetSession(SessionId),
    Snapshot { session: SessionId, path: PathBuf, model_fingerprint: String, reply: Sender<Result<SnapshotInfo>> },
    Restore(Box<RestoreRequest>),
}

struct RestoreRequest {
    session: SessionId,
    path: PathBuf,
    model_fingerprint: String,
    cache: CacheConfig,
    reply: Sender<Result<SnapshotInfo>>,
}

/// Handle to the worker thread. Dropping it stops the worker after the current request.
pub struct Engine {
    model: Arc<LlamaModel>,
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the worker thread that owns `model`'s caches.
    pub fn start(model: LlamaModel) -> Result<Self> {
        let model = Arc::new(model);
        let (commands, receiver) = mpsc::channel();
        let worker_model = model.clone();
        let thread = std::thread::Builder::new()
            .name("sepchat-engine".to_string())
            .spawn(move || Worker { model: worker_model, sessions: HashMap::new(), clock: 0 }.run(receiver))
            .map_err(|error| EngineError::WorkerPanicked(format!("cannot start the worker thread: {error}")))?;
        Ok(Self { model, commands: Some(commands), thread: Some(thread) })
    }

    /// The model, for tokenizing and rendering templates on the caller's side.
    pub fn model(&self) -> &Arc<LlamaModel> {
        &self.model
    }

    /// Queues a generation; its events arrive on the request's own sender.
    pub fn submit(&self, request: GenerateRequest) -> Result<()> {
        self.send(Command::Generate(Box::new(request)))
    }

    /// Writes `session`'s cache to `path` (atomically: a temporary file renamed into place), so the
    /// conversation can later be restored without replaying it. `model_fingerprint` (e.g. the model
    /// file's sha256) is stored and checked on restore. Waits for the worker to finish any queued
    /// request first, so the snapshot is taken at a turn boundary.
    pub fn snapshot_session(&self, session: SessionId, path: &Path, model_fingerprint: &str) -> Result<SnapshotInfo> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::Snapshot {
            session,
            path: path.to_path_buf(),
            model_fingerprint: model_fingerprint.to_string(),
            reply,
        })?;
        answer.recv().map_err(|_| EngineError::WorkerGone)?
    }

    /// Replaces `session`'s cache with the snapshot at `path`. Refused (the session is then left
    /// empty, and the caller replays the conversation) when the snapshot was written by another
    /// engine version, for another model, or with other cache settings than `cache`.
    pub fn restore_session(
        &self,
        session: SessionId,
        path: &Path,
        model_fingerprint: &str,
        cache: CacheConfig,
    ) -> Result<SnapshotInfo> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::Restore(Box::new(RestoreRequest {
            session,
            path: path.to_path_buf(),
            model_fingerprint: model_fingerprint.to_string(),
            cache,
            reply,
        })))?;
        answer.recv().map_err(|_| EngineError::WorkerGone)?
    }

    /// Drops a session's cache (the conversation was closed or deleted).
    pub fn forget_session(&self, session: SessionId) -> Result<()> {
        self.send(Command::ForgetSession(session))
    }

    fn send(&self, command: Command) -> Result<()> {
        let sender = self.commands.as_ref().ok_or(EngineError::WorkerGone)?;
        sender.send(command).map_err(|_| EngineError::WorkerGone)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop.
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Session {
    cache: KvCache,
    /// Every token fed to the cache, in order: what a new prompt must extend to reuse it
    /// (after a compaction the cache's slots are no longer the stream itself).
    fed: Vec<u32>,
    last_used: u64,
}

struct Worker {
    model: Arc<LlamaModel>,
    sessions: HashMap<SessionId, Session>,
    clock: u64,
}

impl Worker {
    fn run(mut self, commands: Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            match command {
                Command::Generate(request) => self.serve(*request),
                Command::ForgetSession(session) => {
                    self.sessions.remove(&session);
                }
                Command::Snapshot { session, path, model_fingerprint, reply } => {
                    let _ = reply.send(self.snapshot(session, &path, &model_fingerprint));
                }
                Command::Restore(request) => {
                    let RestoreRequest { session, path, model_fingerprint, cache, reply } = *request;
                    let _ = reply.send(self.restore(session, &path, &model_fingerprint, cache));
                }
            }
        }
    }

    fn serve(&mut self, request: GenerateRequest) {
        let events = request.events.clone();
        let session_id = request.session;
        let mut partial_text = String::new();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.generate(&request, &mut partial_text)));
        let event = match outcome {
            Ok(Ok(summary)) => Event::Done(summary),
            Ok(Err(error)) => {
                // The cache may hold part of a chunk the session did not record: rebuild it next time.
                self.sessions.remove(&session_id);
                Event::Error { message: error.to_string(), partial_text }
            }
            Err(panic) => {
                // The cache may be half-written: start that conversation afresh next time.
                self.sessions.remove(&session_id);
                let message = EngineError::WorkerPanicked(panic_message(panic.as_ref())).to_string();
                tracing::error!(%message, "generation panicked");
                Event::Error { message, partial_text }
            }
        };
        // A caller that went away no longer needs the result.
        let _ = events.send(event);
    }

    fn snapshot(&mut self, id: SessionId, path: &Path, model_fingerprint: &str) -> Result<SnapshotInfo> {
        let session = self.sessions.get(&id).ok_or(EngineError::NoSuchSession(id))?;
        let directory = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(directory)?;
        let file = tempfile::NamedTempFile::new_in(directory)?;
        let mut writer = std::io::BufWriter::new(file);
        let info = session.cache.write_snapshot(&mut writer, &session.fed, model_fingerprint)?;
        let file = writer.into_inner().map_err(|error| EngineError::SnapshotIo(error.into_error()))?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|error| EngineError::SnapshotIo(error.error))?;
        Ok(info)
    }

    fn restore(
        &mut self,
        id: SessionId,
        path: &Path,
        model_fingerprint: &str,
        cache: CacheConfig,
    ) -> Result<SnapshotInfo> {
        cache.validate(self.model.config().context_length)?;
        self.sessions.remove(&id);
        let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut restored = self.model.new_cache(cache.clone());
        let fed = restored.read_snapshot(&mut reader, model_fingerprint)?;
        let info = SnapshotInfo {
            slots: restored.len(),
            tokens_seen: restored.tokens_seen(),
            bytes: restored.stats().bytes_held,
        };
        let session = self.session(id, Some(&cache));
        session.cache = restored;
        session.fed = fed;
        Ok(info)
    }

    fn session(&mut self, id: SessionId, config: Option<&CacheConfig>) -> &mut Session {
        self.clock += 1;
        // A session asked to switch cache settings starts afresh: its slots follow the old rule.
        let stale = match (self.sessions.get(&id), config) {
            (Some(session), Some(config)) => session.cache.config() != config,
            _ => false,
        };
        if stale {
            self.sessions.remove(&id);
        }
        if !self.sessions.contains_key(&id) && self.sessions.len() >= MAX_WARM_SESSIONS {
            let least_recent = self.sessions.iter().min_by_key(|(_, session)| session.last_used).map(|(id, _)| *id);
            if let Some(least_recent) = least_recent {
                self.sessions.remove(&least_recent);
            }
        }
        let model = &self.model;
        let session = self.sessions.entry(id).or_insert_with(|| Session {
            cache: model.new_cache(config.cloned().unwrap_or_default()),
            fed: Vec::new(),
            last_used: 0,
        });
        session.last_used = self.clock;
        session
    }

    fn generate(&mut self, request: &GenerateRequest, partial_text: &mut String) -> Result<GenerationSummary> {
        if request.prompt_tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let model = self.model.clone();
        let tokenizer = model.tokenizer();
        let mut sampler = Sampler::new(request.sampling.clone())?;
        if let Some(config) = &request.cache {
            config.validate(model.config().context_length)?;
        }
        let session = self.session(request.session, request.cache.as_ref());

        // Reuse the longest prefix already fed; at least one token must be fed to get logits.
        let mut reused = session.fed.iter().zip(&request.prompt_tokens).take_while(|(a, b)| a == b).count();
        reused = reused.min(request.prompt_tokens.len() - 1);
        if reused < session.fed.len() {
            if session.cache.truncate(reused) {
                session.fed.truncate(reused);
            } else {
                // The cache compacted since: its slots cannot be rolled back, so rebuild it.
                session.cache.clear();
                session.fed.clear();
                reused = 0;
            }
        }
        if session.fed.is_empty() {
            session.cache.protect_initial(request.protected_tokens)?;
        }
        let cache = &mut session.cache;
        let fed = &mut session.fed;
        let started = Instant::now();
        let mut logits = None;
        let to_feed = request.prompt_tokens.len() - reused;
        for chunk in request.prompt_tokens[reused..].chunks(DEFAULT_PREFILL_CHUNK) {
            if request.cancel.load(Ordering::Relaxed) {
                break;
            }
            logits = Some(model.prefill(chunk, cache, DEFAULT_PREFILL_CHUNK)?);
            fed.extend_from_slice(chunk);
            let done = fed.len().saturating_sub(reused).min(to_feed);
            let _ = request.events.send(Event::Prefill { done, total: to_feed });
        }
        let prefill_time = started.elapsed();
        let _ = request.events.send(Event::Stats(cache.stats()));

        let mut history = request.prompt_tokens.clone();
        let mut detokenizer = StreamingDetokenizer::new(true);
        let mut generated = 0usize;
        let mut time_to_first_token = prefill_time;
        let decode_started = Instant::now();
        let stop_reason = loop {
            let Some(current_logits) = logits.take() else { break StopReason::Cancelled };
            if request.cancel.load(Ordering::Relaxed) {
                break StopReason::Cancelled;
            }
            if generated >= request.max_tokens {
                break StopReason::MaxTokens;
            }
            let next = sampler.sample(&current_logits, &history)?;
            if generated == 0 {
                time_to_first_token = started.elapsed();
            }
            if tokenizer.stop_token_ids().contains(&next) {
                break StopReason::EndOfTurn;
            }
            generated += 1;
            history.push(next);
            if let Some(text) = detokenizer.push(tokenizer, next)? {
                partial_text.push_str(&text);
                let _ = request.events.send(Event::Token { text });
            }
            #[cfg(test)]
            if request.panic_after_tokens == Some(generated) {
                panic!("injected panic after {generated} tokens");
            }
            if generated >= request.max_tokens {
                break StopReason::MaxTokens;
            }
            logits = Some(model.prefill(&[next], cache, 1)?);
            fed.push(next);
            let _ = request.events.send(Event::Stats(cache.stats()));
        };
        if let Some(tail) = detokenizer.finish(tokenizer)? {
            partial_text.push_str(&tail);
            let _ = request.events.send(Event::Token { text: tail });
        }
        Ok(GenerationSummary {
            text: partial_text.clone(),
            stop_reason,
            prompt_tokens: request.prompt_tokens.len(),
            reused_tokens: reused,
            generated_tokens: generated,
            prefill_time,
            time_to_first_token,
            decode_time: decode_started.elapsed(),
            kv: cache.stats(),
        })
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn engine() -> Engine {
        let path = sepchat_gguf::default_model::default_model_path().expect("a home directory");
        assert!(path.exists(), "the default model is missing at {}: run `make fetch-model`", path.display());
        Engine::start(LlamaModel::load(&path, &Device::Cpu).expect("model loads")).expect("worker starts")
    }

    #[test]
    fn a_panic_in_generation_is_reported_with_the_partial_text_and_the_worker_survives() {
        let engine = engine();
        let prompt = engine.model().tokenizer().encode("Once upon a time").expect("encode");
        let (sender, receiver) = mpsc::channel();
        let mut request = GenerateRequest::new(3, prompt.clone(), SamplingParams::greedy(), 50, sender);
        request.panic_after_tokens = Some(3);
        engine.submit(request).expect("submit");
        let mut streamed = String::new();
        let (message, partial_text) = loop {
            match receiver.recv().expect("an event") {
                Event::Token { text } => streamed.push_str(&text),
                Event::Error { message, partial_text } => break (message, partial_text),
                Event::Done(_) => panic!("the injected panic did not fire"),
                Event::Stats(_) | Event::Prefill { .. } => {}
            }
        };
        assert!(message.contains("panicked") && message.contains("injected panic"), "{message}");
        assert_eq!(partial_text, streamed);
        assert!(!partial_text.is_empty());

        let (sender, receiver) = mpsc::channel();
        engine.submit(GenerateRequest::new(3, prompt, SamplingParams::greedy(), 3, sender)).expect("submit");
        let done = receiver.iter().find_map(|event| match event {
            Event::Done(summary) => Some(summary),
            _ => None,
        });
        let summary = done.expect("the worker still answers");
        // The panicked session's cache was discarded, so nothing is reused.
        assert_eq!(summary.reused_tokens, 0);
    }
}
