//! `sepchat ask` and `sepchat chat`: conversations through the App, stored in the history (`--conversation ID`
//! continues one), streamed to stdout, with the KV cache readout after each reply and, on request, the cache
//! statistics as JSON lines. `--raw` sends the text without the chat template and stores nothing.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::ArgMatches;
use indicatif::{ProgressBar, ProgressStyle};
use sepchat_core::api::{
    CacheSource, ChatEvent, CompleteRequest, GenerationReport, KvStats, LoadModelRequest, MessageStatus, ModelInfo,
    NewConversationRequest, Sampling, SendMessageRequest, SendResult, StreamOptions,
};
use sepchat_core::App;
use sepchat_engine::{CacheConfig, DeviceChoice};
use serde::Serialize;

use crate::options::{with_usage_exit, GenerationArgs, ModelArgs};

/// The generation flags a conversation stores: given on the command line, they become the conversation's own
/// settings (a new conversation starts with them, a continued one is changed by them); left out, a new
/// conversation takes the app's defaults (the same values) and a continued one keeps its own.
const STORED_FLAGS: [&str; 10] =
    ["temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens", "greedy", "system", "cache"];

/// Which of [`STORED_FLAGS`] the user typed (clap's defaults do not count).
#[derive(Debug, Default)]
pub struct ExplicitFlags(HashSet<&'static str>);

impl ExplicitFlags {
    /// The flags given to the `ask` or `chat` subcommand in `matches`.
    pub fn from_matches(matches: &ArgMatches) -> Self {
        let mut given = HashSet::new();
        if let Some((name, sub)) = matches.subcommand() {
            if name == "ask" || name == "chat" {
                for flag in STORED_FLAGS {
                    if matches!(sub.value_source(flag), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                        given.insert(flag);
                    }
                }
            }
        }
        ExplicitFlags(given)
    }

    fn has(&self, flag: &str) -> bool {
        self.0.contains(flag)
    }
}

pub fn ask(
    model_args: &ModelArgs,
    args: &GenerationArgs,
    explicit: &ExplicitFlags,
    conversation: Option<i64>,
    prompt: &str,
) -> anyhow::Result<ExitCode> {
    with_usage_exit(run_ask(model_args, args, explicit, conversation, prompt))
}

fn run_ask(
    model_args: &ModelArgs,
    args: &GenerationArgs,
    explicit: &ExplicitFlags,
    conversation: Option<i64>,
    prompt: &str,
) -> anyhow::Result<ExitCode> {
    if prompt.trim().is_empty() {
        anyhow::bail!("the prompt is empty: nothing to ask");
    }
    if args.raw && conversation.is_some() {
        anyhow::bail!("--raw text is sent without the chat template and is not stored; drop --conversation");
    }
    let runtime = runtime()?;
    let mut session = runtime.block_on(ChatSession::start(model_args, args, explicit, conversation))?;
    let mut stdout = std::io::stdout();
    if args.raw {
        let ok = runtime.block_on(session.complete(args, prompt))?;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let result = runtime.block_on(session.send(args, explicit, prompt))?;
    end_reply(&mut stdout, !result.message.content.is_empty())?;
    Ok(if report_reply(&result) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn chat(
    model_args: &ModelArgs,
    args: &GenerationArgs,
    explicit: &ExplicitFlags,
    conversation: Option<i64>,
) -> anyhow::Result<ExitCode> {
    with_usage_exit(run_chat(model_args, args, explicit, conversation))
}

fn run_chat(
    model_args: &ModelArgs,
    args: &GenerationArgs,
    explicit: &ExplicitFlags,
    conversation: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let mut session = runtime.block_on(ChatSession::start(model_args, args, explicit, conversation))?;
    if let Some(id) = session.conversation {
        let view = runtime.block_on(session.app.get_conversation(id))?;
        eprintln!(
            "continuing conversation {id} \"{}\" ({} messages on the active branch)",
            view.conversation.title,
            view.branch.len()
        );
    }
    eprintln!("sepchat chat: type a message and press Enter; /new starts a new conversation, /exit (or Ctrl-D) quits.");
    eprintln!("KV cache: {}", session.cache);
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        match input.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/new" | "/reset" => {
                session.conversation = None;
                eprintln!("(new conversation; the previous one stays in the history)");
                continue;
            }
            _ => {}
        }
        if args.raw {
            runtime.block_on(session.complete(args, input))?;
            continue;
        }
        match runtime.block_on(session.send(args, explicit, input)) {
            Ok(result) => {
                end_reply(&mut stdout, !result.message.content.is_empty())?;
                report_reply(&result);
            }
            // Nothing typed is lost: a failure before the reply started stored nothing, or the user message.
            Err(error) => eprintln!("error: {}", error.to_string().replace(['\n', '\r'], " ")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A tokio runtime for the App's async methods; the engine has its own thread, so two workers are plenty.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Ends the streamed answer with a newline, if anything was streamed at all.
fn end_reply(out: &mut impl Write, streamed_anything: bool) -> std::io::Result<()> {
    if streamed_anything {
        writeln!(out)?;
    }
    out.flush()
}

/// The readout and where the reply was stored, on stderr; `false` when the reply failed.
fn report_reply(result: &SendResult) -> bool {
    let message = &result.message;
    if message.status == MessageStatus::Error {
        let error = message.error.as_deref().unwrap_or("generation failed");
        eprintln!("error: {}", error.replace(['\n', '\r'], " "));
        return false;
    }
    if let Some(line) = readout(&result.report, Some((result.cache_source, result.cache_detail.as_deref()))) {
        eprintln!("{line}");
    }
    eprintln!("[saved] conversation {}, reply {} ({})", result.conversation_id, message.id, message.status.as_str());
    true
}

/// The App with the model loaded, the conversation being continued (if any) and where the statistics go.
struct ChatSession {
    app: App,
    conversation: Option<i64>,
    cache: CacheConfig,
    printer: Arc<Mutex<Printer>>,
}

impl ChatSession {
    /// Checks the flags, opens the statistics file and the history, loads the model, and applies flags given for a
    /// continued conversation. The cache spec's syntax is checked before the (slow) load so a typo fails at once;
    /// its sizes need the model.
    async fn start(
        model_args: &ModelArgs,
        args: &GenerationArgs,
        explicit: &ExplicitFlags,
        conversation: Option<i64>,
    ) -> anyhow::Result<Self> {
        args.check_cache_syntax()?;
        let stats = args.stats_json.as_deref().map(StatsSink::open).transpose()?;
        let app = App::open_default().await?;
        let info = load_model(&app, model_args).await?;
        let mut cache = args.cache_config(info.context_length)?;
        if let Some(id) = conversation {
            apply_flags(&app, id, args, explicit).await?;
            // A continued conversation keeps its own cache profile unless --cache changed it just now.
            let profile = app.get_conversation(id).await?.conversation.cache_profile;
            cache = sepchat_core::prompt::cache_config(profile.as_deref(), info.context_length)?;
        }
        let printer = Arc::new(Mutex::new(Printer { stats, turn: 0, progress: None, error: None }));
        Ok(Self { app, conversation, cache, printer })
    }

    /// One user message in the current conversation (a new one, with the flags' settings, if there is none).
    async fn send(
        &mut self,
        args: &GenerationArgs,
        explicit: &ExplicitFlags,
        text: &str,
    ) -> anyhow::Result<SendResult> {
        let conversation_id = match self.conversation {
            Some(id) => id,
            None => {
                let request = NewConversationRequest {
                    title: None,
                    system_prompt: explicit.has("system").then(|| args.system.clone()),
                    sampling: Some(stored_sampling(args, explicit)),
                    cache_profile: explicit.has("cache").then(|| args.cache.clone()),
                };
                let id = self.app.create_conversation(request).await?.id;
                self.conversation = Some(id);
                id
            }
        };
        self.next_turn();
        let request = SendMessageRequest { conversation_id, text: text.to_string(), stream: self.stream_options() };
        let result = self.app.send_message(request, self.sink()).await?;
        self.check_printer()?;
        let mut printer = lock(&self.printer);
        let turn = printer.turn;
        if let Some(sink) = printer.stats.as_mut() {
            match (&result.message.status, &result.message.error) {
                (MessageStatus::Error, Some(message)) => sink.write(&ErrorLine { event: "error", turn, message })?,
                _ => sink.write(&DoneLine::new(turn, &result))?,
            }
        }
        drop(printer);
        Ok(result)
    }

    /// `--raw`: the text continued as it is, nothing stored. Prints the answer and the readout; `false` on failure.
    async fn complete(&mut self, args: &GenerationArgs, text: &str) -> anyhow::Result<bool> {
        self.next_turn();
        let request = CompleteRequest {
            prompt: text.to_string(),
            sampling: all_sampling(args),
            cache_profile: Some(args.cache.clone()),
            stream: self.stream_options(),
        };
        let result = self.app.complete(request, self.sink()).await?;
        self.check_printer()?;
        let mut stdout = std::io::stdout();
        end_reply(&mut stdout, !result.text.is_empty())?;
        let turn = lock_turn(&self.printer);
        if let Some(message) = &result.error {
            if let Some(sink) = lock(&self.printer).stats.as_mut() {
                sink.write(&ErrorLine { event: "error", turn, message })?;
            }
            eprintln!("error: {}", message.replace(['\n', '\r'], " "));
            return Ok(false);
        }
        if let Some(sink) = lock(&self.printer).stats.as_mut() {
            sink.write(&DoneLine::from_report(turn, &result.report))?;
        }
        if let Some(line) = readout(&result.report, None) {
            eprintln!("{line}");
        }
        Ok(true)
    }

    fn next_turn(&self) {
        lock(&self.printer).turn += 1;
    }

    fn stream_options(&self) -> StreamOptions {
        // A statistics log wants every step; the readout needs only the last.
        StreamOptions { kv_every_step: lock(&self.printer).stats.is_some() }
    }

    fn sink(&self) -> impl Fn(ChatEvent) + Send + Sync + 'static {
        let printer = self.printer.clone();
        move |event| lock(&printer).handle(event)
    }

    /// A statistics line that could not be written fails the command, as before the App.
    fn check_printer(&self) -> anyhow::Result<()> {
        match lock(&self.printer).error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock_turn(printer: &Mutex<Printer>) -> usize {
    lock(printer).turn
}

/// Loads the model with a spinner on stderr (hidden when stderr is not a terminal).
pub(crate) async fn load_model(app: &App, model_args: &ModelArgs) -> anyhow::Result<ModelInfo> {
    let path = model_args.model_path()?;
    let device = match model_args.device {
        DeviceChoice::Auto => "auto",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda => "cuda",
        DeviceChoice::Metal => "metal",
    };
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {}", path.display()));
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(100));
    let request = LoadModelRequest {
        path: Some(path.to_string_lossy().into_owned()),
        device: Some(device.into()),
        attention: Some(model_args.attention.name().into()),
    };
    let loaded = app.load_model(request).await;
    spinner.finish_and_clear();
    Ok(loaded?)
}

/// Flags given for a continued conversation change its stored settings.
async fn apply_flags(app: &App, id: i64, args: &GenerationArgs, explicit: &ExplicitFlags) -> anyhow::Result<()> {
    let conversation = app.get_conversation(id).await?.conversation;
    let overrides = stored_sampling(args, explicit);
    if overrides != Sampling::default() {
        app.set_sampling(id, merge_sampling(conversation.sampling, overrides)).await?;
    }
    if explicit.has("system") {
        app.set_system_prompt(id, Some(args.system.clone())).await?;
    }
    if explicit.has("cache") {
        app.set_cache_profile(id, Some(args.cache.clone())).await?;
    }
    Ok(())
}

/// The sampling flags the user typed, as conversation settings. `--greedy` means temperature 0 with every filter
/// and the repeat penalty off (what `SamplingParams::greedy` does), whatever else is given.
fn stored_sampling(args: &GenerationArgs, explicit: &ExplicitFlags) -> Sampling {
    let mut sampling = Sampling::default();
    if args.greedy && explicit.has("greedy") {
        sampling = Sampling::greedy();
    } else {
        if explicit.has("temperature") {
            sampling.temperature = Some(args.temperature);
        }
        if explicit.has("top_p") {
            sampling.top_p = Some(args.top_p);
        }
        if explicit.has("top_k") {
            sampling.top_k = Some(args.top_k as u64);
        }
        if explicit.has("min_p") {
            sampling.min_p = Some(args.min_p);
        }
        if explicit.has("repeat_penalty") {
            sampling.repeat_penalty = Some(f32_as_typed(args.repeat_penalty));
        }
    }
    if explicit.has("seed") {
        sampling.seed = Some(args.seed);
    }
    if explicit.has("max_tokens") {
        sampling.max_tokens = Some(args.max_tokens as u64);
    }
    sampling
}

/// Every sampling flag, defaults included (a raw completion has no stored settings to fall back on), through
/// the same mapping as before the App (`GenerationArgs::sampling`): off values switch a filter off.
fn all_sampling(args: &GenerationArgs) -> Sampling {
    let params = args.sampling();
    Sampling {
        temperature: Some(params.temperature),
        top_p: Some(params.top_p.unwrap_or(1.0)),
        top_k: Some(params.top_k.map_or(0, |top_k| top_k as u64)),
        min_p: Some(params.min_p.unwrap_or(0.0)),
        repeat_penalty: Some(f32_as_typed(params.repeat_penalty)),
        max_tokens: Some(args.max_tokens as u64),
        seed: Some(params.seed),
        extra: serde_json::Map::new(),
    }
}

/// An `f32` flag as the `f64` with the same shortest decimal form (1.1, not 1.100000023841858), so stored and
/// exported settings read as typed; converting back to `f32` gives the same value.
fn f32_as_typed(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// `overrides`' set fields over `stored`'s.
fn merge_sampling(stored: Sampling, overrides: Sampling) -> Sampling {
    Sampling {
        temperature: overrides.temperature.or(stored.temperature),
        top_p: overrides.top_p.or(stored.top_p),
        top_k: overrides.top_k.or(stored.top_k),
        min_p: overrides.min_p.or(stored.min_p),
        repeat_penalty: overrides.repeat_penalty.or(stored.repeat_penalty),
        max_tokens: overrides.max_tokens.or(stored.max_tokens),
        seed: overrides.seed.or(stored.seed),
        extra: stored.extra,
    }
}

/// Prompts this long (tokens to feed) get a progress bar: a replay of a long conversation takes a while.
const PROGRESS_MIN_TOKENS: usize = 512;

/// What the sink does with a generation's events: tokens to stdout at once, statistics lines to their file, a
/// progress bar for a long prefill.
struct Printer {
    stats: Option<StatsSink>,
    /// Replies requested so far; numbers the JSON lines of each.
    turn: usize,
    progress: Option<ProgressBar>,
    /// The first statistics line that could not be written.
    error: Option<anyhow::Error>,
}

impl Printer {
    fn handle(&mut self, event: ChatEvent) {
        match event {
            ChatEvent::Token { text } => {
                if let Some(progress) = self.progress.take() {
                    progress.finish_and_clear();
                }
                let mut out = std::io::stdout().lock();
                // A closed stdout (a pager quit early) must not stop the reply from being stored.
                let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            }
            ChatEvent::Kv { stats } => {
                if let Some(sink) = &mut self.stats {
                    if let Err(error) = sink.write(&KvLine { event: "kv", turn: self.turn, stats: &stats }) {
                        self.error.get_or_insert(error);
                    }
                }
            }
            ChatEvent::Prefill { done, total } => {
                if total >= PROGRESS_MIN_TOKENS && done < total {
                    let progress = self.progress.get_or_insert_with(|| prefill_progress(total));
                    progress.set_position(done as u64);
                } else if let Some(progress) = self.progress.take() {
                    progress.finish_and_clear();
                }
            }
            ChatEvent::Started { .. }
            | ChatEvent::Session { .. }
            | ChatEvent::Compression { .. }
            | ChatEvent::Finished { .. } => {}
        }
    }
}

fn prefill_progress(total: usize) -> ProgressBar {
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template("reading the conversation {bar:30} {pos}/{len} tokens")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress
}

/// Where `--stats-json` lines go: stderr for `-` (stdout carries only the answer), else a file.
struct StatsSink {
    out: Box<dyn Write + Send>,
}

impl StatsSink {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stderr())
        } else {
            let file = File::create(path)
                .with_context(|| format!("cannot create the --stats-json file {}", path.display()))?;
            Box::new(BufWriter::new(file))
        };
        Ok(Self { out })
    }

    /// One JSON object on one line, flushed at once so a reader (`tail -f`, a UI) sees it live.
    fn write(&mut self, line: &impl Serialize) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(())
    }
}

/// `{"event":"kv","turn":N, <every KvStats field by its name>}`.
#[derive(Serialize)]
struct KvLine<'a> {
    event: &'static str,
    turn: usize,
    #[serde(flatten)]
    stats: &'a KvStats,
}

/// The numbers of a finished reply (its text went to stdout).
#[derive(Serialize)]
struct DoneLine<'a> {
    event: &'static str,
    turn: usize,
    stop_reason: &'a str,
    prompt_tokens: usize,
    reused_tokens: usize,
    generated_tokens: usize,
    prefill_s: f64,
    time_to_first_token_s: f64,
    decode_s: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    kv: Option<&'a KvStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_source: Option<CacheSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<i64>,
}

impl<'a> DoneLine<'a> {
    fn new(turn: usize, result: &'a SendResult) -> Self {
        Self {
            cache_source: Some(result.cache_source),
            conversation_id: Some(result.conversation_id),
            message_id: Some(result.message.id),
            ..Self::from_report(turn, &result.report)
        }
    }

    fn from_report(turn: usize, report: &'a GenerationReport) -> Self {
        Self {
            event: "done",
            turn,
            stop_reason: &report.stop_reason,
            prompt_tokens: report.prompt_tokens,
            reused_tokens: report.reused_tokens,
            generated_tokens: report.generated_tokens,
            prefill_s: report.prefill_ms / 1000.0,
            time_to_first_token_s: report.time_to_first_token_ms / 1000.0,
            decode_s: report.decode_ms / 1000.0,
            prefill_tok_s: report.prefill_tokens_per_s,
            decode_tok_s: report.decode_tokens_per_s,
            kv: report.kv.as_ref(),
            cache_source: None,
            conversation_id: None,
            message_id: None,
        }
    }
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    event: &'static str,
    turn: usize,
    message: &'a str,
}

/// The one-line KV readout printed after each reply (SEPLLM.md, "What the live readout must show"): tokens seen,
/// slots against capacity and per block, when the next compaction comes, KV cache bytes against a dense cache of
/// every token seen, kept ratios, what was dropped, how far back the cache reaches, then the speed of this reply
/// (time to first token included) and, for a stored conversation, where its cache came from. `None` when the
/// reply has no readout (it failed).
pub fn readout(report: &GenerationReport, session: Option<(CacheSource, Option<&str>)>) -> Option<String> {
    let kv = report.kv.as_ref()?;
    // A dense cache never compacts: its countdown is to the point where it refuses more tokens.
    let next = if report.cache_evicts {
        format!("next compaction in {} tok", kv.tokens_to_next_compaction)
    } else {
        format!("full in {} tok", kv.tokens_to_next_compaction)
    };
    let mut line = format!(
        "[kv] {} | seen {} tok | held {}/{} slots | init {}/{} sep {}/{} past {} local {}/{} | {next} | KV cache {} vs dense {} (saves {}) | kept {:.2} now, {:.2} mean | compactions {} | dropped {} sep, {} other | horizon {} tok | prompt {} tok ({} reused) {:.0} tok/s | first token {:.0} ms | {} tok {:.1} tok/s | stop: {}",
        report.cache_spec,
        kv.tokens_seen,
        kv.slots_held,
        kv.capacity,
        kv.initial_held,
        kv.initial_limit,
        kv.separators_held,
        kv.separators_limit,
        kv.past_held,
        kv.local_held,
        kv.local_limit,
        mebibytes(kv.bytes_held),
        mebibytes(kv.bytes_dense),
        percent(saving(kv)),
        kv.kept_ratio,
        kv.kept_ratio_mean,
        kv.compactions,
        kv.dropped_separators,
        kv.dropped_other,
        kv.horizon,
        report.prompt_tokens,
        report.reused_tokens,
        report.prefill_tokens_per_s,
        report.time_to_first_token_ms,
        report.generated_tokens,
        report.decode_tokens_per_s,
        report.stop_reason,
    );
    if let Some((source, detail)) = session {
        line.push_str(&format!(" | session: {}", source.as_str()));
        if let Some(detail) = detail {
            line.push_str(&format!(" ({detail})"));
        }
    }
    Some(line)
}

/// 1 - held/dense: what the cache saves against keeping every token seen. 0 while nothing was
/// evicted (held equals dense until T first exceeds c), and 0 for an empty conversation.
fn saving(kv: &KvStats) -> f64 {
    if kv.bytes_dense == 0 {
        return 0.0;
    }
    (1.0 - kv.bytes_held as f64 / kv.bytes_dense as f64).max(0.0)
}

/// Exactly "0%" for no saving, so a rounding "0.0%" never hints at a saving that is not there.
fn percent(fraction: f64) -> String {
    if fraction <= 0.0 {
        "0%".to_string()
    } else {
        format!("{:.1}%", fraction * 100.0)
    }
}

fn mebibytes(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_is_zero_until_something_is_evicted() {
        let mut kv = KvStats::default();
        assert_eq!(percent(saving(&kv)), "0%");
        kv.bytes_held = 45 * 23_040;
        kv.bytes_dense = 45 * 23_040;
        assert_eq!(percent(saving(&kv)), "0%");
        kv.bytes_dense = 90 * 23_040;
        assert_eq!(percent(saving(&kv)), "50.0%");
    }

    #[test]
    fn typed_flags_keep_their_decimal_form_and_overrides_win() {
        assert_eq!(f32_as_typed(1.1), 1.1);
        assert_eq!(f32_as_typed(1.1) as f32, 1.1f32);
        let stored = Sampling { temperature: Some(0.2), max_tokens: Some(9), ..Sampling::default() };
        let overrides = Sampling { max_tokens: Some(100), ..Sampling::default() };
        let merged = merge_sampling(stored, overrides);
        assert_eq!((merged.temperature, merged.max_tokens), (Some(0.2), Some(100)));
    }

    #[test]
    fn the_readout_names_the_session_and_the_first_token_time() {
        let report = GenerationReport {
            stop_reason: "end_of_turn".into(),
            time_to_first_token_ms: 123.4,
            kv: Some(KvStats::default()),
            cache_spec: "sep:a=4,s=256,w=1024,c=2048".into(),
            cache_evicts: true,
            ..GenerationReport::default()
        };
        let line = readout(&report, Some((CacheSource::Replayed, Some("no snapshot")))).expect("a readout");
        assert!(line.starts_with("[kv] sep:a=4,s=256,w=1024,c=2048 |"), "{line}");
        assert!(line.contains("first token 123 ms") && line.contains("stop: end_of_turn"), "{line}");
        assert!(line.ends_with("| session: replayed (no snapshot)"), "{line}");
        assert!(readout(&GenerationReport::default(), None).is_none());
    }
}
