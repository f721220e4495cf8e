//! `sepchat bench sessions`: what it costs to go on with a conversation, measured through the App exactly as a
//! user drives it (stored history, chat template, snapshots on disk), in a throwaway data directory.
//!
//! Two measurements, each a ratio within one run:
//! - Turns: the time to first token of every turn of a `--turns`-turn conversation. A warm session feeds only the
//!   new message, so the last turn should answer about as fast as the second, however long the history is.
//! - Switching: a conversation of `--long-tokens` tokens is made cold (other conversations take the engine's warm
//!   slots), then answered once with its cache restored from the snapshot written after its last reply, and once
//!   (the same prompt: a regenerated reply) with its snapshots deleted, so the stored branch is replayed.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use sepchat_core::api::{
    CacheSource, ConversationInfo, NewConversationRequest, RegenerateRequest, Sampling, SendMessageRequest, SendResult,
    StreamOptions,
};
use sepchat_core::session::{snapshots_of, WARM_SESSIONS};
use sepchat_core::{App, SNAPSHOT_DIR_NAME};
use serde::Serialize;

use crate::chat_command::{load_model, runtime};
use crate::options::ModelArgs;

#[derive(Args)]
pub struct SessionsArgs {
    /// Turns of the conversation whose time to first token is measured.
    #[arg(long, default_value_t = 20)]
    turns: usize,
    /// Words of each user message of that conversation (about 1.3 tokens each).
    #[arg(long, default_value_t = 90)]
    message_words: usize,
    /// Conversations of that many turns; each turn's time is the median over them (one sample on a
    /// loaded machine can be off by 10%).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Tokens of each reply (greedy; a reply may end sooner).
    #[arg(long, default_value_t = 32)]
    reply_tokens: u64,
    /// Tokens of history of the conversation switched to.
    #[arg(long, default_value_t = 10_000)]
    long_tokens: usize,
    /// Cache setting of the measured conversations: a profile (low, default, high), dense, streaming:... or sep:...
    #[arg(long, default_value = "default")]
    cache: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Public-domain prose cycled into user messages (the same text as the speed bench).
const BENCH_TEXT: &str = include_str!("bench_text.txt");

/// Words of each message that grows the long conversation: well past one prefill chunk, so building it is quick.
const LONG_MESSAGE_WORDS: usize = 700;
/// Replies while the long conversation is built: short, it is the history that matters.
const LONG_REPLY_TOKENS: u64 = 8;

#[derive(Serialize)]
struct TurnRow {
    turn: usize,
    source: &'static str,
    /// Tokens of the whole prompt (the history so far plus the new message).
    prompt_tokens: usize,
    /// Tokens actually fed for this turn (the prompt less what the cache already held).
    fed_tokens: usize,
    /// The median over the repeats.
    time_to_first_token_ms: f64,
    /// Every repeat's time, in order.
    samples_ms: Vec<f64>,
    kv_slots: Option<usize>,
}

#[derive(Serialize)]
struct SwitchRow {
    source: &'static str,
    prompt_tokens: usize,
    fed_tokens: usize,
    time_to_first_token_ms: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    cache: String,
    turns: Vec<TurnRow>,
    last_turn_over_second: f64,
    /// The snapshot written after the restored turn: the one restored from, plus that turn's few slots.
    snapshot_bytes: Option<usize>,
    restored: SwitchRow,
    replayed: SwitchRow,
    replay_over_restore: f64,
}

pub fn run(model_args: &ModelArgs, args: &SessionsArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; use `cargo run --release -p sepchat-cli -- bench sessions`");
    }
    if args.turns < 2 {
        bail!("--turns must be at least 2: the last turn is compared with the second");
    }
    let data = tempfile::Builder::new().prefix("sepchat-bench-sessions-").tempdir().context("a data directory")?;
    let runtime = runtime()?;
    let report = runtime.block_on(measure(model_args, args, data.path()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

async fn measure(model_args: &ModelArgs, args: &SessionsArgs, data_dir: &Path) -> anyhow::Result<Report> {
    let app = App::open(data_dir).await?;
    let model = load_model(&app, model_args).await?;
    let mut words = Words::new();

    // Warm-up: the first generation of a process touches the weights' pages; that is not what is measured.
    let fillers = new_conversations(&app, WARM_SESSIONS, None, LONG_REPLY_TOKENS).await?;
    send(&app, fillers[0].id, words.take(20)).await?;

    let mut turns: Vec<TurnRow> = Vec::with_capacity(args.turns);
    for repeat in 1..=args.repeats.max(1) {
        eprintln!("{} turns of {} words ({repeat} of {}) ...", args.turns, args.message_words, args.repeats.max(1));
        let chat = new_conversation(&app, Some(&args.cache), args.reply_tokens).await?;
        for turn in 1..=args.turns {
            let result = send(&app, chat.id, words.take(args.message_words)).await?;
            let expected = if turn == 1 { CacheSource::Fresh } else { CacheSource::Warm };
            expect_source(&result, expected, &format!("turn {turn}"))?;
            let time = result.report.time_to_first_token_ms;
            match turns.get_mut(turn - 1) {
                Some(row) => row.samples_ms.push(time),
                None => turns.push(TurnRow {
                    turn,
                    source: result.cache_source.as_str(),
                    prompt_tokens: result.report.prompt_tokens,
                    fed_tokens: result.report.prompt_tokens - result.report.reused_tokens,
                    time_to_first_token_ms: time,
                    samples_ms: vec![time],
                    kv_slots: result.report.kv.as_ref().map(|kv| kv.slots_held),
                }),
            }
        }
    }
    for row in &mut turns {
        row.time_to_first_token_ms = median(&row.samples_ms);
    }

    eprintln!("a conversation of {} tokens ...", args.long_tokens);
    let long = new_conversation(&app, Some(&args.cache), LONG_REPLY_TOKENS).await?;
    let started = Instant::now();
    let mut history_tokens = 0;
    while history_tokens < args.long_tokens {
        let result = send(&app, long.id, words.take(LONG_MESSAGE_WORDS)).await?;
        history_tokens = result.report.prompt_tokens + result.report.generated_tokens;
    }
    eprintln!("  {history_tokens} tokens in {:.1} s", started.elapsed().as_secs_f64());

    eprintln!("switching to it: restored from its snapshot ...");
    make_cold(&app, &fillers, &mut words).await?;
    let question = "In one sentence: what was all this about?".to_string();
    let restored = send(&app, long.id, question).await?;
    expect_source(&restored, CacheSource::RestoredFromSnapshot, "the switch with a snapshot")?;
    let snapshot_bytes = restored.snapshot.as_ref().map(|snapshot| snapshot.bytes);

    eprintln!("switching to it: replayed, its snapshots deleted ...");
    make_cold(&app, &fillers, &mut words).await?;
    let snapshot_dir = data_dir.join(SNAPSHOT_DIR_NAME);
    for (_, path) in snapshots_of(&snapshot_dir, long.id) {
        std::fs::remove_file(&path).with_context(|| format!("cannot delete {}", path.display()))?;
    }
    let request = RegenerateRequest {
        conversation_id: long.id,
        message_id: restored.message.id,
        stream: StreamOptions::default(),
    };
    let replayed = app.regenerate(request, |_| {}).await?;
    expect_source(&replayed, CacheSource::Replayed, "the switch without a snapshot")?;

    let cache = restored.report.cache_spec.clone();
    let second = turns[1].time_to_first_token_ms;
    let last = turns[turns.len() - 1].time_to_first_token_ms;
    let restored = switch_row(&restored);
    let replayed = switch_row(&replayed);
    Ok(Report {
        model: model.path,
        cache,
        last_turn_over_second: last / second,
        replay_over_restore: replayed.time_to_first_token_ms / restored.time_to_first_token_ms,
        turns,
        snapshot_bytes,
        restored,
        replayed,
    })
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One short turn in each filler conversation: they take every warm slot of the engine, as a user who looked at
/// other conversations would.
async fn make_cold(app: &App, fillers: &[ConversationInfo], words: &mut Words) -> anyhow::Result<()> {
    for filler in fillers {
        send(app, filler.id, words.take(20)).await?;
    }
    Ok(())
}

async fn new_conversations(
    app: &App,
    count: usize,
    cache: Option<&str>,
    reply_tokens: u64,
) -> anyhow::Result<Vec<ConversationInfo>> {
    let mut conversations = Vec::with_capacity(count);
    for _ in 0..count {
        conversations.push(new_conversation(app, cache, reply_tokens).await?);
    }
    Ok(conversations)
}

async fn new_conversation(app: &App, cache: Option<&str>, reply_tokens: u64) -> anyhow::Result<ConversationInfo> {
    let sampling = Sampling { max_tokens: Some(reply_tokens), ..Sampling::greedy() };
    let request = NewConversationRequest {
        title: None,
        system_prompt: None,
        sampling: Some(sampling),
        cache_profile: cache.map(str::to_string),
    };
    Ok(app.create_conversation(request).await?)
}

async fn send(app: &App, conversation_id: i64, text: String) -> anyhow::Result<SendResult> {
    let request = SendMessageRequest { conversation_id, text, stream: StreamOptions::default() };
    let result = app.send_message(request, |_| {}).await?;
    if let Some(error) = &result.message.error {
        bail!("the reply failed: {error}");
    }
    Ok(result)
}

/// A measurement of the wrong path would be a wrong number: say so instead.
fn expect_source(result: &SendResult, expected: CacheSource, what: &str) -> anyhow::Result<()> {
    if result.cache_source != expected {
        bail!(
            "{what}: the cache was {} ({}), expected {}",
            result.cache_source.as_str(),
            result.cache_detail.as_deref().unwrap_or("no detail"),
            expected.as_str()
        );
    }
    Ok(())
}

fn switch_row(result: &SendResult) -> SwitchRow {
    SwitchRow {
        source: result.cache_source.as_str(),
        prompt_tokens: result.report.prompt_tokens,
        fed_tokens: result.report.prompt_tokens - result.report.reused_tokens,
        time_to_first_token_ms: result.report.time_to_first_token_ms,
    }
}

fn print_report(report: &Report) {
    println!("model {} | cache {}", report.model, report.cache);
    println!(
        "{:>5} | {:<22} | {:>13} | {:>10} | {:>9} | {:>8} | samples ms",
        "turn", "cache", "prompt tokens", "fed tokens", "TTFT ms", "KV slots"
    );
    for row in &report.turns {
        println!(
            "{:>5} | {:<22} | {:>13} | {:>10} | {:>9.1} | {:>8} | {}",
            row.turn,
            row.source,
            row.prompt_tokens,
            row.fed_tokens,
            row.time_to_first_token_ms,
            row.kv_slots.map_or_else(|| "-".to_string(), |slots| slots.to_string()),
            row.samples_ms.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(" ")
        );
    }
    let last = &report.turns[report.turns.len() - 1];
    println!(
        "time to first token (medians), turn {} over turn 2: {:.2}x ({:.1} ms over {:.1} ms, {} tokens of history)",
        last.turn,
        report.last_turn_over_second,
        last.time_to_first_token_ms,
        report.turns[1].time_to_first_token_ms,
        last.prompt_tokens
    );
    for row in [&report.restored, &report.replayed] {
        println!(
            "switch to the {}-token conversation, {:<22}: fed {:>6} tokens, first token after {:>9.1} ms",
            row.prompt_tokens, row.source, row.fed_tokens, row.time_to_first_token_ms
        );
    }
    println!(
        "restoring the snapshot ({}) is {:.1}x faster than replaying",
        report
            .snapshot_bytes
            .map_or_else(|| "size unknown".to_string(), |bytes| format!("{:.1} MiB", bytes as f64 / 1048576.0)),
        report.replay_over_restore
    );
}

/// The bench text's words, cycled: user messages of a chosen length that read like prose.
struct Words {
    words: Vec<&'static str>,
    next: usize,
}

impl Words {
    fn new() -> Self {
        Words { words: BENCH_TEXT.split_whitespace().collect(), next: 0 }
    }

    fn take(&mut self, count: usize) -> String {
        let mut text = Vec::with_capacity(count);
        for _ in 0..count {
            text.push(self.words[self.next % self.words.len()]);
            self.next += 1;
        }
        text.join(" ")
    }
}
