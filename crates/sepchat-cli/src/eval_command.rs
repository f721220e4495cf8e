//! `sepchat eval ppl`: perplexity with llama.cpp's protocol; `sepchat eval stream`: streaming
//! perplexity under several KV cache policies (the SepLLM paper's protocol).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use sepchat_engine::perplexity::perplexity;
use sepchat_engine::stream_eval::{checkpoint_schedule, stream_perplexity, stream_tokens, StreamRun};
use sepchat_engine::{CacheConfig, KvFormat};

use crate::options::{with_usage_exit, ModelArgs};
use crate::stream_plot;

/// Mebibytes, for the KV bytes column.
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity as llama.cpp's llama-perplexity computes it (chunks of --ctx tokens, second half scored).
    Ppl {
        file: PathBuf,
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Use only the first N characters of the file.
        #[arg(long)]
        max_chars: Option<usize>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// How the cache stores keys and values: f16 (llama.cpp's default) or q8 (8 bits and a
        /// scale per row).
        #[arg(long, default_value = "f16", value_parser = parse_kv_format)]
        kv: KvFormat,
    },
    /// Streaming perplexity (the SepLLM paper's protocol, ../shared/reference/stream-ppl.md): the file's
    /// first N+1 tokens (no BOS) are fed one at a time into one cache per policy, and each next token is
    /// scored; the cache compacts after every step that left more than c slots (at=step is always used,
    /// so attention sees at most c+1 slots).
    ///
    /// The `sep` policy uses the vocabulary's separator rule unless the spec says `seps=paper`: to
    /// reproduce the reference table pass e.g. `--cache sep:a=4,s=64,w=256,c=512,seps=paper` (add
    /// `,pos=abs` for its absolute-position column). A dense cache stops at the model's trained context;
    /// the other policies go on.
    Stream {
        file: PathBuf,
        /// Next-token predictions to score (the file must have N+1 tokens).
        #[arg(long, value_name = "N", default_value_t = 3000,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        tokens: usize,
        /// A cache policy, repeatable: dense, streaming:a=4,c=512, sep:a=4,s=64,w=256,c=512[,seps=paper][,pos=abs][,kv=q8],
        /// or a profile (low, default, high).
        #[arg(long = "cache", value_name = "SPEC", default_value = "dense")]
        caches: Vec<String>,
        /// Report the perplexity every this many tokens (and at the end); also the plot's window.
        #[arg(long, value_name = "TOKENS", default_value_t = 500,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        every: usize,
        /// Also write the results as JSON to PATH.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Also draw windowed perplexity and slots held against tokens seen into an SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
}

pub fn run(model_args: &ModelArgs, command: EvalCommand) -> anyhow::Result<ExitCode> {
    match command {
        // A bad --cache spec is a usage error (exit 2), as in ask, chat and bench.
        EvalCommand::Stream { file, tokens, caches, every, json, plot } => {
            with_usage_exit(stream(model_args, &StreamArgs { file, tokens, caches, every, json, plot }))
        }
        EvalCommand::Ppl { file, ctx, max_chars, json, kv } => {
            let text = read_text_file(&file)?;
            let text: String = match max_chars {
                Some(limit) => text.chars().take(limit).collect(),
                None => text,
            };
            let model = model_args.load()?;
            let tokens = model.tokenizer().encode(&text)?;
            let progress = ProgressBar::new((tokens.len() / ctx.max(1)) as u64);
            progress.set_style(
                ProgressStyle::with_template("{bar:30} chunk {pos}/{len} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let report = perplexity(&model, &tokens, ctx, kv, |done, _, ppl| {
                progress.set_position(done as u64);
                progress.set_message(format!("ppl {ppl:.4}"));
            });
            progress.finish_and_clear();
            let report = report?;
            if json {
                let value = serde_json::json!({
                    "ppl": report.ppl,
                    "chunks": report.chunks,
                    "ctx": report.ctx,
                    "tokens": tokens.len(),
                    "tokens_scored": report.tokens_scored,
                    "running_ppl": report.running_ppl,
                    "file": file.display().to_string(),
                });
                println!("{value}");
            } else {
                println!(
                    "perplexity {:.4} over {} chunks of {} tokens ({} tokens scored, {} in the file)",
                    report.ppl,
                    report.chunks,
                    report.ctx,
                    report.tokens_scored,
                    tokens.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct StreamArgs {
    file: PathBuf,
    tokens: usize,
    caches: Vec<String>,
    every: usize,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
}

fn stream(model_args: &ModelArgs, args: &StreamArgs) -> anyhow::Result<ExitCode> {
    // A mistyped spec should fail before the model loads and the file is tokenized.
    for spec in &args.caches {
        spec.parse::<CacheConfig>()?;
    }
    let text = read_text_file(&args.file)?;
    let model = model_args.load()?;
    let context = model.config().context_length;
    let configs =
        args.caches.iter().map(|spec| CacheConfig::parse_for_model(spec, context)).collect::<Result<Vec<_>, _>>()?;
    let tokens = stream_tokens(&model, &text, args.tokens)?;
    if tokens.len() < args.tokens + 1 {
        anyhow::bail!(
            "{} has {} tokens; --tokens {} needs {}",
            args.file.display(),
            tokens.len(),
            args.tokens,
            args.tokens + 1
        );
    }

    let mut runs = Vec::with_capacity(configs.len());
    for (index, config) in configs.into_iter().enumerate() {
        let progress = ProgressBar::new(args.tokens as u64);
        progress.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} tokens {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        progress.set_prefix(format!("[{}/{}] {config}", index + 1, args.caches.len()));
        let run = stream_perplexity(&model, &tokens, config, args.every, |step| {
            progress.set_position(step.done as u64);
            progress.set_message(format!("ppl {:.3}, {} slots", step.ppl, step.slots));
        });
        progress.finish_and_clear();
        runs.push(run?);
    }

    print_table(&runs, args);
    if let Some(path) = &args.json {
        let value = results_json(&runs, args, model.path());
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "streaming perplexity, {} ({} tokens)",
            args.file.file_name().map(|name| name.to_string_lossy()).unwrap_or_default(),
            args.tokens
        );
        stream_plot::write_plot(path, &runs, args.every, &title)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per policy: its memory, then the perplexity at every checkpoint ("-" after a stop).
fn print_table(runs: &[StreamRun], args: &StreamArgs) {
    let schedule = checkpoint_schedule(args.tokens, args.every);
    let policy_width = runs.iter().map(|run| run.policy.len()).max().unwrap_or(0).max("policy".len());
    let mut header = format!(
        "{:<policy_width$}  {:>7}  {:>9}  {:>10}  {:>11}",
        "policy", "tokens", "avg slots", "peak slots", "peak KV MiB"
    );
    for tokens in &schedule {
        header.push_str(&format!("  {:>9}", format!("ppl@{tokens}")));
    }
    header.push_str(&format!("  {:>8}", "wall s"));
    println!(
        "streaming perplexity of {}: {} tokens (no BOS), one per step, compaction after each step",
        args.file.display(),
        args.tokens
    );
    println!("{header}");
    for run in runs {
        let mut row = format!(
            "{:<policy_width$}  {:>7}  {:>9.1}  {:>10}  {:>11.2}",
            run.policy,
            run.tokens,
            run.avg_slots,
            run.peak_slots,
            run.peak_kv_bytes as f64 / MIB
        );
        for tokens in &schedule {
            match run.checkpoints.iter().find(|checkpoint| checkpoint.tokens == *tokens) {
                Some(checkpoint) => row.push_str(&format!("  {:>9.3}", checkpoint.ppl)),
                None => row.push_str(&format!("  {:>9}", "-")),
            }
        }
        row.push_str(&format!("  {:>8.1}", run.wall.as_secs_f64()));
        println!("{row}");
    }
    for run in runs {
        if let Some(reason) = &run.stopped {
            println!("note: {} stopped after {} tokens (ppl {:.3} so far): {reason}", run.policy, run.tokens, run.ppl);
        }
    }
}

fn results_json(runs: &[StreamRun], args: &StreamArgs, model: &Path) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = runs
        .iter()
        .map(|run| {
            let checkpoints: Vec<serde_json::Value> = run
                .checkpoints
                .iter()
                .map(|checkpoint| serde_json::json!({ "tokens": checkpoint.tokens, "ppl": checkpoint.ppl }))
                .collect();
            serde_json::json!({
                "policy": run.policy,
                "tokens": run.tokens,
                "avg_slots": run.avg_slots,
                "peak_slots": run.peak_slots,
                "ppl": run.ppl,
                "checkpoints": checkpoints,
                "peak_kv_bytes": run.peak_kv_bytes,
                "mean_kv_bytes": run.mean_kv_bytes,
                "compactions": run.compactions,
                "wall_seconds": run.wall.as_secs_f64(),
                "stopped": run.stopped,
            })
        })
        .collect();
    serde_json::json!({
        "file": args.file.display().to_string(),
        "model": model.display().to_string(),
        "tokens": args.tokens,
        "every": args.every,
        "runs": runs,
    })
}

/// Reads a text file for evaluation: UTF-8, or else Windows-1252 (what many Project Gutenberg
/// files, like two of ../shared/data's novels, are written in; it decodes every byte), with
/// CRLF line ends turned into LF so the same book tokenizes the same whichever way it was saved.
fn read_text_file(path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("note: {} is not UTF-8; reading it as Windows-1252", path.display());
            encoding_rs::WINDOWS_1252.decode(error.as_bytes()).0.into_owned()
        }
    };
    Ok(text.replace("\r\n", "\n"))
}

fn parse_kv_format(text: &str) -> Result<KvFormat, String> {
    KvFormat::parse(text).ok_or_else(|| format!("unknown KV format '{text}': expected f16 or q8"))
}
