//! `sepchat ask` and `sepchat chat`: streaming generation through the engine worker.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::mpsc;

use anyhow::Context;
use sepchat_engine::worker::GenerationSummary;
use sepchat_engine::{Engine, Event, GenerateRequest, KvStats};
use sepchat_text::ChatMessage;

use crate::options::{GenerationArgs, ModelArgs};

/// The one conversation `ask` and `chat` hold; the id only has to be stable within the process.
const SESSION: u64 = 1;

pub fn ask(model_args: &ModelArgs, args: &GenerationArgs, prompt: &str) -> anyhow::Result<ExitCode> {
    if prompt.trim().is_empty() {
        anyhow::bail!("the prompt is empty: nothing to ask");
    }
    let engine = Engine::start(model_args.load()?)?;
    let mut messages = system_messages(args);
    messages.push(ChatMessage { role: "user".to_string(), content: prompt.to_string() });
    let text = if args.raw { prompt.to_string() } else { render(&engine, &messages)? };
    let mut stdout = std::io::stdout();
    let reply = stream_reply(&engine, args, &text, &mut stdout)?;
    end_reply(&mut stdout, &reply)?;
    match reply {
        Reply::Done(summary) => {
            eprintln!("{}", readout(&summary));
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
    let engine = Engine::start(model_args.load()?)?;
    let mut messages = system_messages(args);
    eprintln!("sepchat chat: type a message and press Enter; /reset starts over, /exit (or Ctrl-D) quits.");
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
                engine.forget_session(SESSION)?;
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage { role: "user".to_string(), content: input.to_string() });
        let text = if args.raw { input.to_string() } else { render(&engine, &messages)? };
        let reply = stream_reply(&engine, args, &text, &mut stdout)?;
        end_reply(&mut stdout, &reply)?;
        match reply {
            Reply::Done(summary) => {
                eprintln!("{}", readout(&summary));
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

enum Reply {
    Done(Box<GenerationSummary>),
    Failed { message: String, partial_text: String },
}

/// Sends one request and writes its tokens to `out` as they arrive.
fn stream_reply(
    engine: &Engine,
    args: &GenerationArgs,
    prompt_text: &str,
    out: &mut impl Write,
) -> anyhow::Result<Reply> {
    let prompt_tokens = engine.model().tokenizer().encode(prompt_text)?;
    let (events, receiver) = mpsc::channel();
    engine.submit(GenerateRequest::new(SESSION, prompt_tokens, args.sampling(), args.max_tokens, events))?;
    for event in receiver {
        match event {
            Event::Token { text } => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Stats(_) => {}
            Event::Done(summary) => return Ok(Reply::Done(Box::new(summary))),
            Event::Error { message, partial_text } => return Ok(Reply::Failed { message, partial_text }),
        }
    }
    Ok(Reply::Failed { message: "the engine stopped without an answer".to_string(), partial_text: String::new() })
}

/// The one-line KV readout printed after each reply.
pub fn readout(summary: &GenerationSummary) -> String {
    let KvStats { tokens_seen, slots_held, capacity, bytes_held, bytes_dense, .. } = summary.kv;
    format!(
        "[kv] seen {tokens_seen} tok | held {slots_held}/{capacity} slots | KV cache {} (dense {}) | prompt {} tok ({} reused) {:.0} tok/s | {} tok {:.1} tok/s | stop: {}",
        mebibytes(bytes_held),
        mebibytes(bytes_dense),
        summary.prompt_tokens,
        summary.reused_tokens,
        summary.prefill_tokens_per_second(),
        summary.generated_tokens,
        summary.decode_tokens_per_second(),
        summary.stop_reason.as_str(),
    )
}

fn mebibytes(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
