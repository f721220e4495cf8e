//! `sepchat ask` and `sepchat chat`: streaming generation through the engine worker, with the
//! KV cache readout after each reply and, on request, the cache statistics as JSON lines.

use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;

use anyhow::Context;
use sepchat_engine::worker::GenerationSummary;
use sepchat_engine::{CacheConfig, Engine, Event, GenerateRequest, KvStats};
use sepchat_text::ChatMessage;
use serde::Serialize;

use crate::options::{with_usage_exit, GenerationArgs, ModelArgs};

/// The one conversation `ask` and `chat` hold; the id only has to be stable within the process.
const SESSION: u64 = 1;

pub fn ask(model_args: &ModelArgs, args: &GenerationArgs, prompt: &str) -> anyhow::Result<ExitCode> {
    with_usage_exit(run_ask(model_args, args, prompt))
}

fn run_ask(model_args: &ModelArgs, args: &GenerationArgs, prompt: &str) -> anyhow::Result<ExitCode> {
    if prompt.trim().is_empty() {
        anyhow::bail!("the prompt is empty: nothing to ask");
    }
    let mut conversation = Conversation::start(model_args, args)?;
    let mut messages = system_messages(args);
    messages.push(ChatMessage { role: "user".to_string(), content: prompt.to_string() });
    let mut stdout = std::io::stdout();
    let reply = conversation.reply(args, &messages, prompt, &mut stdout)?;
    end_reply(&mut stdout, &reply)?;
    match reply {
        Reply::Done(summary) => {
            eprintln!("{}", readout(&summary, &conversation.cache));
            Ok(ExitCode::SUCCESS)
        }
        Reply::Failed { message, .. } => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Ends the streamed answer with a newline, if anything was streamed at all.
fn end_reply(out: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    let streamed_anything = match reply {
        Reply::Done(summary) => !summary.text.is_empty(),
        Reply::Failed { partial_text, .. } => !partial_text.is_empty(),
    };
    if streamed_anything {
        writeln!(out)?;
    }
    out.flush()
}

pub fn chat(model_args: &ModelArgs, args: &GenerationArgs) -> anyhow::Result<ExitCode> {
    with_usage_exit(run_chat(model_args, args))
}

fn run_chat(model_args: &ModelArgs, args: &GenerationArgs) -> anyhow::Result<ExitCode> {
    let mut conversation = Conversation::start(model_args, args)?;
    let mut messages = system_messages(args);
    eprintln!("sepchat chat: type a message and press Enter; /reset starts over, /exit (or Ctrl-D) quits.");
    eprintln!("KV cache: {}", conversation.cache);
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
            "/reset" => {
                messages = system_messages(args);
                conversation.engine.forget_session(SESSION)?;
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage { role: "user".to_string(), content: input.to_string() });
        let reply = conversation.reply(args, &messages, input, &mut stdout)?;
        end_reply(&mut stdout, &reply)?;
        match reply {
            Reply::Done(summary) => {
                eprintln!("{}", readout(&summary, &conversation.cache));
                messages.push(ChatMessage { role: "assistant".to_string(), content: summary.text.trim().to_string() });
            }
            Reply::Failed { message, .. } => {
                eprintln!("error: {message}");
                // The user's turn stays so they can retry; nothing typed is lost.
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn system_messages(args: &GenerationArgs) -> Vec<ChatMessage> {
    if args.system.is_empty() || args.raw {
        Vec::new()
    } else {
        vec![ChatMessage { role: "system".to_string(), content: args.system.clone() }]
    }
}

fn render(engine: &Engine, messages: &[ChatMessage]) -> anyhow::Result<String> {
    let template = engine
        .model()
        .chat_template()
        .context("this model has no chat template (tokenizer.chat_template); use --raw to send the prompt as it is")?;
    Ok(template.render(messages, true)?)
}

/// Tokens of the rendered system turn when they begin `prompt_tokens`, so the cache keeps the
/// persona forever (SEPLLM.md: the initial block covers the system turn). 0 when there is no
/// system message, or when the turn rendered alone is not a token prefix of the whole prompt
/// (a template that renders it differently in context, or a merge across the boundary):
/// protecting a prefix that is not the system turn would protect the wrong tokens.
fn system_turn_tokens(engine: &Engine, messages: &[ChatMessage], prompt_tokens: &[u32]) -> usize {
    let Some(system) = messages.first().filter(|message| message.role == "system") else {
        return 0;
    };
    let Some(template) = engine.model().chat_template() else {
        return 0;
    };
    // A template that refuses a conversation of only a system message protects nothing rather
    // than failing the reply: protection is an optimisation of what the cache keeps.
    let tokens = match template
        .render(std::slice::from_ref(system), false)
        .map_err(anyhow::Error::from)
        .and_then(|text| Ok(engine.model().tokenizer().encode(&text)?))
    {
        Ok(tokens) => tokens,
        Err(error) => {
            tracing::debug!(%error, "cannot render the system turn alone; protecting nothing");
            return 0;
        }
    };
    if !tokens.is_empty() && prompt_tokens.starts_with(&tokens) {
        tokens.len()
    } else {
        0
    }
}

enum Reply {
    Done(Box<GenerationSummary>),
    Failed { message: String, partial_text: String },
}

/// The engine with the conversation's cache settings and where its statistics go.
struct Conversation {
    engine: Engine,
    cache: CacheConfig,
    stats: Option<StatsSink>,
    /// Replies requested so far; numbers the JSON lines of each.
    turns: usize,
}

impl Conversation {
    /// Checks the flags, opens the statistics file and loads the model. The spec's syntax is
    /// checked before the (slow) load so a typo fails at once; its sizes need the model.
    fn start(model_args: &ModelArgs, args: &GenerationArgs) -> anyhow::Result<Self> {
        args.check_cache_syntax()?;
        let stats = args.stats_json.as_deref().map(StatsSink::open).transpose()?;
        let model = model_args.load()?;
        let cache = args.cache_config(&model)?;
        let engine = Engine::start(model)?;
        Ok(Self { engine, cache, stats, turns: 0 })
    }

    /// Sends one request for the conversation `messages` (or `raw_text` as it is, with `--raw`)
    /// and writes its tokens to `out` as they arrive.
    fn reply(
        &mut self,
        args: &GenerationArgs,
        messages: &[ChatMessage],
        raw_text: &str,
        out: &mut impl Write,
    ) -> anyhow::Result<Reply> {
        self.turns += 1;
        let turn = self.turns;
        let (prompt_tokens, protected_tokens) = if args.raw {
            (self.engine.model().tokenizer().encode(raw_text)?, 0)
        } else {
            let tokens = self.engine.model().tokenizer().encode(&render(&self.engine, messages)?)?;
            let protected = system_turn_tokens(&self.engine, messages, &tokens);
            (tokens, protected)
        };
        let (events, receiver) = mpsc::channel();
        let mut request = GenerateRequest::new(SESSION, prompt_tokens, args.sampling(), args.max_tokens, events);
        request.cache = Some(self.cache.clone());
        request.protected_tokens = protected_tokens;
        self.engine.submit(request)?;
        for event in receiver {
            match event {
                Event::Token { text } => {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
                // Prompts typed at a terminal prefill in well under a second: no progress line.
                Event::Prefill { .. } => {}
                Event::Stats(stats) => {
                    if let Some(sink) = &mut self.stats {
                        sink.write(&KvLine { event: "kv", turn, stats: &stats })?;
                    }
                }
                Event::Done(summary) => {
                    if let Some(sink) = &mut self.stats {
                        sink.write(&DoneLine::new(turn, &summary))?;
                    }
                    return Ok(Reply::Done(Box::new(summary)));
                }
                Event::Error { message, partial_text } => {
                    if let Some(sink) = &mut self.stats {
                        sink.write(&ErrorLine { event: "error", turn, message: &message })?;
                    }
                    return Ok(Reply::Failed { message, partial_text });
                }
            }
        }
        Ok(Reply::Failed { message: "the engine stopped without an answer".to_string(), partial_text: String::new() })
    }
}

/// Where `--stats-json` lines go: stderr for `-` (stdout carries only the answer), else a file.
struct StatsSink {
    out: Box<dyn Write>,
}

impl StatsSink {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let out: Box<dyn Write> = if path == Path::new("-") {
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
    stop_reason: &'static str,
    prompt_tokens: usize,
    reused_tokens: usize,
    generated_tokens: usize,
    prefill_s: f64,
    time_to_first_token_s: f64,
    decode_s: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    kv: &'a KvStats,
}

impl<'a> DoneLine<'a> {
    fn new(turn: usize, summary: &'a GenerationSummary) -> Self {
        Self {
            event: "done",
            turn,
            stop_reason: summary.stop_reason.as_str(),
            prompt_tokens: summary.prompt_tokens,
            reused_tokens: summary.reused_tokens,
            generated_tokens: summary.generated_tokens,
            prefill_s: summary.prefill_time.as_secs_f64(),
            time_to_first_token_s: summary.time_to_first_token.as_secs_f64(),
            decode_s: summary.decode_time.as_secs_f64(),
            prefill_tok_s: summary.prefill_tokens_per_second(),
            decode_tok_s: summary.decode_tokens_per_second(),
            kv: &summary.kv,
        }
    }
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    event: &'static str,
    turn: usize,
    message: &'a str,
}

/// The one-line KV readout printed after each reply (SEPLLM.md, "What the live readout must
/// show"): tokens seen, slots against capacity and per block, when the next compaction comes,
/// KV cache bytes against a dense cache of every token seen, kept ratios, what was dropped, how
/// far back the cache reaches, then the speed of this reply.
pub fn readout(summary: &GenerationSummary, cache: &CacheConfig) -> String {
    let kv = &summary.kv;
    // A dense cache never compacts: its countdown is to the point where it refuses more tokens.
    let next = if cache.policy.evicts() {
        format!("next compaction in {} tok", kv.tokens_to_next_compaction)
    } else {
        format!("full in {} tok", kv.tokens_to_next_compaction)
    };
    format!(
        "[kv] {cache} | seen {} tok | held {}/{} slots | init {}/{} sep {}/{} past {} local {}/{} | {next} | KV cache {} vs dense {} (saves {}) | kept {:.2} now, {:.2} mean | compactions {} | dropped {} sep, {} other | horizon {} tok | prompt {} tok ({} reused) {:.0} tok/s | {} tok {:.1} tok/s | stop: {}",
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
        summary.prompt_tokens,
        summary.reused_tokens,
        summary.prefill_tokens_per_second(),
        summary.generated_tokens,
        summary.decode_tokens_per_second(),
        summary.stop_reason.as_str(),
    )
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
}
