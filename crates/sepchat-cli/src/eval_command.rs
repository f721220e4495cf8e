//! `sepchat eval ppl`: perplexity with llama.cpp's protocol.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use sepchat_engine::perplexity::perplexity;

use crate::options::ModelArgs;

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
    },
}

pub fn run(model_args: &ModelArgs, command: EvalCommand) -> anyhow::Result<ExitCode> {
    match command {
        EvalCommand::Ppl { file, ctx, max_chars, json } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
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
            let report = perplexity(&model, &tokens, ctx, |done, _, ppl| {
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
